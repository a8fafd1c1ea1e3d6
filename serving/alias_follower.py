"""The thread that keeps the repository's versions in step with the aliases of a version source
(serving.version_sources): loading, checking and warming up happen in that thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from serving.errors import ModelLoadError
from serving.repository import ModelRepository

log = logging.getLogger("serving.alias_follower")

FOLLOW_INTERVAL = 0.25  # seconds between checks of the source; a manifest check is one stat()


class AliasFollower(threading.Thread):
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
