"""Bad input gets a clear status that names the input, and the server stays healthy after each."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from serving.codec import serialize_bytes
from tests.serving.support import MODEL, http_get, infer_inputs, loopback_settings, running

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("validation")
    with running(loopback_settings(folder, model_path=str(model_files["flight_v1"]), max_batch_size=8)) as server:
        yield server


def raw_request(rows: dict[str, np.ndarray], **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, **fields)
    for name, array in rows.items():
        datatype = "BYTES" if array.dtype == object else "FP32"
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(serialize_bytes(array) if array.dtype == object else array.tobytes())
    return request


def call(server, request: pb.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
    return err.value


def assert_healthy(server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    result = client.infer(MODEL, infer_inputs(dm.flight_rows(1)))
    assert result.as_numpy("probability").shape == (1, 1)
    assert http_get(server.http + "/ready")[0] == 200


def rows(n: int = 2) -> dict[str, np.ndarray]:
    return dm.flight_rows(n, seed=11)


def mutate(request: pb.ModelInferRequest, name: str, **changes) -> pb.ModelInferRequest:
    for i, tensor in enumerate(request.inputs):
        if tensor.name == name:
            if "datatype" in changes:
                tensor.datatype = changes["datatype"]
            if "shape" in changes:
                del tensor.shape[:]
                tensor.shape.extend(changes["shape"])
            if "raw" in changes:
                request.raw_input_contents[i] = changes["raw"]
    return request


CASES = {
    "unexpected input": (
        lambda: raw_request({**rows(), "altitude": np.zeros((2, 1), np.float32)}),
        "unexpected input 'altitude'",
    ),
    "missing input": (lambda: raw_request({k: v for k, v in rows().items() if k != "temp"}), "missing inputs: temp"),
    "duplicate input": (lambda: _duplicate(), "input 'hour' appears more than once"),
    "wrong datatype": (
        lambda: mutate(raw_request(rows()), "hour", datatype="INT64", raw=np.zeros((2, 1), np.int64).tobytes()),
        "input 'hour': expected datatype FP32, got INT64",
    ),
    "wrong rank": (
        lambda: mutate(raw_request(rows()), "distance", shape=[2]),
        "input 'distance': expected 2 dimensions",
    ),
    "wrong inner dimension": (
        lambda: mutate(raw_request(rows()), "distance", shape=[1, 2]),
        "input 'distance': expected shape [-1, 1]",
    ),
    "raw byte length": (
        lambda: mutate(raw_request(rows()), "temp", raw=b"\x00" * 7),
        "input 'temp': raw content has 7 bytes",
    ),
    "batch sizes differ": (
        lambda: raw_request({**rows(), "hour": np.zeros((3, 1), np.float32)}),
        "input 'hour' has 3 rows, input 'day_of_week' has 2",
    ),
    "batch too large": (lambda: raw_request(dm.flight_rows(9)), "exceeds the maximum batch size 8"),
    "NaN": (
        lambda: raw_request({**rows(), "precip": np.array([[0.1], [np.nan]], np.float32)}),
        "input 'precip' contains NaN or Inf",
    ),
    "Inf": (
        lambda: raw_request({**rows(), "visib": np.array([[np.inf], [1.0]], np.float32)}),
        "input 'visib' contains NaN or Inf",
    ),
    "bytes overrun": (
        lambda: mutate(raw_request(rows()), "carrier", raw=struct.pack("<I", 50) + b"AA"),
        "input 'carrier'",
    ),
    "bytes count short": (
        lambda: mutate(raw_request(rows()), "carrier", raw=struct.pack("<I", 2) + b"AA"),
        "input 'carrier': raw content holds fewer",
    ),
    "bytes trailing": (
        lambda: mutate(raw_request(rows()), "carrier", raw=serialize_bytes(np.array(["AA", "B6", "DL"], dtype=object))),
        "input 'carrier': raw content holds more",
    ),
    "bytes not utf-8": (
        lambda: mutate(
            raw_request(rows()), "origin", raw=serialize_bytes(np.array([b"\xff\xfe", b"JFK"], dtype=object))
        ),
        "input 'origin': BYTES elements must be UTF-8",
    ),
    "raw count": (lambda: _drop_raw(), "raw_input_contents has 9 entries for 10 inputs"),
    "typed count": (lambda: _typed_short(), "input 'hour': contents hold 1 values"),
    "unknown output": (lambda: _bad_output(), "requested output 'score' is not an output"),
}


def _duplicate():
    request = raw_request(rows())
    request.inputs.add(name="hour", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(np.zeros((2, 1), np.float32).tobytes())
    return request


def _drop_raw():
    request = raw_request(rows())
    del request.raw_input_contents[-1]
    return request


def _typed_short():
    request = pb.ModelInferRequest(model_name=MODEL)
    for name, array in rows().items():
        tensor = request.inputs.add(name=name, shape=list(array.shape))
        if array.dtype == object:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in array.ravel())
        else:
            tensor.datatype = "FP32"
            values = array.ravel().tolist()
            tensor.contents.fp32_contents.extend(values[:1] if name == "hour" else values)
    return request


def _bad_output():
    request = raw_request(rows())
    request.outputs.add(name="score")
    return request


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_invalid_argument_naming_the_input(server, case):
    build, message = CASES[case]
    error = call(server, build())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()
    assert "Traceback" not in error.details()
    assert_healthy(server)


def test_tritonclient_sees_the_same_error(server):
    arrays = {**rows(), "precip": np.array([[0.1], [np.nan]], np.float32)}
    with pytest.raises(InferenceServerException) as err:
        server.client().infer(MODEL, infer_inputs(arrays))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "precip" in err.value.message()


def test_unknown_model_and_version_are_not_found(server):
    error = call(server, _renamed("no_such_model"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in error.details()
    error = call(server, raw_request(rows(), model_version="42"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "'42'" in error.details()
    client = server.client()
    for method in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as err:
            method("no_such_model")
        assert err.value.status() == "StatusCode.NOT_FOUND"
    assert_healthy(server)


def _renamed(name: str) -> pb.ModelInferRequest:
    request = raw_request(rows())
    request.model_name = name
    return request


def test_nan_policy_allow(serve, model_files):
    running = serve(model_path=str(model_files["flight_v1"]), nan_policy="allow_nan")
    client = running.client()
    with_nan = {**rows(), "precip": np.array([[0.1], [np.nan]], np.float32)}
    assert client.infer(MODEL, infer_inputs(with_nan)).as_numpy("probability").shape == (2, 1)
    with_inf = {**rows(), "precip": np.array([[0.1], [np.inf]], np.float32)}
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, infer_inputs(with_inf))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "precip" in err.value.message()


@pytest.mark.parametrize("batching", [True, False])
def test_model_failure_is_internal_without_stack_trace(serve, model_files, batching):
    running = serve(model_name="gather", model_path=str(model_files["gather"]), batching=batching)
    client = running.client()
    good = client.infer("gather", infer_inputs({"idx": np.array([[2]], np.int64)}))
    assert good.as_numpy("value").tolist() == [[20.0]]
    with pytest.raises(InferenceServerException) as err:
        client.infer("gather", infer_inputs({"idx": np.array([[99]], np.int64)}))
    assert err.value.status() == "StatusCode.INTERNAL"
    assert err.value.message() == "Internal server error"
    # Still healthy, and the failure is counted.
    assert client.is_server_ready()
    assert client.infer("gather", infer_inputs({"idx": np.array([[4]], np.int64)})).as_numpy("value").tolist() == [
        [40.0]
    ]
    stats = client.get_inference_statistics("gather").model_stats[0]
    assert stats.inference_stats.fail.count == 1 and stats.inference_stats.success.count == 2
    metrics = http_get(running.http + "/metrics")[1]
    assert 'nv_inference_request_failure{model="gather",version="1",reason="INTERNAL"} 1' in metrics
