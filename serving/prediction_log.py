"""The prediction log: every (sampled) request's inputs and outputs, as rotated JSONL segments.

Format (read by the drift_report asset as its production data; keep it stable):

- folder: `$MLOPS_HOME/prediction_log` by default (`MLOPS_HOME` defaults to `./.mlops`);
- segments: `predictions-<UTC yyyymmddTHHMMSS>-<pid>-<seq>.jsonl`, written under the name
  `<segment>.jsonl.open` and renamed to `.jsonl` once complete (rotated by size or age, or closed
  on shutdown), so a reader only ever reads complete files;
- one JSON object a line: `{"ts": ISO-8601 UTC, "request_id": str, "model_name": str,
  "model_version": str, "inputs": {name: [flat values]}, "outputs": {name: [flat values]}}`;
  non-finite floats are written as null.

The request path only appends a reference to the arrays to a bounded buffer; a background thread
serializes and writes. When the buffer is full a record is dropped and counted
(`mlops_serve_prediction_log_dropped_total`) rather than stalling requests. `close()` writes
everything buffered, so a graceful shutdown loses no entry.
"""

from __future__ import annotations

import collections
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_segments(directory: Path) -> list[Path]:
    """Close segments left `.open` by a process that died: drop a torn last line, then rename."""
    recovered = []
    for path in sorted(Path(directory).glob("predictions-*" + OPEN_SUFFIX)):
        try:
            pid = int(path.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
        final = path.with_name(path.name[: -len(OPEN_SUFFIX)] + DONE_SUFFIX)
        os.replace(path, final)
        recovered.append(final)
    return recovered


class PredictionLog:
    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        sample_rate: float = 1.0,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 300.0,
        buffer_size: int = 100_000,
        flush_interval_s: float = 0.05,
        stats=None,
        fast_json: bool = True,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be within [0, 1]")
        self.directory = Path(directory) if directory else default_directory()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.buffer_size = buffer_size
        self.fast_json = fast_json
        self._flush_interval = flush_interval_s
        self._stats = stats
        self._buffer: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._file = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._seq = 0
        self.written = 0
        self.dropped = 0
        self._last_drop_log = 0.0
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
        if len(self._buffer) >= self.buffer_size:
            self.dropped += 1
            if self._stats is not None:
                self._stats.record_log_drop("buffer_full")
            now = time.monotonic()
            if now - self._last_drop_log > 10:
                self._last_drop_log = now
                log.warning("prediction log buffer full: dropping records", extra={"dropped": self.dropped})
            return False
        self._buffer.append((time.time(), request_id, model_name, model_version, inputs, outputs))
        return True

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self._flush_interval)
            try:
                self._write_buffered()
                if self._file is not None and time.time() - self._opened_at >= self.max_age_s:
                    self._close_segment()
            except Exception:
                log.exception("prediction log write failed")
        self._write_buffered()
        self._close_segment()

    def _open_segment(self) -> None:
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        self._seq += 1
        self._path = self.directory / f"predictions-{stamp}-{os.getpid()}-{self._seq:06d}{OPEN_SUFFIX}"
        self._file = open(self._path, "ab")  # noqa: SIM115 - open across calls
        self._opened_at = now
        self._bytes = 0

    def _close_segment(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._path.with_name(self._path.name[: -len(OPEN_SUFFIX)] + DONE_SUFFIX)
        os.replace(self._path, final)
        self._file = None
        self._path = None

    def _write_buffered(self) -> None:
        buffer = self._buffer
        pending: list[bytes] = []
        size = 0
        while buffer:
            line = encode_record(*buffer.popleft(), fast=self.fast_json)
            pending.append(line)
            size += len(line)
            if self._bytes + size >= self.max_bytes or len(pending) >= 4096:
                self._write(pending, size)
                pending, size = [], 0
        if pending:
            self._write(pending, size)

    def _write(self, lines: list[bytes], size: int) -> None:
        if self._file is None:
            self._open_segment()
        self._file.write(b"".join(lines))
        self._file.flush()  # in the OS's hands: survives a crash of this process
        self._bytes += size
        self.written += len(lines)
        if self._stats is not None:
            self._stats.log_written += len(lines)
        if self._bytes >= self.max_bytes:
            self._close_segment()

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything buffered, close the open segment (renamed to .jsonl) and stop."""
        self._stop.set()
        self._thread.join(timeout)
