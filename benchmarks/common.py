"""Helpers every benchmark shares: a throwaway embedded home and JSON results with the machine's context."""

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def fresh_home() -> Path:
    """Point MLOPS_HOME and DAGSTER_HOME at a new folder, so a benchmark never touches the demo's state."""
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    (home / "dagster_home").mkdir()
    shutil.copy(ROOT / "deploy" / "local" / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    return home


def write_result(name: str, figures: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **figures,
    }
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {path}")
    return path
