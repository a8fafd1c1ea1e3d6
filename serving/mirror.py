"""The registry mirror: the one process of a server that talks to MLflow.

It resolves the served aliases, downloads new versions into a verified cache and writes what the
workers should serve to a small JSON manifest, replaced atomically. Workers follow the manifest
(`serving.registry.ManifestSource`) and never import mlflow, which costs each of them ~130 MB.
`mlops-serve` starts it as `python -m serving.mirror` with a pipe on stdin; it exits when the
pipe closes, so it never outlives its parent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

log = logging.getLogger("serving.mirror")

CHECKSUMS = "checksums.json"
PARTIAL = ".partial-"  # a download in progress: .partial-<pid>-<version>-<random>


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
        """The settings a `ServeConfig` implies."""
        cache = config.cache_dir or str(Path(os.environ.get("MLOPS_HOME", "./.mlops")) / "serving_cache")
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


def find_onnx(folder: Path) -> Path:
    """The ONNX file inside a downloaded model folder (mlflow's onnx flavor writes model.onnx)."""
    candidates = sorted(folder.rglob("*.onnx"), key=lambda p: (len(p.parts), p.name != "model.onnx", str(p)))
    if not candidates:
        raise FileNotFoundError(f"no .onnx file under {folder}")
    return candidates[0]


# --- the registry ---------------------------------------------------------------------------------


class MlflowRegistry:
    """The MLflow calls the mirror makes."""

    def __init__(self, tracking_uri: str | None, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def resolve(self, name: str, alias: str) -> tuple[str, dict] | None:
        """(version, tags) the alias names, or None if there is no such model or alias (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        # int from the sqlite store, str over REST: always compare as strings.
        return str(version.version), dict(version.tags or {})

    def download(self, name: str, version: str, folder: Path) -> None:
        import mlflow

        # Resolve the artifact location with our own client: mlflow resolves a `models:/` URI whose
        # source is a logged model (`models:/m-...`) against its process-global tracking URI.
        location = self.client.get_model_version_download_uri(name, version)
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(folder))


# --- the cache ------------------------------------------------------------------------------------


class VerificationError(Exception):
    """A downloaded version that must not serve; `kind` is the swap-failure metric's reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def verify(folder: Path) -> Path:
    """The folder's ONNX file, once onnxruntime loads it and its signature is one we can serve."""
    from serving.sessions import create_session, serving_options
    from serving.signature import signature_from_session

    try:
        onnx = find_onnx(folder)
    except FileNotFoundError as exc:
        raise VerificationError("load_error", f"the version has no ONNX file: {exc}") from exc
    try:
        session = create_session(onnx, serving_options(onnx, intra_op_threads=1))
    except Exception as exc:
        raise VerificationError("load_error", f"cannot load the ONNX file: {exc}") from exc
    try:
        signature_from_session(session)
    except ValueError as exc:
        raise VerificationError("unsupported_signature", str(exc)) from exc
    return onnx


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(folder: Path) -> None:
    sums = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def checksums_match(folder: Path) -> bool:
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
        return bool(sums) and all(_sha256(folder / name) == digest for name, digest in sums.items())
    except (OSError, ValueError):
        return False


class VersionCache:
    """`root/<model>/<version>/`: complete, verified downloads only, each with its sha256 sums.

    A download goes to a partial folder beside the entry (same filesystem) and is renamed into
    place once verified, so a crash mid-download never leaves a half entry where one is read.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, name: str, version: str, download) -> Path:
        """The verified ONNX file of a version, downloading it with `download(folder)` if needed."""
        final = self.root / name / version
        if final.exists():
            if checksums_match(final):
                return find_onnx(final)
            log.warning("cache entry altered or incomplete; downloading it again", extra={"path": str(final)})
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}-{version}-", dir=final.parent))
        try:
            download(partial)
            verify(partial)
            _write_checksums(partial)
            try:
                os.rename(partial, final)
            except OSError:
                if not checksums_match(final):
                    raise
                # Another mirror on this cache renamed a complete entry first: use that one.
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return find_onnx(final)

    def remove_abandoned(self, name: str) -> None:
        """Delete the partial downloads of processes that died mid-download."""
        for partial in (self.root / name).glob(PARTIAL + "*"):
            pid = int(partial.name[len(PARTIAL) :].split("-", 1)[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(partial, ignore_errors=True)
            except PermissionError:
                pass  # alive, another user's


# --- the mirror -----------------------------------------------------------------------------------


@dataclass
class Retry:
    attempts: int
    not_before: float  # time.monotonic()
    error: str


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class Mirror:
    """Keeps the manifest in step with the registry's aliases.

    The default alias never loses its entry: while the registry is unreachable or the alias is
    gone, the last good version stays in the manifest, marked stale, and the workers keep serving
    it. A version that fails verification, or is unapproved while approval is required, is listed
    under `refused` and the alias keeps its previous version; a failed download is retried with
    exponential backoff.
    """

    def __init__(self, settings: MirrorSettings):
        self.settings = settings
        self.registry = MlflowRegistry(settings.tracking_uri, settings.registry_uri)
        self.cache = VersionCache(settings.cache_dir)
        self.manifest = Path(settings.manifest)
        self.aliases: dict[str, dict] = {}  # alias -> {version, path, source, stale, reason}
        self.refused: dict[str, dict] = {}  # version an alias names now -> {kind, reason, source}
        self.status = {
            "polls": 0,
            "failures": 0,
            "duration_seconds": 0.0,
            "last_success": None,
            "poll_started": None,
            "errors": [],
        }
        self._broken: dict[str, dict] = {}  # failed verification; kept until a forced poll
        self._retries: dict[str, Retry] = {}
        self._mirrored: dict[str, Path] = {}  # versions this process has verified
        self._unreachable = 0  # polls in a row the registry did not answer
        self._states: dict = {}  # what was last logged, per subject
        self._request_stamp = None
        self._resume()

    def _resume(self) -> None:
        """Start from the manifest a previous mirror process wrote (this one replaces it after a crash),
        so a restart during a registry outage does not empty the manifest the workers follow."""
        try:
            previous = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return
        if previous.get("model") == self.settings.model_name:
            self.aliases = {a: e for a, e in previous["aliases"].items() if a in self.settings.aliases}
            self.status = previous["status"]

    def run(self) -> None:
        self.cache.remove_abandoned(self.settings.model_name)
        due = 0.0
        while True:  # until the parent goes (`_exit_with_parent`)
            forced = self._poll_requested()
            if forced or time.monotonic() >= due:
                due = time.monotonic() + self.poll(forced)
            time.sleep(0.1)

    def _poll_requested(self) -> bool:
        try:
            st = os.stat(poll_request_path(self.manifest))
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._request_stamp:
            return False
        self._request_stamp = stamp
        return True

    def poll(self, forced: bool = False) -> float:
        """One pass over the aliases, then the manifest; returns the seconds until the next pass."""
        s = self.settings
        started = time.time()
        if forced:  # RepositoryModelLoad: retry refused and failing versions now
            self._broken.clear()
            self._retries.clear()
            self._mirrored.clear()
        errors = []
        try:
            wanted = {alias: self.registry.resolve(s.model_name, alias) for alias in s.aliases}
        except Exception as exc:
            error = f"registry unreachable: {_one_line(exc)}"
            errors.append(error)
            self._unreachable += 1
            if self._changed("registry", "unreachable"):
                log.warning("registry unreachable; serving the last good versions", extra=self._extra(error=error))
            for alias in self.aliases:
                self._stale(alias, "registry unreachable")
        else:
            self._unreachable = 0
            if self._states.get("registry") == "unreachable":
                log.info("registry reachable again", extra=self._extra())
            self._states["registry"] = "reachable"
            refused: dict[str, dict] = {}
            for alias, found in wanted.items():
                error = self._follow(alias, found, refused)
                if error:
                    errors.append(error)
            self.refused = refused
        finished = time.time()
        self.status["polls"] += 1
        self.status["duration_seconds"] += finished - started
        self.status["poll_started"] = started
        self.status["errors"] = errors
        if errors:
            self.status["failures"] += 1
        else:
            self.status["last_success"] = finished
        self.write()
        if not self._unreachable:
            return s.poll_interval
        return max(s.poll_interval, min(s.backoff_max, s.backoff_initial * 2 ** (self._unreachable - 1)))

    def _follow(self, alias: str, found: tuple[str, dict] | None, refused: dict) -> str | None:
        """Bring one alias's entry up to date; returns an error for the poll-failure count."""
        s, name = self.settings, self.settings.model_name
        entry = self.aliases.get(alias)
        if found is None:
            if entry is not None and alias == s.aliases[0]:
                self._stale(alias, "the alias is gone from the registry")
            elif entry is not None:
                del self.aliases[alias]
                self._changed(("stale", alias), None)
                log.info("alias removed from the registry", extra=self._extra(alias=alias))
            return None
        version, tags = found
        if entry is not None and entry["version"] == version:
            self._stale(alias, None)
            return None
        source = f"models:/{name}/{version}"
        refusal = self._broken.get(version) or self._unapproved(version, tags, source)
        if refusal is not None:
            refused[version] = refusal
            self._stale(alias, f"version {version} refused: {refusal['reason']}")
            return None
        retry = self._retries.get(version)
        if retry is not None and time.monotonic() < retry.not_before:
            self._stale(alias, f"version {version} not downloaded: {retry.error}")
            return None
        try:
            path = self._mirrored.get(version) or self.cache.get(
                name, version, lambda folder: self.registry.download(name, version, folder)
            )
        except VerificationError as exc:
            self._broken[version] = refused[version] = {"kind": exc.kind, "reason": exc.reason, "source": source}
            self._stale(alias, f"version {version} refused: {exc.reason}")
            return None
        except Exception as exc:
            attempts = retry.attempts + 1 if retry else 1
            delay = min(s.backoff_max, s.backoff_initial * 2 ** (attempts - 1))
            error = _one_line(exc)
            self._retries[version] = Retry(attempts, time.monotonic() + delay, error)
            log.warning(
                "download failed; retrying with backoff",
                extra=self._extra(version=version, attempt=attempts, retry_in_s=delay, error=error),
            )
            self._stale(alias, f"version {version} not downloaded: {error}")
            return f"download of version {version} failed: {error}"
        self._retries.pop(version, None)
        self._mirrored[version] = path
        self.aliases[alias] = {"version": version, "path": str(path), "source": source, "stale": False, "reason": ""}
        self._changed(("stale", alias), None)
        log.info("version mirrored", extra=self._extra(alias=alias, version=version, path=str(path)))
        return None

    def _unapproved(self, version: str, tags: dict, source: str) -> dict | None:
        decision = tags.get("promotion_decision")
        if not self.settings.require_approval or decision == "approved":
            return None
        reason = f"not approved for serving (promotion_decision={decision or 'unset'})"
        return {"kind": "unapproved", "reason": reason, "source": source}

    def _stale(self, alias: str, reason: str | None) -> None:
        """Mark an alias's entry as (not) confirmed by the registry; log only changes."""
        entry = self.aliases.get(alias)
        if entry is not None:
            entry["stale"], entry["reason"] = reason is not None, reason or ""
        if not self._changed(("stale", alias), reason):
            return
        served = entry["version"] if entry else None
        if reason is not None:
            log.warning(
                "alias stale: the last good version, if any, keeps serving",
                extra=self._extra(alias=alias, served=served, reason=reason),
            )
        else:
            log.info("alias current again", extra=self._extra(alias=alias, served=served))

    def _changed(self, subject, state) -> bool:
        if self._states.get(subject) == state:
            return False
        self._states[subject] = state
        return True

    def _extra(self, **fields) -> dict:
        return {"model": self.settings.model_name, **fields}

    def write(self) -> None:
        document = {
            "model": self.settings.model_name,
            "pid": os.getpid(),
            "registry": self.settings.tracking_uri,
            "written_at": time.time(),
            "aliases": self.aliases,
            "refused": self.refused,
            "status": self.status,
        }
        tmp = self.manifest.with_name(self.manifest.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        os.replace(tmp, self.manifest)


# --- the process ----------------------------------------------------------------------------------


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


def _exit_with_parent(manifest: Path) -> None:
    sys.stdin.buffer.read()  # returns when the parent closes the pipe or dies
    log.info("parent gone; registry mirror stopping", extra={"pid": os.getpid()})
    # Workers keep what they loaded; no one follows the manifest after the parent. The folder goes
    # too when nothing else is in it (a parent killed with SIGKILL could not remove it).
    for path in (manifest, poll_request_path(manifest)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        manifest.parent.rmdir()
    os._exit(0)  # every write is tmp + rename: stopping anywhere leaves nothing half-written


def main(argv: list[str] | None = None) -> int:
    from serving import logs

    settings = MirrorSettings.from_argv(argv)
    logs.configure(settings.log_level)
    # The mirror retries on its own schedule; MLflow's own HTTP retries (minutes) would hold up a
    # forced poll. Progress bars would interleave with the JSON log.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A server blocks SIGTERM/SIGINT in its threads (serving.server._guard_stop) and we inherit that
    # mask; the parent stops us by closing our stdin, but a signal must still work for an operator.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which then stops us
    threading.Thread(
        target=_exit_with_parent, args=(Path(settings.manifest),), name="parent-watch", daemon=True
    ).start()
    log.info(
        "registry mirror started",
        extra={
            "pid": os.getpid(),
            "model": settings.model_name,
            "aliases": settings.aliases,
            "manifest": settings.manifest,
        },
    )
    Mirror(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
