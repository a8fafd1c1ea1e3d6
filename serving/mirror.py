"""The registry mirror: the one process of a server that talks to MLflow.

It resolves the served aliases, downloads new versions into a verified cache and writes what the
workers should serve to a small JSON manifest, replaced atomically. Workers follow the manifest
(`serving.version_sources.ManifestSource`) and never import mlflow, which costs each of them ~130 MB.
`mlops-serve` starts it as `python -m serving.mirror` with a pipe on stdin; it exits when the
pipe closes, so it never outlives its parent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serving.mirror_client import MirrorClient
from serving.mirror_process import MirrorSettings, poll_request_path
from serving.version_cache import VerificationError, VersionCache

log = logging.getLogger("serving.mirror")


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
        self.registry = MirrorClient(settings.tracking_uri, settings.registry_uri)
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
    # A server blocks SIGTERM/SIGINT in its threads (serving.worker.guard_stop) and we inherit that
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
