"""What the pipeline's Open Inference Protocol clients share (deployment, load_test, the demo). No Dagster here."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np


def infer_inputs(feeds: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs for ONNX feeds: string columns travel as BYTES, numbers as FP32."""
    # Imported here: the load test's Locust process imports tritonclient only after gevent patches grpc.
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ready(url: str) -> bool:
    """Whether a server's `/ready` (or any URL) answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False
