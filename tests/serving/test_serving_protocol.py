"""Every RPC of inference.GRPCInferenceService, plus health and reflection, through tritonclient."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from tests.serving.support import MODEL, http_get, infer_inputs, local_predict, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def flight(serve, model_files):
    return serve(model_path=str(model_files["flight_v1"]), model_version="3")


def test_liveness_readiness_and_metadata(flight):
    client = flight.client()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "3")
    assert not client.is_model_ready(MODEL, "4")
    assert not client.is_model_ready("no_such_model")

    server = client.get_server_metadata()
    assert server.name == "mlops-serve"
    assert {"model_repository", "model_configuration", "statistics"} <= set(server.extensions)

    meta = client.get_model_metadata(MODEL)
    assert meta.name == MODEL and list(meta.versions) == ["3"] and meta.platform == "onnxruntime_onnx"
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["hour"] == ("FP32", [-1, 1])
    assert inputs["carrier"] == ("BYTES", [-1, 1])
    assert len(inputs) == 10
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probability", "FP32", [-1, 1])]


def test_model_config_is_triton_style(flight):
    config = flight.client().get_model_config(MODEL).config
    assert config.name == MODEL
    assert config.max_batch_size == 256
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    dims = {i.name: list(i.dims) for i in config.input}
    assert dims["hour"] == [1] and dims["dest"] == [1]  # no batch dimension
    types = {i.name: grpcclient.model_config_pb2.DataType.Name(i.data_type) for i in config.input}
    assert types["hour"] == "TYPE_FP32" and types["origin"] == "TYPE_STRING"
    assert [(o.name, list(o.dims)) for o in config.output] == [("probability", [1])]


def test_model_config_without_batching(serve, model_files):
    server = serve(model_path=str(model_files["flight_v1"]), batching=False)
    config = server.client().get_model_config(MODEL).config
    assert config.max_batch_size == 256
    assert not config.HasField("dynamic_batching")


def test_infer_matches_onnxruntime(flight, model_files):
    rows = dm.flight_rows(5, seed=7)
    result = flight.client().infer(MODEL, infer_inputs(rows), request_id="req-1")
    expected = local_predict(model_files["flight_v1"], rows)[0]
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    response = result.get_response()
    assert response.model_name == MODEL and response.model_version == "3" and response.id == "req-1"
    # Replies always use raw_output_contents.
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_infer_by_version_and_alias(flight, model_files):
    rows = dm.flight_rows(2, seed=1)
    client = flight.client()
    by_version = client.infer(MODEL, infer_inputs(rows), model_version="3").as_numpy("probability")
    by_alias = client.infer(MODEL, infer_inputs(rows), model_version="champion").as_numpy("probability")
    np.testing.assert_array_equal(by_version, by_alias)


def test_typed_contents_are_accepted(flight, model_files):
    """Requests may carry typed `contents` instead of raw bytes (not what tritonclient sends)."""
    rows = dm.flight_rows(3, seed=2)
    request = pb.ModelInferRequest(model_name=MODEL, id="typed")
    for name, array in rows.items():
        tensor = request.inputs.add(name=name, shape=list(array.shape))
        if array.dtype == object:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in array.ravel())
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(flight.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(3, 1)
    np.testing.assert_allclose(got, local_predict(model_files["flight_v1"], rows)[0], rtol=1e-6)


def test_fp64_is_cast_to_float_at_the_edge(flight, model_files):
    rows = dm.flight_rows(2, seed=3)
    sent = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in rows.items()}
    result = flight.client().infer(MODEL, infer_inputs(sent))
    np.testing.assert_allclose(
        result.as_numpy("probability"), local_predict(model_files["flight_v1"], rows)[0], rtol=1e-6
    )


def test_every_datatype_and_bytes_output(serve, model_files):
    server = serve(model_name="types", model_path=str(model_files["types"]))
    arrays = {
        "f32": np.array([[1.5, 2.0], [0.0, -1.0]], np.float32),
        "f64": np.array([[0.25], [1.0]], np.float64),
        "i64": np.array([[3], [-4]], np.int64),
        "i32": np.array([[5], [6]], np.int32),
        "flag": np.array([[True], [False]]),
        "label": np.array([["b"], ["naïve"]], dtype=object),
    }
    result = server.client().infer("types", infer_inputs(arrays))
    np.testing.assert_allclose(result.as_numpy("total"), [[1.5 + 2 + 0.25 + 3 + 5 + 1 + 10], [-1 + 1 - 4 + 6 - 100]])
    labels = [v.decode() for v in result.as_numpy("label_out").ravel()]
    assert labels == ["b", "naïve"]
    # INT32 widened to an INT64 input at the edge.
    widened = dict(arrays, i64=np.array([[3], [-4]], np.int32))
    again = server.client().infer("types", infer_inputs(widened))
    np.testing.assert_array_equal(again.as_numpy("total"), result.as_numpy("total"))


def test_requested_outputs_subset(serve, model_files, tmp_path):
    server = serve(model_name="types", model_path=str(model_files["types"]), prediction_log_dir=str(tmp_path / "log"))
    arrays = {
        "f32": np.ones((1, 2), np.float32),
        "f64": np.ones((1, 1)),
        "i64": np.ones((1, 1), np.int64),
        "i32": np.ones((1, 1), np.int32),
        "flag": np.ones((1, 1), bool),
        "label": np.array([["a"]], dtype=object),
    }
    result = server.client().infer(
        "types", infer_inputs(arrays), outputs=[grpcclient.InferRequestedOutput("label_out")]
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["label_out"]
    assert [v.decode() for v in result.as_numpy("label_out").ravel()] == ["a"]
    server.stop()  # flushes the prediction log, which keeps every output
    [line] = [line for path in (tmp_path / "log").glob("*.jsonl") for line in path.read_text().splitlines()]
    assert set(json.loads(line)["outputs"]) == {"total", "label_out"}


def test_statistics_count_requests(flight):
    client = flight.client()
    for _ in range(3):
        client.infer(MODEL, infer_inputs(dm.flight_rows(4)))
    stats = client.get_inference_statistics(MODEL).model_stats
    assert len(stats) == 1 and stats[0].version == "3"
    entry = stats[0]
    assert entry.inference_stats.success.count == 3
    assert entry.inference_count == 12  # rows
    assert 1 <= entry.execution_count <= 3
    assert entry.inference_stats.compute_infer.ns > 0
    assert sum(b.compute_infer.count for b in entry.batch_stats) == entry.execution_count
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"


ADMIN = {"authorization": "Bearer admin-t0ken"}


def test_repository_index_load_and_unload(serve, model_files):
    flight = serve(model_path=str(model_files["flight_v1"]), model_version="3", admin_token="admin-t0ken")
    client = flight.client()
    index = client.get_model_repository_index(headers=ADMIN).models
    assert [(m.name, m.version, m.state) for m in index] == [(MODEL, "3", "READY")]

    client.unload_model(MODEL, headers=ADMIN)
    wait_until(lambda: not client.is_model_ready(MODEL), 10, what="unload")
    assert not client.is_server_ready()
    index = client.get_model_repository_index(headers=ADMIN).models
    assert [(m.version, m.state) for m in index] == [("3", "UNAVAILABLE")]
    with grpc.insecure_channel(flight.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.RepositoryIndexRequest(ready=True)
        assert list(stub.RepositoryIndex(request, timeout=5, metadata=tuple(ADMIN.items())).models) == []
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, infer_inputs(dm.flight_rows(1)))
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    # The follower stays paused after an unload: the model does not come back by itself.
    assert not client.is_model_ready(MODEL)

    client.load_model(MODEL, headers=ADMIN)
    assert client.is_model_ready(MODEL)
    assert client.infer(MODEL, infer_inputs(dm.flight_rows(1))).as_numpy("probability").shape == (1, 1)

    with pytest.raises(InferenceServerException) as err:
        client.load_model("no_such_model", headers=ADMIN)
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_health_service_and_reflection(flight):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(flight.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        )
        services = {s.name for s in replies[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def test_http_side_port(flight):
    assert http_get(flight.http + "/health") == (200, "ok\n")
    assert http_get(flight.http + "/ready")[0] == 200
    assert http_get(flight.http + "/nope")[0] == 404


def test_async_client_and_unimplemented_rpcs(flight):
    import asyncio

    import tritonclient.grpc.aio as aioclient

    async def run():
        client = aioclient.InferenceServerClient(flight.url)
        try:
            results = await asyncio.gather(
                *[client.infer(MODEL, infer_inputs(dm.flight_rows(1, seed=i))) for i in range(20)]
            )
            with pytest.raises(InferenceServerException) as err:
                await client.get_system_shared_memory_status()
            return results, err.value
        finally:
            await client.close()

    results, error = asyncio.run(run())
    assert all(r.as_numpy("probability").shape == (1, 1) for r in results)
    assert error.status() == "StatusCode.UNIMPLEMENTED"
