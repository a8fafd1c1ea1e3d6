"""Wall time of each stage of the demo, and onnxruntime against PyTorch eager on the same batch.

Runs the demo's own code on a fresh embedded home; `python -m benchmarks.pipeline_bench`.
"""

import time

import dagster as dg
import numpy as np
import torch

from benchmarks.common import fresh_home, write_result
from deploy.local import demo
from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.training import families
from mlops_assets.training.onnx_export import onnx_feeds
from mlops_assets.training.values import TrainedModel


def _rows_per_second(fn, rows: int, seconds: float = 1.0) -> float:
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * rows / (time.perf_counter() - start)


def onnx_vs_eager(store, trained: TrainedModel, onnx_key: str, month: str, batch: int, rounds: int = 5) -> dict:
    """Interleaved rounds on one batch, so both engines see the same machine load; medians reported."""
    loaded = families.load_checkpoint(store.read_bytes(trained.checkpoint_key))
    network, prep = loaded.model, loaded.prep
    frame = load_features(store, [month]).head(batch)
    numeric, categorical = torch.from_numpy(prep.numeric(frame)), torch.from_numpy(prep.categorical(frame))
    session = onnx_metrics.session(store.read_bytes(onnx_key))
    feeds = onnx_feeds(frame)

    def eager():
        with torch.inference_mode():
            network(numeric, categorical)

    ort_rates, eager_rates = [], []
    for _ in range(rounds):
        ort_rates.append(_rows_per_second(lambda: session.run(None, feeds), batch))
        eager_rates.append(_rows_per_second(eager, batch))
    ort_rate, eager_rate = float(np.median(ort_rates)), float(np.median(eager_rates))
    return {
        "batch": batch,
        "onnxruntime_rows_per_s": ort_rate,
        "pytorch_eager_rows_per_s": eager_rate,
        "onnxruntime_over_eager": ort_rate / eager_rate,
        "note": "onnxruntime includes the in-graph string lookup; eager gets pre-encoded category indices",
    }


def main() -> None:
    home = fresh_home()
    instance = dg.DagsterInstance.get()
    start = time.perf_counter()
    run = demo.run_pipeline(instance)
    total = time.perf_counter() - start
    steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run.training.run_id)}

    store = demo.local_resources()["store"]
    trained = run.training.output_for_node("trained_model")
    onnx_key = run.training.output_for_node("onnx_model").onnx_key
    write_result(
        "pipeline",
        {
            "home": str(home),
            "demo_wall_s": total,
            "demo_stages_s": run.timings,
            "training_run_steps_s": steps,
            "target_demo_wall_s": 300,
            "throughput": onnx_vs_eager(store, trained, onnx_key, "2013-05", batch=256),
        },
    )


if __name__ == "__main__":
    main()
