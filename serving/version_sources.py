"""Where a worker's model versions come from.

`ManifestSource` follows the manifest of the registry mirror (`serving.mirror`), the one process
that talks to MLflow: workers only read a small JSON file, so they never import mlflow.
`PathSource` serves one ONNX file without a registry (benchmarks, smoke tests).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("serving.version_sources")

FORCED_POLL_WAIT = 10.0  # seconds a forced poll waits for the mirror's answer


class PathSource:
    """A single ONNX file served as `version` under the default alias."""

    def __init__(self, path: str | Path, version: str = "1", default_alias: str = "champion"):
        self.path = Path(path)
        self.version = str(version)
        self.default_alias = default_alias

    def refresh(self, force: bool = False) -> list[str]:
        return []

    def resolve(self, name: str, alias: str) -> str | None:
        return self.version if alias == self.default_alias else None

    def fetch(self, name: str, version: str) -> tuple[Path, str]:
        return self.path, str(self.path)

    def refusals(self) -> dict[str, dict]:
        return {}

    def status(self) -> dict | None:
        return None

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        pass


class ManifestSource:
    """The versions the registry mirror downloaded and verified, as its manifest lists them.

    The manifest is re-read only when it changes; until the mirror writes its first one, no alias
    resolves. `mirror` is the mirror process this source owns (single-process servers), if any.
    """

    def __init__(self, path: str | Path, mirror=None):
        self.path = Path(path)
        self.mirror = mirror
        self._manifest: dict = {}
        self._stamp = None

    def refresh(self, force: bool = False) -> list[str]:
        """Read the newest manifest (after a poll of the registry, when forced); the mirror's errors."""
        if force:
            self._request_poll()
        else:
            self._read()
        return list(self._manifest.get("status", {}).get("errors", []))

    def _read(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_ino, st.st_mtime_ns) != self._stamp:
                self._manifest = json.loads(self.path.read_text())
                self._stamp = (st.st_ino, st.st_mtime_ns)
        except (OSError, ValueError):
            pass  # not written yet: keep what we have

    def _request_poll(self) -> None:
        from serving.mirror_process import poll_request_path

        asked = time.time()
        request = poll_request_path(self.path)
        tmp = request.with_name(f"{request.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{asked} {os.getpid()}\n")
        os.replace(tmp, request)
        deadline = time.monotonic() + FORCED_POLL_WAIT
        while time.monotonic() < deadline:
            self._read()
            # The mirror stamps each manifest with the start of its poll: one that started after
            # the request saw the registry as it is now.
            if (self._manifest.get("status", {}).get("poll_started") or 0) >= asked:
                return
            time.sleep(0.05)
        log.warning("the registry mirror did not answer a forced poll in time", extra={"manifest": str(self.path)})

    def resolve(self, name: str, alias: str) -> str | None:
        if self._manifest.get("model") != name:
            return None
        entry = self._manifest["aliases"].get(alias)
        return entry["version"] if entry else None

    def fetch(self, name: str, version: str) -> tuple[Path, str]:
        for entry in self._manifest.get("aliases", {}).values():
            if entry["version"] == version:
                return Path(entry["path"]), entry["source"]
        raise LookupError(f"version {version} is not in the registry mirror's manifest")

    def refusals(self) -> dict[str, dict]:
        """Versions an alias names that the mirror refused: {version: {kind, reason, source}}."""
        return self._manifest.get("refused", {})

    def status(self) -> dict | None:
        """The mirror's poll counters, for /metrics."""
        manifest = self._manifest
        if not manifest:
            return None
        status = manifest["status"]
        return {
            "polls": status["polls"],
            "failures": status["failures"],
            "duration_seconds": status["duration_seconds"],
            "last_success": status["last_success"],
            "stale": {alias: int(entry["stale"]) for alias, entry in manifest["aliases"].items()},
        }

    def describe(self) -> str:
        return f"registry mirror manifest {self.path}"

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.stop()


def open_source(config):
    """The source a worker follows, from its settings: one ONNX file, the manifest of the
    mirror its parent started (`manifest_path`), or a mirror of its own."""
    if config.model_path:
        return PathSource(config.model_path, config.model_version, default_alias=config.aliases[0])
    if config.manifest_path:
        return ManifestSource(config.manifest_path)
    from serving.mirror_process import MirrorProcess

    mirror = MirrorProcess.for_server(config)
    return ManifestSource(mirror.manifest, mirror)
