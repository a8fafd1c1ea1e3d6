"""The model repository: loaded ONNX Runtime sessions keyed by (model name, version).

Swaps are load-before-unload. A new version is loaded, checked against the signature of the
version being served, and warmed up in a background thread (`prepare`); only then does `install`
re-point the routes on the event loop, in one reference assignment, so a request sees either the
old version or the new one, never neither. Requests already holding the old version finish on it;
the old version is drained and dropped after the new one serves.

A version that fails any step is refused: the served version stays, and the failure is recorded
(state UNAVAILABLE + reason in RepositoryIndex, an error log line, and a swap-failure metric).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from serving.errors import ModelLoadError, ModelNotFound, ModelNotReady, quoted
from serving.loaded_model import LoadedModel, RepositoryConfig
from serving.metrics import ServerStats
from serving.queue_budget import QueueBudget
from serving.sessions import create_session, serving_options
from serving.signature import ModelSignature, signature_from_session

log = logging.getLogger("serving.repository")

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionRecord:
    """What RepositoryIndex reports for one model version."""

    name: str
    version: str
    state: str
    reason: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    updated: float = field(default_factory=time.time)


class ModelRepository:
    def __init__(self, config: RepositoryConfig | None = None, stats: ServerStats | None = None):
        self.config = config or RepositoryConfig()
        self.stats = stats or ServerStats()
        self.stats.loaded = self.loaded_versions
        # model -> route key ("" default, a version, or an alias) -> model; replaced, never mutated.
        self._routes: dict[str, dict[str, LoadedModel]] = {}
        self._aliases: dict[str, dict[str, str]] = {}  # model -> alias -> version
        self._records: dict[tuple[str, str], VersionRecord] = {}
        self._known: set[str] = set()  # models this server is configured to serve
        self.budget = QueueBudget(self.config.max_queued_bytes)
        self._lock = threading.RLock()

    # --- hot path (event loop) ------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        routes = self._routes.get(name)
        if routes is not None:
            model = routes.get(version)
            if model is not None:
                return model
        if name not in self._known and routes is None:
            raise ModelNotFound(f"model '{quoted(name)}' is not served here")
        if version:
            record = self._records.get((name, version))
            if record is None:
                raise ModelNotFound(f"model '{name}' has no version or alias '{quoted(version)}'")
            reason = f": {record.reason}" if record.reason else ""
            raise ModelNotReady(f"model '{name}' version {version} is {record.state}{reason}")
        raise ModelNotReady(f"model '{name}' has no version ready")

    def ready(self, name: str, version: str = "") -> bool:
        routes = self._routes.get(name)
        return routes is not None and version in routes

    def is_ready(self) -> bool:
        """Every model this server is configured to serve has a default version ready."""
        return bool(self._known) and all(self.ready(name) for name in self._known)

    # --- loading (any thread) -------------------------------------------------------------------

    def register(self, name: str) -> None:
        with self._lock:
            self._known.add(name)

    def is_loaded(self, name: str, version: str) -> bool:
        return version in self._routes.get(name, {})

    def failed(self, name: str, version: str) -> bool:
        record = self._records.get((name, version))
        return record is not None and record.state == UNAVAILABLE and record.reason != "unloaded"

    def forget_failures(self, name: str) -> None:
        with self._lock:
            for key in [k for k, r in self._records.items() if k[0] == name and r.state == UNAVAILABLE]:
                del self._records[key]

    def _record(self, name, version, state, reason="", source="", aliases=()) -> None:
        with self._lock:
            old = self._records.get((name, version))
            self._records[(name, version)] = VersionRecord(
                name, version, state, reason, source or (old.source if old else ""), tuple(aliases)
            )

    def _refuse(self, name: str, version: str, source: str, kind: str, reason: str) -> ModelLoadError:
        self._record(name, version, UNAVAILABLE, reason, source)
        self.stats.record_swap_failure(name, kind)
        log.error(
            "model version refused",
            extra={"model": name, "version": version, "reason": reason, "failure": kind, "source": source},
        )
        return ModelLoadError(f"model '{name}' version {version} refused: {reason}")

    def served_signature(self, name: str) -> tuple[str, ModelSignature] | None:
        routes = self._routes.get(name) or {}
        model = routes.get("") or next(iter(routes.values()), None)
        return (model.version, model.signature) if model is not None else None

    def prepare(self, name: str, version: str, path: str, source: str = "") -> LoadedModel:
        """Load, check and warm up a version (blocking; call from a background thread).

        Raises ModelLoadError, after recording the refusal, when the version must not serve.
        """
        version = str(version)
        source = source or str(path)
        self._record(name, version, LOADING, source=source)
        log.info("loading model version", extra={"model": name, "version": version, "source": source})
        try:
            session = create_session(path, serving_options(path, self.config.intra_op_threads))
        except Exception as exc:
            raise self._refuse(name, version, source, "load_error", f"cannot load the ONNX file: {exc}") from exc
        try:
            signature = signature_from_session(session)
        except ValueError as exc:
            raise self._refuse(name, version, source, "unsupported_signature", str(exc)) from exc
        served = self.served_signature(name)
        if served is not None and served[0] != version:
            difference = served[1].difference(signature)
            if difference is not None:
                raise self._refuse(
                    name,
                    version,
                    source,
                    "signature_changed",
                    f"signature differs from served version {served[0]}: {difference}",
                )
        model = LoadedModel(name, version, session, signature, source, self.config, self.stats, self.budget)
        try:
            model.warm_up()
        except Exception as exc:
            raise self._refuse(name, version, source, "warmup_failed", f"warm-up failed: {exc}") from exc
        return model

    # --- routing (event loop) -------------------------------------------------------------------

    def _rebuild(self, name: str, models: dict[str, LoadedModel], aliases: dict[str, str]) -> list[LoadedModel]:
        """Point the routes at `aliases`; return the versions no alias refers to any more."""
        routes: dict[str, LoadedModel] = {}
        for alias, version in aliases.items():
            model = models[version]
            routes[alias] = model
            routes[version] = model
        default = aliases.get(self.config.default_alias)
        if default is None and len(aliases) == 1:
            default = next(iter(aliases.values()))
        if default is not None:
            routes[""] = models[default]
        old = self._routes.get(name, {})
        with self._lock:
            self._aliases[name] = dict(aliases)
            self._routes = {**self._routes, name: routes}  # the atomic switch
            for version, model in {m.version: m for m in routes.values()}.items():
                names = tuple(sorted(a for a, v in aliases.items() if v == version))
                self._record(name, version, READY, source=model.source, aliases=names)
        kept = {id(m) for m in routes.values()}
        return list({id(m): m for m in old.values() if id(m) not in kept}.values())

    async def install(self, model: LoadedModel, aliases: list[str] | tuple[str, ...]) -> None:
        """Serve `model` under `aliases`; drain and drop the versions this leaves unreferenced."""
        name = model.name
        model.start_batcher()
        current = dict(self._routes.get(name, {}))
        models = {m.version: m for m in current.values()}
        models.setdefault(model.version, model)
        model = models[model.version]  # an already-loaded version keeps its batcher and stats
        mapping = dict(self._aliases.get(name, {}))
        previous_default = current.get("")
        for alias in aliases:
            mapping[alias] = model.version
        dropped = self._rebuild(name, models, mapping)
        new_default = self._routes[name].get("")
        if previous_default is not None and new_default is not previous_default:
            self.stats.record_swap(name)
        log.info(
            "model version serving",
            extra={
                "model": name,
                "version": model.version,
                "aliases": list(aliases),
                "replaced": previous_default.version if previous_default is not None else None,
            },
        )
        await self._drop(dropped)

    async def unassign(self, name: str, alias: str) -> None:
        """Remove an alias (it disappeared from the registry); unload the version if now unused."""
        mapping = dict(self._aliases.get(name, {}))
        if mapping.pop(alias, None) is None:
            return
        models = {m.version: m for m in self._routes.get(name, {}).values()}
        await self._drop(self._rebuild(name, models, mapping))

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` (RepositoryModelUnload)."""
        if name not in self._routes and name not in self._known:
            raise ModelNotFound(f"model '{quoted(name)}' is not served here")
        models = list({id(m): m for m in self._routes.get(name, {}).values()}.values())
        with self._lock:
            self._aliases[name] = {}
            self._routes = {k: v for k, v in self._routes.items() if k != name}
        await self._drop(models, reason="unloaded by request")

    async def _drop(self, models: list[LoadedModel], reason: str = "unloaded") -> None:
        for model in models:
            self._record(model.name, model.version, UNLOADING, source=model.source)
            await model.drain()
            self._record(model.name, model.version, UNAVAILABLE, reason, source=model.source)
            log.info("model version unloaded", extra={"model": model.name, "version": model.version, "reason": reason})

    # --- reporting ------------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[VersionRecord]:
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: (r.name, _version_key(r.version)))
        return [r for r in records if r.state == READY or not ready_only]

    def models(self) -> list[LoadedModel]:
        seen = {}
        for routes in self._routes.values():
            for model in routes.values():
                seen[id(model)] = model
        return list(seen.values())

    def loaded_versions(self) -> list[dict]:
        out = []
        for name, mapping in list(self._aliases.items()):
            for alias, version in sorted(mapping.items()):
                out.append({"model": name, "version": version, "alias": alias})
        return out

    def versions(self, name: str) -> list[str]:
        routes = self._routes.get(name, {})
        return sorted({m.version for m in routes.values()}, key=_version_key)

    def stalled(self, limit_s: float) -> list[str]:
        """Why health must fail: every batcher that made no progress for more than `limit_s`."""
        reasons = []
        for model in self.models():
            stalled = model.stalled_s()
            if stalled > limit_s:
                reasons.append(f"model '{model.name}' version {model.version}: no progress for {stalled:.1f}s")
        return reasons

    def abort(self, error: Exception) -> None:
        """Answer every queued and computing request of every version with `error` now."""
        for model in self.models():
            if model.batcher is not None:
                model.batcher.abort(error)

    async def close(self, timeout: float | None = None) -> bool:
        """Drain every version; past `timeout` what is left gets UNAVAILABLE. True if all finished."""
        models = self.models()
        if not models:
            return True
        results = await asyncio.gather(*(model.drain(timeout) for model in models))
        return all(results)


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
