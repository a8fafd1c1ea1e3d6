"""The Dagster UI as a person uses it, in a real browser: Debian's chromium driven by Playwright.

`dagster dev` and `mlflow ui` serve a copy of the monitoring home (validated features, a small champion,
one drift report) on loopback. The browser checks that the lineage graph shows every asset, launches one
month of validated_features from the graph's Materialize dialog, finds the sensors and the schedule in
their documented states, and follows a drift report's link into MLflow's artifact view. Browser console
errors fail the test. Screenshots of each page land under the test's tmp_path (the path is printed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from mlops_assets.definitions import defs
from resources import local_resources
from tests.sensors.support import UNCHANGED, drift_report

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
# The verified launch flags (shared/reference/API-NOTES.md): no sandbox in a container, no GPU, and nothing
# that phones home (a blocked update or sync request would surface as a console error).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}  # wide enough that the fitted graph draws full asset nodes
WAIT_MS = 60_000  # any one element on a slow 2-core machine; the run itself has its own budget
RUN_TIMEOUT_S = 300

# A month without features in the home: the UI's run creates it. The drift report is for the unchanged
# copy of the training month, so drift_sensor (running in dagster dev) finds nothing to retrain on and
# no training run competes with the test for the CPUs.
UI_MONTH = "2013-07"
DRIFT_MONTH = UNCHANGED
DOCUMENTED_STATES = {  # README "Default status": True = running
    "drift_sensor": True,
    "live_performance_sensor": True,
    "monitoring_sensor": True,
    "monthly_retraining": False,
}

# Console errors that come from the environment rather than the pages under test:
# {substring of the message or of its source URL: why it is noise}.
IGNORED_CONSOLE_ERRORS = {
    # MLflow's UI asks who is signed in; `mlflow ui` without the basic-auth app answers 404 for it.
    "/ajax-api/2.0/mlflow/users/current": "mlflow ui runs without authentication",
}

NODE = 'svg foreignObject [class*="AssetNode_assetName"]'  # class names end in a build hash
RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } assetSelection { path } } }
    ... on PythonError { message }
  }
}
"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _default_signals() -> None:
    # A shell that starts pytest in the background leaves SIGINT ignored, and dagster dev then ignores
    # SIGTERM too: give the servers default handlers so killpg stops them.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(command: list, env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(part) for part in command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the server and every child it starts stop together
            preexec_fn=_default_signals,
        )


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_until(what: str, ready: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if ready():
                return
        time.sleep(0.5)
    pytest.fail(f"{what} was not ready within {timeout:.0f} s:\n{_tail(log)}")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def _runs(port: int, month: str) -> list[dict]:
    data = _graphql(port, RUNS_QUERY, {"filter": {"tags": [{"key": "dagster/partition", "value": month}]}})
    runs = data["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return runs["results"]


def _group_ids(definitions: dg.Definitions) -> list[str]:
    """The graph's ids for the code location's asset groups (one code location: `global@global:<group>`)."""
    graph = definitions.resolve_asset_graph()
    groups = sorted({graph.get(key).group_name for key in graph.get_all_asset_keys()})
    return [f"global@global:{group}" for group in groups]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium (.ci/run installs it); with MLOPS_REQUIRE_BROWSER=1 its absence is a failure."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian's; never `playwright install`)"
        if os.environ.get("MLOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MLOPS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def ui_home(chromium, monitored_home, tmp_path, monkeypatch) -> dict:
    """A DAGSTER_HOME and an MLOPS_HOME for the servers, ports chosen, one drift report recorded."""
    mlops_home = tmp_path / "mlops"
    # A copy, since the servers write to it; its mlflow.db still names the session home's artifact
    # folders for what was logged there (the champion), which the copy only reads.
    shutil.copytree(monitored_home, mlops_home)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    config = (ROOT / "deploy" / "local" / "dagster.yaml").read_text()
    # Without these a "Join the Dagster community" dialog covers the page; the shipped file has them.
    assert re.search(r"^nux:\s*\n\s+enabled:\s*false", config, re.M), "deploy/local/dagster.yaml: nux not disabled"
    assert re.search(r"^telemetry:\s*\n\s+enabled:\s*false", config, re.M), "deploy/local/dagster.yaml: telemetry"
    (dagster_home / "dagster.yaml").write_text(config)

    ports = {"dagster": _free_port(), "mlflow": _free_port()}
    mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    # The registry builds report links from it when the report is made, in process as in dagster dev.
    monkeypatch.setenv("MLOPS_MLFLOW_UI_URL", mlflow_url)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        metadata = drift_report(local_resources(mlops_home), instance, DRIFT_MONTH)
    assert metadata["drifted"] is False, "the drift month must not drift, or drift_sensor starts a training run"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "MLOPS_HOME": str(mlops_home),
        "PYTHONPATH": str(ROOT),
        "MLOPS_MLFLOW_UI_URL": mlflow_url,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for leak in ("MLFLOW_TRACKING_URI", "MLOPS_ENV", "MLOPS_SERVING_URL"):  # a developer's shell, not the test's
        env.pop(leak, None)
    return {"env": env, "ports": ports, "mlflow_url": mlflow_url, "mlops_home": mlops_home}


@pytest.mark.slow
@pytest.mark.timeout(900)  # includes building the session's features and champion when this test runs alone
def test_a_person_can_walk_the_pipeline_in_the_dagster_ui(chromium, ui_home, tmp_path):
    started = time.monotonic()
    definitions = defs()
    assets = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    automations = {s.name for s in definitions.sensors} | {s.name for s in definitions.schedules}
    env, ports, mlflow_url = ui_home["env"], ui_home["ports"], ui_home["mlflow_url"]
    dagster_url = f"http://127.0.0.1:{ports['dagster']}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    problems: list[str] = []  # console errors and page errors, from every page and frame
    ignored: list[str] = []

    with contextlib.ExitStack() as stack:
        dagster_log, mlflow_log = tmp_path / "dagster-dev.log", tmp_path / "mlflow-ui.log"
        dagster = _start(
            [BIN / "dagster", "dev", "-h", "127.0.0.1", "-p", ports["dagster"], "-m", "mlops_assets.definitions"],
            env,
            dagster_log,
        )
        stack.callback(_stop, dagster)
        mlflow = _start(
            [BIN / "mlflow", "ui", "--backend-store-uri", f"sqlite:///{ui_home['mlops_home']}/mlflow.db",
             "--host", "127.0.0.1", "--port", ports["mlflow"], "--workers", "1"],
            env,
            mlflow_log,
        )  # fmt: skip
        stack.callback(_stop, mlflow)
        _wait_until("mlflow ui", lambda: _get(f"{mlflow_url}/health") == b"OK", mlflow, mlflow_log, 120)
        _wait_until(
            "dagster dev",
            lambda: bool(_graphql(ports["dagster"], "{ assetNodes { id } }")["assetNodes"]),
            dagster,
            dagster_log,
            180,
        )
        print(f"servers ready after {time.monotonic() - started:.0f} s")

        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(WAIT_MS)

        def on_console(message) -> None:
            if message.type != "error":
                return
            where = message.location.get("url", "")
            entry = f"console error at {where or '?'}: {message.text}"
            noise = any(pattern in message.text or pattern in where for pattern in IGNORED_CONSOLE_ERRORS)
            (ignored if noise else problems).append(entry)

        def on_page_error(error) -> None:
            problems.append(f"page error on {error.page.url if error.page else '?'}: {error.error}")

        context.on("console", on_console)
        context.on("weberror", on_page_error)
        page = context.new_page()

        numbers = itertools.count(1)

        def shot(name: str, target: Page = page) -> None:
            target.screenshot(path=shots / f"{next(numbers):02d}-{name}.png")

        try:
            _lineage_and_launch(page, dagster_url, definitions, assets, shot)
            run_id = _run_succeeds(page, dagster_url, ports["dagster"], shot)
            _automation_states(page, dagster_url, automations, shot)
            _drift_report_opens_in_mlflow(page, context, dagster_url, mlflow_url, shot)
        except BaseException:
            for number, open_page in enumerate(context.pages):
                with contextlib.suppress(Exception):
                    open_page.screenshot(path=shots / f"failure-{number}.png")
            raise
        finally:
            print(f"screenshots: {sorted(p.name for p in shots.iterdir())}")
            for entry in ignored:
                print(f"ignored (environment): {entry}")
            for entry in problems:
                print(f"browser error: {entry}")

    print(f"run {run_id} succeeded; whole test {time.monotonic() - started:.0f} s")
    assert not problems, "browser console errors:\n" + "\n".join(problems)


def _lineage_and_launch(page: Page, dagster_url: str, definitions, assets: set[str], shot) -> None:
    """Every asset of the code location is a node of the expanded graph; one month is launched from it."""
    expanded = urllib.parse.quote(",".join(_group_ids(definitions)))
    page.goto(f"{dagster_url}/asset-groups?expanded={expanded}")
    nodes = page.locator(NODE)
    with contextlib.suppress(PlaywrightTimeoutError):  # the comparison below says which nodes are missing
        page.wait_for_function(
            "([selector, count]) => document.querySelectorAll(selector).length >= count",
            arg=[NODE, len(assets)],
            timeout=WAIT_MS,
        )
    shown = set(nodes.all_inner_texts())
    shot("lineage-graph")
    assert shown == assets, f"graph lacks {sorted(assets - shown)}, shows extra {sorted(shown - assets)}"

    def node(name: str):
        return nodes.filter(has_text=re.compile(f"^{re.escape(name)}$"))

    node("raw_flights").click()
    node("validated_features").click(modifiers=["Shift"])
    page.get_by_role("button", name=re.compile(r"Materialize selected \(2\)")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 2 assets")
    partitions = dialog.get_by_placeholder(re.compile(r"^ex: 2013-"))
    partitions.fill(UI_MONTH)
    partitions.press("Enter")
    launch = dialog.get_by_role("button", name="Launch 1 run", exact=True)  # exactly one partition picked
    launch.wait_for()
    shot("materialize-dialog")
    assert launch.is_enabled()
    launch.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.first.wait_for()
    shot("launched")


def _run_succeeds(page: Page, dagster_url: str, port: int, shot) -> str:
    """The launched run succeeds (GraphQL runsOrError) and its run page says so."""
    deadline, run = time.monotonic() + RUN_TIMEOUT_S, None
    while time.monotonic() < deadline:
        launched = [r for r in _runs(port, UI_MONTH) if {"key": "dagster/from_ui", "value": "true"} in r["tags"]]
        assert len(launched) <= 1, f"the dialog launched {len(launched)} runs for {UI_MONTH}"
        run = launched[0] if launched else None
        if run and run["status"] in TERMINAL:
            break
        time.sleep(1)
    assert run is not None, f"no run for {UI_MONTH} launched from the UI appears in runsOrError"
    assert {tuple(a["path"]) for a in run["assetSelection"]} == {("raw_flights",), ("validated_features",)}

    page.goto(f"{dagster_url}/runs/{run['runId']}")
    page.get_by_text(f"partition: {UI_MONTH}").first.wait_for()
    if run["status"] == "SUCCESS":
        page.get_by_text("Success", exact=True).first.wait_for()  # the run page's status tag
    shot("run-page")
    assert run["status"] == "SUCCESS", f"run {run['runId']} is {run['status']} (see the run-page screenshot)"
    return run["runId"]


def _automation_states(page: Page, dagster_url: str, automations: set[str], shot) -> None:
    """Automation lists every sensor and schedule, each switched on or off as the README documents."""
    assert set(DOCUMENTED_STATES) <= automations, f"definitions lack {set(DOCUMENTED_STATES) - automations}"
    page.goto(f"{dagster_url}/automation")
    rows = page.locator('[class*="ListItem_listItem"]')
    states = {}
    for name in sorted(automations):
        link = page.locator(f'a[href$="/sensors/{name}"], a[href$="/schedules/{name}"]')
        link.first.wait_for()
        # The row first draws a placeholder, then a disabled, unchecked switch until the state has loaded.
        switch = rows.filter(has=link).locator('label[class*="formatSwitch"] input[type="checkbox"]:not([disabled])')
        switch.wait_for(state="attached")
        states[name] = switch.is_checked()
    shot("automation")
    assert {n: states[n] for n in DOCUMENTED_STATES} == DOCUMENTED_STATES, f"running per the page: {states}"


def _drift_report_opens_in_mlflow(page: Page, context, dagster_url: str, mlflow_url: str, shot) -> None:
    """drift_report's latest materialization links its Evidently report, which MLflow's artifact view renders."""
    page.goto(f"{dagster_url}/assets/drift_report")
    table = page.locator('table[class*="AssetEventMetadataEntriesTable"]')
    table.get_by_text("drifted_share", exact=True).first.wait_for()  # the latest materialization's metadata
    keys = table.locator("tr > td:first-child").all_inner_texts()
    row = table.locator("tr").filter(has=page.get_by_text("report_url", exact=True))
    if row.count() == 1:
        row.scroll_into_view_if_needed()
    shot("drift-report-asset")
    assert row.count() == 1, f"drift_report's latest materialization has no report_url metadata; keys: {keys}"
    link = row.get_by_role("link", name=re.compile(r"^https?:"))  # the text link, not the icon beside it
    href = link.get_attribute("href")
    assert href.startswith(f"{mlflow_url}/"), f"report_url {href} does not open the MLflow UI at {mlflow_url}"

    with context.expect_page() as opened:
        link.click()  # target=_blank: MLflow opens in a new tab
    report = opened.value
    report.wait_for_load_state()
    report.get_by_text(re.compile(r"drift_report\.html")).first.wait_for()  # MLflow's artifact tree and header
    # MLflow renders HTML artifacts in a sandboxed iframe (a blob: URL): Evidently's own headline inside it.
    report.frame_locator("iframe").first.get_by_text("Dataset Drift", exact=True).first.wait_for()
    shot("drift-report-in-mlflow", report)
    assert report.url.startswith(mlflow_url) and report.url.endswith(".html"), report.url
