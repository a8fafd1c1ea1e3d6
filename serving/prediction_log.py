"""The prediction log: every (sampled) request's inputs and outputs, as rotated JSONL segments.

Format (read by the drift_report asset as its production data; keep it stable):

- folder: `$MLOPS_HOME/prediction_log` by default (`MLOPS_HOME` defaults to `./.mlops`); the worker
  processes of one server share it;
- segments: `predictions-<UTC yyyymmddTHHMMSS>-<pid>-<seq>.jsonl`, written under the name
  `<segment>.jsonl.open` and renamed to `.jsonl` once complete (rotated by size or age, or closed
  on shutdown), so a reader only ever reads complete files;
- one JSON object a line: `{"ts": ISO-8601 UTC, "request_id": str, "model_name": str,
  "model_version": str, "inputs": {name: [flat values]}, "outputs": {name: [flat values]}}`;
  non-finite floats are written as null.

The request path only appends a reference to the arrays to a bounded buffer; a background thread
serializes and writes. The writer holds `flock(LOCK_EX)` on each `.open` segment while it has it open,
so a process starting up recovers (drops the torn last line, renames) exactly the `.open` segments
whose lock is free: those of dead processes. Pids cannot tell, as containers reuse them.

No record is lost without being counted in `mlops_serve_prediction_log_dropped{reason}`: `buffer_full`
(requests never wait for the disk), `write_error` (any OSError: the failed segment is closed with the
complete records it holds and the next batch opens a new one), `encode_error`, `closed`. A failed
fsync is logged too, though what the kernel lost cannot be counted.

Defaults, each a bound: sample rate 1.0; a segment closes at 64 MiB or 300 s, so readers see records
within minutes; the folder's closed segments are kept to 1 GiB, oldest deleted first (counted in
`mlops_serve_prediction_log_evicted_bytes`), so a pod is never evicted for filling its disk with its
own log; `close()` waits a bounded time, so a wedged disk cannot hang a shutdown.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

try:  # optional: about 20x faster on numeric arrays; the stdlib fallback writes the same format
    import orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    orjson = None

log = logging.getLogger("serving.prediction_log")

OPEN_SUFFIX = ".jsonl.open"
DONE_SUFFIX = ".jsonl"
WARN_INTERVAL_S = 10.0  # at most one warning line per drop reason in this time
_SEQUENCE = itertools.count(1)  # shared by every log in the process, so their segment names never collide


def default_directory() -> Path:
    return Path(os.environ.get("MLOPS_HOME", "./.mlops")) / "prediction_log"


def _fast_values(array: np.ndarray):
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.kind in "SO":
        return _values(flat)
    return flat  # orjson writes numeric arrays itself, NaN/Inf as null


def encode_record(
    ts: float,
    request_id: str,
    model_name: str,
    model_version: str,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    fast: bool = True,
) -> bytes:
    """One JSONL line (with its newline) in the prediction log's format."""
    if fast and orjson is not None:
        return orjson.dumps(
            {
                "ts": _iso(ts),
                "request_id": request_id,
                "model_name": model_name,
                "model_version": model_version,
                "inputs": {k: _fast_values(v) for k, v in inputs.items()},
                "outputs": {k: _fast_values(v) for k, v in outputs.items()},
            },
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
        )
    line = json.dumps(
        {
            "ts": _iso(ts),
            "request_id": request_id,
            "model_name": model_name,
            "model_version": model_version,
            "inputs": {k: _values(v) for k, v in inputs.items()},
            "outputs": {k: _values(v) for k, v in outputs.items()},
        },
        separators=(",", ":"),
    )
    return (line + "\n").encode("utf-8")


def _values(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if np.isfinite(v) else None for v in flat.tolist()]
    if flat.dtype.kind in "SO":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return flat.tolist()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- segments on disk ------------------------------------------------------------------------------


def _closed_name(path: Path) -> Path:
    return path.with_name(path.name[: -len(OPEN_SUFFIX)] + DONE_SUFFIX)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (another process may have sealed it)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _complete_size(fd: int) -> int:
    """Bytes up to and including the last newline: anything after it is a write cut short."""
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _cause(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, str(error.errno))
    return type(error).__name__


def _seal_locked(fd: int, path: Path) -> int | None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if not _names(path, fd):
        return None
    size = _complete_size(fd)
    os.ftruncate(fd, size)
    if size:
        os.replace(path, _closed_name(path))
    else:
        os.unlink(path)
    return size


def seal_segment(path: Path) -> int | None:
    """Close a `.open` segment no process writes: drop a torn last line, rename it to `.jsonl`
    (remove it if nothing is left). Returns the bytes kept; None when its writer holds the lock,
    it is already gone, or the disk refused (logged). Never raises."""
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            return _seal_locked(fd, path)
        finally:
            os.close(fd)
    except (FileNotFoundError, BlockingIOError):
        return None
    except OSError as error:
        log.warning(
            "could not close a prediction log segment",
            extra={"segment": str(path), "errno": _cause(error)},
        )
        return None


def recover_segments(directory: Path) -> list[Path]:
    """Close the segments left `.open` by processes that died (nobody holds their lock)."""
    recovered = []
    for path in sorted(Path(directory).glob("predictions-*" + OPEN_SUFFIX)):
        if seal_segment(path):
            recovered.append(_closed_name(path))
    return recovered


def _create_locked(path: Path) -> int | None:
    """A new segment's descriptor, locked; None when the name is taken (as `.open` or `.jsonl`) or a
    starting process's recovery sealed the file in the instant before our lock."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    keep = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _names(path, fd):
            return None
        if _closed_name(path).exists():  # our pid reused by another container: never rename over its data
            os.unlink(path)
            return None
        keep = True
        return fd
    except BlockingIOError:  # that recovery holds it; it removes the empty file
        return None
    finally:
        if not keep:
            os.close(fd)


def _whole_lines(lines: list[bytes], room: int) -> int:
    """How many of `lines`, written in order, fit entirely in `room` bytes."""
    kept = 0
    for line in lines:
        room -= len(line)
        if room < 0:
            break
        kept += 1
    return kept


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # evicted by another worker meanwhile
        return 0


class PredictionLog:
    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        sample_rate: float = 1.0,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 300.0,
        max_total_bytes: int = 1024**3,
        buffer_size: int = 100_000,
        flush_interval_s: float = 0.05,
        stats=None,
        fast_json: bool = True,
    ):
        """`max_bytes`/`max_age_s` close a segment; `max_total_bytes` caps the folder's closed
        segments (0: unlimited); `stats` is a `serving.metrics.ServerStats`."""
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be within [0, 1]")
        if max_total_bytes < 0:
            raise ValueError("max_total_bytes must be >= 0 (0 is unlimited)")
        self.directory = Path(directory) if directory else default_directory()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self.buffer_size = buffer_size
        self.fast_json = fast_json
        self._flush_interval = flush_interval_s
        self._stats = stats
        self._buffer: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._file = None  # the open segment (unbuffered, closefd=False: we close the descriptor)
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self.written = 0
        self.dropped = 0
        self._drop_lock = threading.Lock()  # drops are counted from request threads and the writer
        self._warned_at: dict[str, float] = {}
        for path in recover_segments(self.directory):
            log.warning("recovered an unclosed prediction log segment", extra={"segment": str(path)})
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # --- request path ---------------------------------------------------------------------------

    def sampled(self) -> bool:
        rate = self.sample_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def submit(
        self,
        request_id: str,
        model_name: str,
        model_version: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> bool:
        """Buffer one record (arrays are referenced, not copied); False when it had to be dropped."""
        if self._stop.is_set():
            self._lose("closed", 1)
            return False
        if len(self._buffer) >= self.buffer_size:
            self._lose("buffer_full", 1)
            return False
        self._buffer.append((time.time(), request_id, model_name, model_version, inputs, outputs))
        return True

    def _lose(self, reason: str, records: int, error: Exception | None = None) -> None:
        """Count records that will never be written and say so, at most once per reason per WARN_INTERVAL_S."""
        with self._drop_lock:
            self.dropped += records
            dropped = self.dropped
        if self._stats is not None and records:
            self._stats.record_log_drop(reason, records)
        now = time.monotonic()
        if now - self._warned_at.get(reason, -WARN_INTERVAL_S) < WARN_INTERVAL_S:
            return
        self._warned_at[reason] = now
        cause = _cause(error) if error is not None else reason
        log.warning(
            "prediction log dropped %d records (%s); %d in all",
            records,
            cause,
            dropped,
            extra={"reason": reason, "errno": cause, "records": records, "dropped": dropped},
        )

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stop.wait(self._flush_interval)
            try:
                self._write_buffered()
                if stopping or (self._file is not None and time.monotonic() - self._opened_at >= self.max_age_s):
                    self._close_segment()
            except Exception:  # OSErrors are handled where they happen; a bug must not end the thread
                log.exception("prediction log writer failed")

    def _write_buffered(self) -> None:
        buffer = self._buffer
        pending: list[bytes] = []
        size = 0
        while buffer:
            line = self._encode(buffer.popleft())
            if line is None:
                continue
            pending.append(line)
            size += len(line)
            if self._bytes + size >= self.max_bytes or len(pending) >= 4096:
                self._write(pending, size)
                pending, size = [], 0
        if pending:
            self._write(pending, size)

    def _encode(self, record: tuple) -> bytes | None:
        try:
            return encode_record(*record, fast=self.fast_json)
        except (TypeError, ValueError) as error:  # a value JSON cannot hold: only this record is lost
            self._lose("encode_error", 1, error)
            return None

    def _write(self, lines: list[bytes], size: int) -> None:
        try:
            if self._file is None:
                self._open_segment()
            data = memoryview(b"".join(lines))
            while data:  # a short write (the disk filling up) is followed by the error
                data = data[self._file.write(data) :]
        except OSError as error:
            self._fail(error, lines)
            return
        self._bytes += size
        self._count_written(len(lines))
        if self._bytes >= self.max_bytes:
            self._close_segment()

    def _count_written(self, records: int) -> None:
        self.written += records
        if self._stats is not None:
            self._stats.log_written += records

    def _open_segment(self) -> None:
        for _ in range(3):  # a new name when another process took or sealed the last one
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            path = self.directory / f"predictions-{stamp}-{os.getpid()}-{next(_SEQUENCE):06d}{OPEN_SUFFIX}"
            fd = _create_locked(path)
            if fd is not None:
                self._file = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 - open across calls
                self._path, self._opened_at, self._bytes = path, time.monotonic(), 0
                return
        raise OSError(errno.EEXIST, "no free prediction log segment name", str(path))

    def _close_segment(self) -> None:
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
            os.replace(self._path, _closed_name(self._path))
        except OSError as error:
            self._fail(error, [])
            return
        self._release()
        self._evict()

    def _release(self, error: OSError | None = None) -> None:
        """Forget the segment and close its descriptor, which releases its lock."""
        file, self._file, self._path = self._file, None, None
        if error is None or error.errno != errno.EBADF:  # EBADF: closed already, the number maybe reused
            with contextlib.suppress(OSError):  # Linux frees the descriptor even when close() fails
                os.close(file.fileno())
        file.close()  # marks the object closed; closefd=False leaves the descriptor alone

    def _fail(self, error: OSError, lines: list[bytes]) -> None:
        """Close the failed segment with the complete records it holds; count the rest of `lines` lost."""
        path, start = self._path, self._bytes
        if self._file is not None:
            self._release(error)
        size = seal_segment(path) if path is not None else None
        kept = _whole_lines(lines, size - start) if size is not None else 0
        self._count_written(kept)
        self._lose("write_error", len(lines) - kept, error)
        self._evict()

    def _evict(self) -> None:
        """Delete the oldest closed segments until the folder's closed segments fit in max_total_bytes."""
        if not self.max_total_bytes:
            return
        evicted = freed = 0
        try:
            segments = [(p, _size(p)) for p in sorted(self.directory.glob("predictions-*" + DONE_SUFFIX))]
            excess = sum(size for _, size in segments) - self.max_total_bytes
            for path, size in segments:
                if excess <= 0:
                    break
                excess -= size
                with contextlib.suppress(FileNotFoundError):  # another worker evicted it first
                    path.unlink()
                    evicted, freed = evicted + 1, freed + size
        except OSError as error:
            log.warning("prediction log retention failed", extra={"errno": _cause(error)})
        if evicted:
            if self._stats is not None:
                self._stats.log_evicted_bytes += freed
            log.warning(
                "prediction log over max_total_bytes: deleted the %d oldest segments (%d bytes)",
                evicted,
                freed,
                extra={"segments": evicted, "bytes": freed},
            )

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write everything buffered, close the open segment (renamed to .jsonl) and stop.

        True when the writer finished within `timeout`; False when it is still busy (a wedged disk):
        the records it has not written yet go with the process."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "prediction log writer did not finish within %s s",
                timeout,
                extra={"buffered": len(self._buffer)},
            )
            return False
        if self._buffer:  # submitted while the writer was finishing
            self._lose("closed", len(self._buffer))
            self._buffer.clear()
        return True
