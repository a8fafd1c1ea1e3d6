"""The registry mirror (serving.mirror) as a child process: its command line, and the parent's side
that starts it, restarts it when it dies and stops it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from serving.settings import mlops_home

log = logging.getLogger("serving.mirror")


@dataclass
class MirrorSettings:
    manifest: str
    model_name: str = "flight_delay"
    aliases: list[str] = field(default_factory=lambda: ["champion"])  # the first is the default
    tracking_uri: str | None = None
    registry_uri: str | None = None
    cache_dir: str = "./.mlops/serving_cache"
    poll_interval: float = 10.0  # seconds between registry polls
    backoff_initial: float = 1.0  # seconds before the first retry of a failed call; doubles
    backoff_max: float = 60.0
    require_approval: bool = False  # serve only versions tagged promotion_decision=approved
    log_level: str = "INFO"

    @classmethod
    def for_server(cls, config, manifest: str) -> MirrorSettings:
        """The settings a server's `ServeSettings` imply."""
        cache = config.cache_dir or str(mlops_home() / "serving_cache")
        return cls(
            manifest=manifest,
            model_name=config.model_name,
            aliases=list(config.aliases),
            tracking_uri=config.tracking_uri,
            registry_uri=config.registry_uri,
            cache_dir=cache,
            poll_interval=config.poll_interval,
            backoff_initial=config.registry_backoff_initial,
            backoff_max=config.registry_backoff_max,
            require_approval=config.require_approval,
            log_level=config.log_level,
        )

    def to_argv(self) -> list[str]:
        argv = []
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, list):
                argv += [flag, ",".join(value)]
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> MirrorSettings:
        parser = argparse.ArgumentParser(prog="python -m serving.mirror", description=__doc__.splitlines()[0])
        defaults = cls(manifest="")
        for f in fields(cls):
            flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
            if f.name == "manifest":
                parser.add_argument(flag, required=True, help="where to write the manifest")
            elif isinstance(default, bool):
                parser.add_argument(flag, action="store_true")
            elif isinstance(default, list):
                parser.add_argument(flag, default=",".join(default))
            else:
                parser.add_argument(flag, type=float if isinstance(default, float) else str, default=default)
        values = vars(parser.parse_args(argv))
        values["aliases"] = [a.strip() for a in values["aliases"].split(",") if a.strip()]
        return cls(**values)


def poll_request_path(manifest: str | Path) -> Path:
    """A worker replaces this file to ask the mirror for a poll now (RepositoryModelLoad)."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".poll")


class MirrorProcess:
    """`python -m serving.mirror` as a child of this process, restarted if it dies.

    It holds the write end of the child's stdin: when this process exits, however it exits, the
    pipe closes and the mirror stops.
    """

    def __init__(self, settings: MirrorSettings, folder: Path):
        self.settings = settings
        self.manifest = settings.manifest
        self._folder = folder
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._process = self._spawn()
        threading.Thread(target=self._supervise, name="registry-mirror", daemon=True).start()

    @classmethod
    def for_server(cls, config) -> MirrorProcess:
        folder = Path(tempfile.mkdtemp(prefix="mlops-serve-mirror-"))
        return cls(MirrorSettings.for_server(config, str(folder / "manifest.json")), folder)

    def _spawn(self) -> subprocess.Popen:
        self._started = time.monotonic()
        return subprocess.Popen(
            [sys.executable, "-m", "serving.mirror", *self.settings.to_argv()], stdin=subprocess.PIPE
        )

    def _supervise(self) -> None:
        delay = 0.5
        while True:
            code = self._process.wait()
            if self._stopped.is_set():
                return
            delay = 1.0 if time.monotonic() - self._started > 60 else min(delay * 2, 60.0)
            log.error("registry mirror exited; restarting it", extra={"exitcode": code, "restart_in_s": delay})
            if self._stopped.wait(delay):
                return
            with self._lock:
                if self._stopped.is_set():
                    return
                self._process = self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped.set()
            process = self._process
        process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)
