"""Following a real MLflow registry (sqlite): promotions hot-swap under load, broken versions are
refused while the served one keeps serving, and champion and challenger serve side by side."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from tests.serving.support import MODEL, http_get, infer_inputs, local_predict, wait_until

pytestmark = pytest.mark.timeout(240)

ADMIN_TOKEN = "registry-admin"  # RepositoryIndex is on the control plane


def index_states(client) -> dict[str, tuple[str, str]]:
    index = client.get_model_repository_index(headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    return {m.version: (m.state, m.reason) for m in index.models}


def metric_value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {prefix!r}")


def corrupt_latest_artifact(root: Path) -> Path:
    """Overwrite the most recently logged model.onnx in the registry's artifact store."""
    newest = max(root.rglob("model.onnx"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"\x08\x07garbage, not an ONNX graph" * 20)
    return newest


@pytest.mark.slow
def test_hot_swap_under_load_has_zero_failures(serve, mlflow_registry, tmp_path):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    assert (v1, v2) == ("1", "2")
    mlflow_registry.set_alias("champion", v1)
    server = serve(tracking_uri=mlflow_registry.tracking_uri, poll_interval=0.2, admin_token=ADMIN_TOKEN)

    probe = dm.flight_rows(3, seed=5)
    expected = {
        v: local_predict(path, probe)[0]
        for v, path in (
            ("1", dm.save(dm.flight_model(seed=0), tmp_path / "v1.onnx")),
            ("2", dm.save(dm.flight_model(seed=1), tmp_path / "v2.onnx")),
        )
    }
    assert not np.allclose(expected["1"], expected["2"])

    stop = threading.Event()
    results: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def load(slot: int) -> None:
        client = server.client()
        deadline = time.monotonic() + 60  # bounded even if the swap never comes
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                result = client.infer(MODEL, infer_inputs(probe))
            except BaseException as exc:  # any failure fails the test
                errors.append(exc)
                return
            results[slot].append((result.get_response().model_version, result.as_numpy("probability")))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(len(r) for r in results) >= 40, 30, what="load before the swap")
    mlflow_registry.set_alias("champion", v2)
    wait_until(lambda: all(r and r[-1][0] == "2" for r in results) or errors, 30, what="replies from version 2")
    served_after = sum(len(r) for r in results)
    wait_until(lambda: sum(len(r) for r in results) >= served_after + 40 or errors, 30, what="load after the swap")
    stop.set()
    for t in threads:
        t.join(30)

    assert errors == []
    for replies in results:
        versions = [v for v, _ in replies]
        assert versions[0] == "1" and versions[-1] == "2"
        # Each client's requests are sequential: once it saw version 2 it never goes back.
        first_new = versions.index("2")
        assert set(versions[first_new:]) == {"2"} and set(versions[:first_new]) == {"1"}
        for version, output in replies:
            np.testing.assert_allclose(output, expected[version], rtol=1e-6)

    client = server.client()
    assert index_states(client) == {"1": ("UNAVAILABLE", "unloaded"), "2": ("READY", "")}
    assert list(client.get_model_metadata(MODEL).versions) == ["2"]
    metrics = http_get(server.http + "/metrics")[1]
    assert metric_value(metrics, 'mlops_serve_model_swaps_total{model="flight_delay"}') == 1
    assert 'mlops_serve_model_version_loaded{alias="champion",model="flight_delay",version="2"} 1.0' in metrics
    assert 'version="1"' not in [line for line in metrics.splitlines() if "model_version_loaded" in line]


@pytest.mark.slow
def test_broken_versions_are_refused_and_the_old_one_keeps_serving(serve, mlflow_registry, tmp_path):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    mlflow_registry.set_alias("champion", v1)
    server = serve(tracking_uri=mlflow_registry.tracking_uri, poll_interval=0.2, admin_token=ADMIN_TOKEN)
    client = server.client()
    probe = dm.flight_rows(2, seed=9)
    before = client.infer(MODEL, infer_inputs(probe)).as_numpy("probability")

    # A corrupt file.
    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    corrupt_latest_artifact(tmp_path / "artifacts")
    mlflow_registry.set_alias("champion", v2)
    wait_until(lambda: index_states(client).get(v2, ("",))[0] == "UNAVAILABLE", 30, what="corrupt version refused")
    state, reason = index_states(client)[v2]
    assert "cannot load the ONNX file" in reason
    assert index_states(client)[v1] == ("READY", "")
    np.testing.assert_array_equal(client.infer(MODEL, infer_inputs(probe)).as_numpy("probability"), before)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, infer_inputs(probe), model_version=v2)
    assert err.value.status() == "StatusCode.UNAVAILABLE" and "cannot load" in err.value.message()

    # A changed signature (an input removed).
    v3 = mlflow_registry.register(dm.flight_model(seed=2, drop_input="visib"))
    mlflow_registry.set_alias("champion", v3)
    wait_until(lambda: index_states(client).get(v3, ("",))[0] == "UNAVAILABLE", 30, what="changed signature refused")
    assert "input 'visib' was removed" in index_states(client)[v3][1]
    assert client.get_model_metadata(MODEL).versions == [v1]
    np.testing.assert_array_equal(client.infer(MODEL, infer_inputs(probe)).as_numpy("probability"), before)

    metrics = http_get(server.http + "/metrics")[1]
    assert metric_value(metrics, 'mlops_serve_model_swap_failures_total{model="flight_delay",reason="load_error"}') == 1
    assert (
        metric_value(metrics, 'mlops_serve_model_swap_failures_total{model="flight_delay",reason="signature_changed"}')
        == 1
    )
    assert client.is_server_ready()

    # A good version after the broken ones is taken.
    v4 = mlflow_registry.register(dm.flight_model(seed=3))
    mlflow_registry.set_alias("champion", v4)
    wait_until(
        lambda: client.infer(MODEL, infer_inputs(probe)).get_response().model_version == v4,
        30,
        what="good version served",
    )


@pytest.mark.slow
def test_champion_and_challenger_side_by_side(serve, mlflow_registry):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    mlflow_registry.set_alias("champion", v1)
    mlflow_registry.set_alias("challenger", v2)
    server = serve(
        tracking_uri=mlflow_registry.tracking_uri, aliases=["champion", "challenger"], admin_token=ADMIN_TOKEN
    )
    client = server.client()
    wait_until(lambda: client.is_model_ready(MODEL, v2), 30, what="challenger loaded")
    probe = infer_inputs(dm.flight_rows(1))
    assert client.infer(MODEL, probe).get_response().model_version == v1
    assert client.infer(MODEL, probe, model_version=v2).get_response().model_version == v2
    assert client.infer(MODEL, probe, model_version="challenger").get_response().model_version == v2
    assert client.infer(MODEL, probe, model_version="champion").get_response().model_version == v1
    assert sorted(client.get_model_metadata(MODEL).versions) == [v1, v2]

    # Promote the challenger: both aliases on v2, v1 unloaded once nothing refers to it.
    mlflow_registry.set_alias("champion", v2)
    wait_until(lambda: client.infer(MODEL, probe).get_response().model_version == v2, 30, what="promotion")
    wait_until(lambda: index_states(client)[v1][0] == "UNAVAILABLE", 10, what="v1 unloaded")
    # Remove the challenger alias: v2 stays (champion still points at it).
    mlflow_registry.client.delete_registered_model_alias(MODEL, "challenger")
    time.sleep(1.0)
    assert client.is_model_ready(MODEL, v2)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, probe, model_version="challenger")
    assert err.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.slow
def test_server_waits_for_a_model_and_loads_it_when_registered(serve, mlflow_registry):
    server = serve(tracking_uri=mlflow_registry.tracking_uri, wait_ready=False)
    client = server.client()
    wait_until(client.is_server_live, 10, what="live")
    assert not client.is_server_ready()
    assert http_get(server.http + "/ready")[0] == 503
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, infer_inputs(dm.flight_rows(1)))
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    wait_until(client.is_server_ready, 30, what="ready after registration")
    assert http_get(server.http + "/ready")[0] == 200
