"""Where model versions come from, and the thread that follows them.

`MlflowSource` resolves a registered model's aliases (`champion`, optionally `challenger`) with
`MlflowClient.get_model_version_by_alias` and downloads a version's artifacts to a local cache.
`PathSource` serves one ONNX file without MLflow (benchmarks, smoke tests). `RegistryFollower`
polls a source at a fixed interval in a background thread and hands new versions to the
repository; loading, checking and warming up happen in that thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from serving.errors import ModelLoadError
from serving.repository import ModelRepository

log = logging.getLogger("serving.registry")


def find_onnx(folder: Path) -> Path:
    """The ONNX file inside a downloaded model folder (mlflow's onnx flavor writes model.onnx)."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    candidates = sorted(folder.rglob("*.onnx"), key=lambda p: (len(p.parts), p.name != "model.onnx", str(p)))
    if not candidates:
        raise FileNotFoundError(f"no .onnx file under {folder}")
    return candidates[0]


class PathSource:
    """A single ONNX file served as `version` under the default alias."""

    def __init__(self, path: str | Path, version: str = "1", default_alias: str = "champion"):
        self.path = Path(path)
        self.version = str(version)
        self.default_alias = default_alias

    def resolve(self, name: str, alias: str) -> str | None:
        return self.version if alias == self.default_alias else None

    def fetch(self, name: str, version: str) -> tuple[Path, str]:
        return self.path, str(self.path)

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        pass


class MlflowSource:
    """Registered model versions in an MLflow registry, downloaded to `cache_dir/<name>/<version>`."""

    def __init__(self, tracking_uri: str | None, cache_dir: str | Path, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.cache_dir = Path(cache_dir)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def resolve(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model or alias (yet)
            raise
        # int from the sqlite store, str over REST: always compare as strings.
        return str(version.version)

    def fetch(self, name: str, version: str) -> tuple[Path, str]:
        import mlflow

        uri = f"models:/{name}/{version}"
        target = self.cache_dir / name / str(version)
        if not target.exists() or not any(target.rglob("*.onnx")):
            target.mkdir(parents=True, exist_ok=True)
            # Resolve the artifact location with our own client: mlflow resolves a `models:/` URI whose
            # source is a logged model (`models:/m-...`) against its process-global tracking URI.
            location = self.client.get_model_version_download_uri(name, str(version))
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(target))
        return find_onnx(target), uri

    def describe(self) -> str:
        return str(self.tracking_uri)

    def close(self) -> None:
        pass


def open_source(config):
    """The source a worker follows, from its `ServeConfig`: one ONNX file, or the MLflow registry."""
    if config.model_path:
        return PathSource(config.model_path, config.model_version, default_alias=config.aliases[0])
    cache = config.cache_dir or str(Path(os.environ.get("MLOPS_HOME", "./.mlops")) / "serving_cache")
    return MlflowSource(config.tracking_uri, cache, config.registry_uri)


class RegistryFollower(threading.Thread):
    """Keeps the repository's versions of `name` in step with the source's aliases."""

    def __init__(
        self,
        repository: ModelRepository,
        loop: asyncio.AbstractEventLoop,
        source,
        name: str,
        aliases: list[str],
        poll_interval: float = 5.0,
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
            if self.paused or self._stop_event.is_set():
                return []
            errors = []
            repo, name = self.repository, self.model_name
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
                if repo.failed(name, version):
                    continue  # refused before; retried only by RepositoryModelLoad (force)
                try:
                    path, uri = self.source.fetch(name, version)
                except Exception as exc:
                    repo._refuse(name, version, "", "download_failed", f"cannot download the model: {exc}")
                    errors.append(str(exc))
                    continue
                try:
                    model = repo.prepare(name, version, str(path), source=uri)
                except ModelLoadError as exc:
                    errors.append(exc.reason)
                    continue
                self._call(repo.install(model, [alias]))
            return errors
