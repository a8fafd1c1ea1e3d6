"""`make ui`: dagster dev serves the graph with its groups and kinds (queried over the UI's GraphQL)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.mlops_assets.test_definitions import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } groupName kinds } }"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_dagster_dev_shows_the_graph_with_groups_and_kinds(tmp_path):
    port = _free_port()
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "local" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MLOPS_HOME": str(tmp_path / "mlops"), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [Path(sys.executable).parent / "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-m",
         "mlops_assets.definitions"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the whole process group (webserver, daemon, code server) stops together
    )  # fmt: skip
    try:
        deadline, nodes = time.monotonic() + 120, None
        while time.monotonic() < deadline and nodes is None:
            try:
                nodes = _graphql(port)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(1)
        assert nodes, "dagster dev did not serve the asset graph within 120 s"
        shown = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        for name, group in PIPELINE.items():
            assert shown[name]["groupName"] == group
            assert shown[name]["kinds"], f"{name} shows no kinds"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
