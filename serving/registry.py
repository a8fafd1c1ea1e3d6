"""Where model versions come from, and the thread that follows them.

`ManifestSource` follows the manifest of the registry mirror (`serving.mirror`), the one process
that talks to MLflow: workers only read a small JSON file, so they never import mlflow.
`PathSource` serves one ONNX file without a registry (benchmarks, smoke tests). `RegistryFollower`
checks its source in a background thread and hands new versions to the repository; loading,
checking and warming up happen in that thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path

from serving.errors import ModelLoadError
from serving.repository import ModelRepository

log = logging.getLogger("serving.registry")

FOLLOW_INTERVAL = 0.25  # seconds between checks of the source; a manifest check is one stat()
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
        from serving.mirror import poll_request_path

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
    """The source a worker follows, from its `ServeConfig`: one ONNX file, the manifest of the
    mirror its parent started (`manifest_path`), or a mirror of its own."""
    if config.model_path:
        return PathSource(config.model_path, config.model_version, default_alias=config.aliases[0])
    if config.manifest_path:
        return ManifestSource(config.manifest_path)
    from serving.mirror import MirrorProcess

    mirror = MirrorProcess.for_server(config)
    return ManifestSource(mirror.manifest, mirror)


class RegistryFollower(threading.Thread):
    """Keeps the repository's versions of `name` in step with the source's aliases."""

    def __init__(
        self,
        repository: ModelRepository,
        loop: asyncio.AbstractEventLoop,
        source,
        name: str,
        aliases: list[str],
        poll_interval: float = FOLLOW_INTERVAL,
    ):
        super().__init__(name=f"follow-{name}", daemon=True)
        self.repository = repository
        self.loop = loop
        self.source = source
        self.model_name = name
        self.aliases = list(aliases)
        self.poll_interval = poll_interval
        self.paused = False  # set by RepositoryModelUnload until the next RepositoryModelLoad
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._poll_lock = threading.Lock()
        self._source_refused: set[str] = set()  # versions refused by the source, recorded in the repository
        repository.register(name)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("registry poll failed; serving what is loaded", extra={"model": self.model_name})
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def poll(self, force: bool = False) -> list[str]:
        """One pass over the aliases; returns the refusal reasons met (empty when all is well)."""
        with self._poll_lock:
            if force:
                self.paused = False
                self.repository.forget_failures(self.model_name)
                self._source_refused.clear()
            if self.paused or self._stop_event.is_set():
                return []
            errors = self.source.refresh(force)
            repo, name = self.repository, self.model_name
            for version, refusal in self.source.refusals().items():
                if version not in self._source_refused:
                    self._source_refused.add(version)
                    repo._refuse(name, version, refusal["source"], refusal["kind"], refusal["reason"])
                    errors.append(refusal["reason"])
            # Resolve every alias first, so champion and challenger on one version load it once.
            wanted = {alias: self.source.resolve(name, alias) for alias in self.aliases}
            current = {e["alias"]: e["version"] for e in repo.loaded_versions() if e["model"] == name}
            for alias, version in wanted.items():
                if version is None:
                    if alias in current:
                        log.info("alias removed from the registry", extra={"model": name, "alias": alias})
                        self._call(repo.unassign(name, alias))
                    continue
                if current.get(alias) == version:
                    continue
                if repo.is_loaded(name, version):
                    self._call(repo.install(repo.get(name, version), [alias]))
                    continue
                # A version the source refused and now offers (approved since) is tried; one this
                # repository refused is retried only by RepositoryModelLoad (force).
                if repo.failed(name, version) and version not in self._source_refused:
                    continue
                self._source_refused.discard(version)
                path, uri = self.source.fetch(name, version)
                try:
                    model = repo.prepare(name, version, str(path), source=uri)
                except ModelLoadError as exc:
                    errors.append(exc.reason)
                    continue
                self._call(repo.install(model, [alias]))
            return errors
