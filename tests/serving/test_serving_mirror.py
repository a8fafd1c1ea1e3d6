"""The registry mirror against a real MLflow registry (sqlite): the fleet keeps serving through
registry outages, deleted aliases and failed downloads; the cache is verified; approval is enforced;
and workers stay lean, with one mirror per server and none left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving import demo_models as dm
from tests.serving.support import MODEL, REPO_ROOT, http_get, infer_inputs, local_predict, wait_until
from tests.serving.test_serving_registry import index_states, metric_value

pytestmark = pytest.mark.timeout(240)

ADMIN_TOKEN = "registry-admin"  # as test_serving_registry.index_states sends it
STALE = 'mlops_serve_registry_alias_stale{alias="%s"}'
RSS_LIMIT_MB = 150


def follow(serve, registry, **overrides):
    """A server following `registry`, retrying quickly so the tests need not wait out a backoff."""
    values = dict(
        tracking_uri=registry.tracking_uri,
        admin_token=ADMIN_TOKEN,
        registry_backoff_initial=0.2,
        registry_backoff_max=1.0,
    )
    return serve(**{**values, **overrides})


def metrics(server) -> str:
    return http_get(server.http + "/metrics")[1]


def served_version(client, probe) -> str:
    return client.infer(MODEL, infer_inputs(probe)).get_response().model_version


def newest_model_folder(artifacts: Path) -> Path:
    """The folder of the most recently logged model in the registry's artifact store."""
    return max(artifacts.rglob("model.onnx"), key=lambda p: p.stat().st_mtime_ns).parent


def test_a_truncated_cache_entry_is_downloaded_again(serve, mlflow_registry, tmp_path):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    mlflow_registry.set_alias("champion", v1)
    follow(serve, mlflow_registry).stop()
    entry = tmp_path / "cache" / MODEL / v1
    cached = next(entry.rglob("model.onnx"))
    size = cached.stat().st_size
    with open(cached, "r+b") as f:
        f.truncate(size // 2)
    # A download a crashed mirror left behind (its pid is gone) is swept up.
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    abandoned = entry.parent / f".partial-{gone.pid}-{v1}-x"
    abandoned.mkdir()
    (abandoned / "model.onnx").write_bytes(b"half")

    server = follow(serve, mlflow_registry)
    assert cached.stat().st_size == size
    assert not abandoned.exists()
    probe = dm.flight_rows(4, seed=3)
    expected = local_predict(dm.save(dm.flight_model(seed=0), tmp_path / "v1.onnx"), probe)[0]
    got = server.client().infer(MODEL, infer_inputs(probe)).as_numpy("probability")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_registry_outage_keeps_the_last_good_version_serving(serve, mlflow_registry, tmp_path, capfd):
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    server = follow(serve, mlflow_registry)
    client = server.client()
    probe = dm.flight_rows(2, seed=1)
    before = client.infer(MODEL, infer_inputs(probe)).as_numpy("probability")
    healthy = metrics(server)
    assert metric_value(healthy, "mlops_serve_registry_poll_failures_total") == 0
    assert metric_value(healthy, STALE % "champion") == 0

    # The registry starts failing under the running mirror: its database is no longer one.
    database = tmp_path / "mlflow.db"
    saved = database.read_bytes()
    database.write_bytes(b"not a database " * 1024)
    try:
        wait_until(
            lambda: metric_value(metrics(server), "mlops_serve_registry_poll_failures_total") >= 3,
            20,
            what="failed polls counted",
        )
        during = metrics(server)
        assert metric_value(during, STALE % "champion") == 1
        assert client.is_server_ready()
        np.testing.assert_array_equal(client.infer(MODEL, infer_inputs(probe)).as_numpy("probability"), before)
        last_success = metric_value(during, "mlops_serve_registry_last_success_timestamp_seconds")
    finally:
        database.write_bytes(saved)

    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    mlflow_registry.set_alias("champion", v2)
    wait_until(lambda: served_version(client, probe) == v2, 30, what="recovery: the new champion served")
    after = metrics(server)
    assert metric_value(after, STALE % "champion") == 0
    assert metric_value(after, "mlops_serve_registry_last_success_timestamp_seconds") > last_success
    assert metric_value(after, "mlops_serve_registry_poll_duration_seconds_count") == metric_value(
        after, "mlops_serve_registry_polls_total"
    )
    # Logged when the registry went away and when it came back, not on every failed poll.
    log = capfd.readouterr().err
    assert log.count("registry unreachable; serving the last good versions") == 1
    assert log.count("registry reachable again") == 1


def test_a_mirror_killed_during_an_outage_is_restarted_and_the_champion_stays(serve, mlflow_registry, tmp_path):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    mlflow_registry.set_alias("champion", v1)
    server = follow(serve, mlflow_registry)
    client = server.client()
    [mirror] = mirrors(os.getpid())
    database = tmp_path / "mlflow.db"
    saved = database.read_bytes()
    database.write_bytes(b"not a database " * 1024)
    try:
        os.kill(mirror, signal.SIGKILL)
        wait_until(lambda: mirrors(os.getpid()) not in ([], [mirror]), 20, what="mirror restarted")
        failures = metric_value(metrics(server), "mlops_serve_registry_poll_failures_total")
        wait_until(
            lambda: metric_value(metrics(server), "mlops_serve_registry_poll_failures_total") > failures,
            20,
            what="the new mirror's first poll",
        )
        assert metric_value(metrics(server), STALE % "champion") == 1
        assert client.is_server_ready()
        assert served_version(client, dm.flight_rows(1)) == v1
    finally:
        database.write_bytes(saved)


def test_a_deleted_champion_alias_keeps_the_champion_serving(serve, mlflow_registry):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    mlflow_registry.set_alias("champion", v1)
    server = follow(serve, mlflow_registry)
    client = server.client()
    probe = dm.flight_rows(1)

    mlflow_registry.client.delete_registered_model_alias(MODEL, "champion")
    wait_until(lambda: metric_value(metrics(server), STALE % "champion") == 1, 20, what="champion marked stale")
    assert client.is_server_ready()
    assert served_version(client, probe) == v1
    assert index_states(client) == {v1: ("READY", "")}

    mlflow_registry.set_alias("champion", v1)
    wait_until(lambda: metric_value(metrics(server), STALE % "champion") == 0, 20, what="champion current again")


def test_a_failed_download_is_retried_until_it_succeeds(serve, mlflow_registry, tmp_path):
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    mlflow_registry.set_alias("champion", v1)
    server = follow(serve, mlflow_registry)
    client = server.client()
    probe = dm.flight_rows(1)

    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    folder = newest_model_folder(tmp_path / "artifacts")
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)
    try:
        mlflow_registry.set_alias("champion", v2)
        # Retried (with backoff), not refused: the failures keep coming while v1 serves.
        wait_until(
            lambda: metric_value(metrics(server), "mlops_serve_registry_poll_failures_total") >= 2,
            20,
            what="download retried",
        )
        assert served_version(client, probe) == v1
        assert metric_value(metrics(server), STALE % "champion") == 1
    finally:
        away.rename(folder)
    wait_until(lambda: served_version(client, probe) == v2, 20, what="v2 served once its download works")
    assert index_states(client)[v2] == ("READY", "")
    assert "mlops_serve_model_swap_failures_total{" not in metrics(server)


def test_only_approved_versions_serve_when_approval_is_required(serve, mlflow_registry):
    approve = lambda v: mlflow_registry.client.set_model_version_tag(MODEL, v, "promotion_decision", "approved")  # noqa: E731
    v1 = mlflow_registry.register(dm.flight_model(seed=0))
    approve(v1)
    mlflow_registry.set_alias("champion", v1)
    server = follow(serve, mlflow_registry, require_approval=True)
    client = server.client()
    probe = dm.flight_rows(1)

    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    mlflow_registry.set_alias("champion", v2)  # moved by hand, never through the promotion gate
    wait_until(lambda: index_states(client).get(v2, ("",))[0] == "UNAVAILABLE", 20, what="v2 refused")
    assert "not approved" in index_states(client)[v2][1]
    assert served_version(client, probe) == v1
    swap_failures = 'mlops_serve_model_swap_failures_total{model="flight_delay",reason="unapproved"}'
    assert metric_value(metrics(server), swap_failures) == 1

    approve(v2)
    wait_until(lambda: served_version(client, probe) == v2, 20, what="v2 served once approved")
    assert metric_value(metrics(server), swap_failures) == 1


def test_repository_model_load_has_the_mirror_poll_the_registry_at_once(serve, mlflow_registry):
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    server = follow(serve, mlflow_registry, poll_interval=600)  # left alone, the mirror polls only at start
    client = server.client()
    v2 = mlflow_registry.register(dm.flight_model(seed=1))
    mlflow_registry.set_alias("champion", v2)
    client.load_model(MODEL, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert served_version(client, dm.flight_rows(1)) == v2


# --- processes ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def children(pid: int) -> dict[int, str]:
    """The command lines of `pid`'s child processes."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = int(re.search(r"^PPid:\s+(\d+)", status.read_text(), re.M).group(1))
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, AttributeError):
            continue  # gone meanwhile
        if parent == pid:
            found[int(status.parent.name)] = command
    return found


def mirrors(pid: int) -> list[int]:
    return [child for child, command in children(pid).items() if "-m serving.mirror" in command]


def load(server, requests: int = 50) -> None:
    import tritonclient.grpc as grpcclient

    for _ in range(5):  # several connections, so SO_REUSEPORT spreads them over the workers
        client = grpcclient.InferenceServerClient(server.url)
        for _ in range(requests // 5):
            client.infer(MODEL, infer_inputs(dm.flight_rows(8)))
        client.close()


def test_a_server_process_serves_lean_and_leaves_no_mirror_behind(serve_process, mlflow_registry, tmp_path):
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    server = serve_process(["--tracking-uri", mlflow_registry.tracking_uri, "--cache-dir", str(tmp_path / "cache")])
    server.wait_ready()
    load(server)
    assert rss_mb(server.process.pid) < RSS_LIMIT_MB
    [mirror] = mirrors(server.process.pid)
    manifest = Path(re.search(r"--manifest (\S+)", children(server.process.pid)[mirror]).group(1))
    assert manifest.exists()

    server.process.send_signal(signal.SIGKILL)  # no chance to stop its mirror
    server.process.wait(10)
    wait_until(lambda: not alive(mirror), 10, what="the mirror exits with its parent")
    assert not manifest.parent.exists()


WORKER_MODULES = """
import json, sys
from serving.settings import ServeSettings
from tests.serving.support import RunningServer
server = RunningServer(ServeSettings(**json.loads(sys.argv[1])))
server.wait_ready()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")))
server.stop()
"""


def test_a_worker_following_the_registry_never_imports_mlflow(mlflow_registry, tmp_path):
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    config = dict(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        http_port=-1,
        tracking_uri=mlflow_registry.tracking_uri,
        cache_dir=str(tmp_path / "cache"),
        prediction_log_sample_rate=0.0,
    )
    out = subprocess.run(
        [sys.executable, "-c", WORKER_MODULES, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_workers_share_one_mirror(serve_process, mlflow_registry, tmp_path):
    mlflow_registry.set_alias("champion", mlflow_registry.register(dm.flight_model(seed=0)))
    server = serve_process(
        ["--tracking-uri", mlflow_registry.tracking_uri, "--cache-dir", str(tmp_path / "cache"), "--workers", "2"]
    )
    server.wait_ready()
    load(server)
    [mirror] = mirrors(server.process.pid)
    workers = [pid for pid, command in children(server.process.pid).items() if "spawn_main" in command]
    assert len(workers) == 2
    for worker in workers:
        assert mirrors(worker) == []
        assert rss_mb(worker) < RSS_LIMIT_MB
    # The parent's /metrics reports the one mirror's polls (every worker reads the same counters).
    wait_until(
        lambda: "mlops_serve_registry_polls_total" in http_get(server.http + "/metrics")[1], 10, what="registry metrics"
    )
    assert server.terminate(timeout=60) == 0
    wait_until(lambda: not alive(mirror), 10, what="the mirror stopped with the server")
