"""Closed prediction log segments shipped to the artifact store, where the pipeline reads them.

A destination is a URI: a folder (a path or `file://...`) or S3 (`s3://bucket/prefix`, boto3, which
honours AWS_ENDPOINT_URL_S3). Each closed segment goes to `<destination>/<segment_key(name)>` and is
deleted here only once that upload succeeded; an object is never replaced by different content. The
worker processes of a server share the folder: a segment ships under its lock (`claimed`), so no two
ship it at once. A failed upload is counted, logged at most once per WARN_INTERVAL_S and retried with
capped exponential backoff; the segment waits here meanwhile (the log's retention still bounds the folder).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from serving.log_records import new_segment_name, segment_day, segment_key
from serving.log_segments import DONE_SUFFIX, claimed, error_cause
from serving.prediction_log import WARN_INTERVAL_S

log = logging.getLogger("serving.log_shipping")


class SegmentConflict(Exception):
    """The destination holds a different object under the segment's key."""


class LocalDestination:
    def __init__(self, root: Path):
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # readable by the pipeline, as the artifact store's own files are
            with open(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(tmp, target)  # unlike a rename, never replaces what is there: readers see whole files
            except FileExistsError:
                if target.read_bytes() != data:
                    raise SegmentConflict(key) from None
            _fsync_directory(target.parent)  # the link must outlive a crash: the local copy goes next
        finally:
            os.unlink(tmp)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Destination:
    def __init__(self, bucket: str, prefix: str):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # The shipper retries itself; short timeouts keep a black-holed endpoint from stalling a close.
        config = Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2})
        self._client = boto3.client("s3", config=config)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        full = f"{self.prefix}/{key}" if self.prefix else key
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
        except ClientError as error:
            if error.response["Error"]["Code"] != "PreconditionFailed":
                raise
            # There already: our own upload whose reply was lost, or (never overwritten) another one.
            if self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read() != data:
                raise SegmentConflict(key) from None


def open_destination(uri: str) -> LocalDestination | S3Destination:
    """The destination a URI names: `s3://bucket/prefix`, `file:///folder` or a plain folder path."""
    parts = urlsplit(uri)
    if parts.scheme == "s3" and parts.netloc:
        return S3Destination(parts.netloc, parts.path)
    if parts.scheme == "file":
        return LocalDestination(Path(parts.path))
    if parts.scheme:
        raise ValueError(f"cannot ship the prediction log to {uri!r}: use a folder, file://... or s3://bucket/prefix")
    return LocalDestination(Path(uri))


def _reason(error: Exception) -> str:
    """A short label for a failed upload: S3's error code, the errno name, or the exception type."""
    code = (getattr(error, "response", None) or {}).get("Error", {}).get("Code")  # botocore's ClientError
    return str(code) if code else error_cause(error)


class Shipper:
    """Ships the closed segments of `directory` from a background thread (owned by a PredictionLog).

    `shipped` and `ship_errors` count this process's uploads and failed attempts (`stats`, a
    `serving.metrics.ServerStats`, counts them too); `pending` is the
    folder's closed segments still waiting, whichever process closed them."""

    def __init__(self, directory: Path, ship_to: str, *, stats=None, backoff_s: tuple[float, float] = (1.0, 60.0)):
        self.directory = Path(directory)
        self.destination = open_destination(ship_to)
        self.first_retry_s, self.max_backoff_s = backoff_s
        self.shipped = 0
        self.ship_errors = 0
        self._stats = stats
        self._failures = 0  # consecutive failed passes
        self._warned_at = -WARN_INTERVAL_S
        self._wake = threading.Event()
        self._stop = threading.Event()
        unnamed = [p.name for p in self.directory.glob("predictions-*" + DONE_SUFFIX) if segment_day(p.name) is None]
        if unnamed:  # written before segments carried their day: retention deletes them in time
            log.warning("%d prediction log segments have no day in their name and are not shipped", len(unnamed))
        self._thread = threading.Thread(target=self._run, name="prediction-log-shipper", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._segments())

    def _segments(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("predictions-*" + DONE_SUFFIX) if segment_day(p.name))

    def notify(self) -> None:
        """A segment was closed: ship it now (unless backing off)."""
        self._wake.set()

    def close(self, timeout: float | None) -> bool:
        """Ship what is closed (one more attempt) and stop; False when that did not finish within `timeout`."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "prediction log shipper did not finish within %s s; %d segments wait for the next start",
                timeout,
                self.pending,
            )
            return False
        return True

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before the pass: a segment closed during it is shipped by the next
            stopping = self._stop.is_set()
            try:
                shipping = self._ship_closed()
            except Exception:  # listing the folder failed, or a bug: the thread must go on
                log.exception("prediction log shipper failed")
                shipping = False
            if stopping:
                return
            if shipping:  # woken by our writer; the rescan catches segments of workers that died
                self._wake.wait(self.max_backoff_s)
            else:  # only close() cuts a backoff short
                self._stop.wait(self._backoff())

    def _backoff(self) -> float:
        """first_retry_s, doubled with each failed attempt in a row, up to max_backoff_s."""
        return min(self.max_backoff_s, self.first_retry_s * 2 ** min(max(self._failures - 1, 0), 30))

    def _ship_closed(self) -> bool:
        """Ship every closed segment no other process holds; False when an upload failed."""
        for path in self._segments():
            try:
                shipped = self._ship(path)
            except Exception as error:  # the destination's (OSError, botocore, conflict): retried later
                self._failed(path, error)
                return False
            if shipped:
                self.shipped += 1
                if self._stats is not None:
                    self._stats.record_log_shipped(1)
        if self._failures:
            log.info("prediction log shipping resumed after %d failed attempts", self._failures)
            self._failures = 0
        return True

    def _ship(self, path: Path) -> bool:
        """Upload one segment, then delete it here; False when another process holds it or it is gone."""
        with claimed(path) as fd:
            if fd is None:
                return False
            with open(fd, "rb", closefd=False) as file:
                data = file.read()
            try:
                self.destination.put(segment_key(path.name), data)
            except SegmentConflict:
                # Another server's segment took this name (pods repeat pids): ours ships under a fresh one.
                os.link(path, path.with_name(new_segment_name(segment_day(path.name))))
                path.unlink()
                raise
            path.unlink()
        return True

    def _failed(self, path: Path, error: Exception) -> None:
        self._failures += 1
        self.ship_errors += 1
        reason = _reason(error)
        if self._stats is not None:
            self._stats.record_log_ship_error(reason)
        now = time.monotonic()
        if now - self._warned_at < WARN_INTERVAL_S:
            return
        self._warned_at = now
        log.warning(
            "could not ship prediction log segment %s to %s (%s); %d segments wait, retrying with backoff",
            path.name,
            self.destination,
            reason,
            self.pending,
            extra={"segment": path.name, "reason": reason, "failures": self._failures},
        )
