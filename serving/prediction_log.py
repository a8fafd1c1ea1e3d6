"""The prediction log: every (sampled) request's inputs and outputs, as rotated JSONL segments.

Records and segment names: serving/log_records.py; segments on disk: serving/log_segments.py; shipping
to the artifact store: serving/log_shipping.py. A segment holds one UTC event day and closes at a size,
an age or a new day. The request path only appends a reference to the arrays to a bounded buffer; a
background thread serializes and writes. No record is lost without being counted in
`mlops_serve_prediction_log_dropped{reason}`: `buffer_full` (requests never wait for the disk),
`write_error` (the failed segment is closed with the complete records it holds), `encode_error`,
`closed`. Each default (serving.settings) is a bound, `close()` included.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import random
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from serving.log_records import encode_record, new_segment_name, record_day
from serving.log_segments import (
    closed_name,
    create_locked,
    error_cause,
    evict_oldest,
    fitting_lines,
    recover_segments,
    seal_segment,
)
from serving.settings import mlops_home

log = logging.getLogger("serving.prediction_log")

WARN_INTERVAL_S = 10.0  # at most one warning line per drop reason in this time


def default_directory() -> Path:
    return mlops_home() / "prediction_log"


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
        ship_to: str | None = None,
        ship_backoff_s: tuple[float, float] = (1.0, 60.0),
    ):
        """`max_bytes`/`max_age_s` close a segment; `max_total_bytes` caps the folder's closed
        segments (0: unlimited); `stats` is a `serving.metrics.ServerStats`; `ship_to` is the artifact
        store's URI (a folder, `file://...` or `s3://bucket/prefix`) that closed segments are shipped
        to (None: they stay here), retried after the first to the last of `ship_backoff_s` seconds."""
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
        self._day: date | None = None  # the open segment's event day
        self._opened_at = 0.0
        self._bytes = 0
        self.written = 0
        self.dropped = 0
        self._drop_lock = threading.Lock()  # drops are counted from request threads and the writer
        self._warned_at: dict[str, float] = {}
        for path in recover_segments(self.directory):
            log.warning("recovered an unclosed prediction log segment", extra={"segment": str(path)})
        self.shipper = None
        if ship_to is not None:
            from serving.log_shipping import Shipper  # log_shipping builds on this module's segment helpers

            self.shipper = Shipper(self.directory, ship_to, stats=stats, backoff_s=ship_backoff_s)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

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
        *,
        row_keys: list[str] | None = None,
        event_ts: float | None = None,
    ) -> bool:
        """Buffer one record (arrays are referenced, not copied); False when it had to be dropped.
        `row_keys`: one per row, to join outcomes later; `event_ts`: when the rows happened (epoch s),
        which picks the record's segment day; the receive time when not given."""
        if self._stop.is_set():
            self._lose("closed", 1)
            return False
        if len(self._buffer) >= self.buffer_size:
            self._lose("buffer_full", 1)
            return False
        self._buffer.append((time.time(), request_id, model_name, model_version, inputs, outputs, row_keys, event_ts))
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
        cause = error_cause(error) if error is not None else reason
        log.warning(
            "prediction log dropped %d records (%s); %d in all",
            records,
            cause,
            dropped,
            extra={"reason": reason, "errno": cause, "records": records, "dropped": dropped},
        )

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
        pending: list[bytes] = []  # lines of one event day: `day`, that of the open segment if any
        size = 0
        day = self._day if self._file is not None else None
        while buffer:
            encoded = self._encode(buffer.popleft())
            if encoded is None:
                continue
            line, line_day = encoded
            if line_day != day:  # a segment holds one day, so a day's data is one prefix of the store
                if pending:
                    self._write(pending, size, day)
                    pending, size = [], 0
                self._close_segment()
                day = line_day
            pending.append(line)
            size += len(line)
            if self._bytes + size >= self.max_bytes or len(pending) >= 4096:
                self._write(pending, size, day)
                pending, size = [], 0
        if pending:
            self._write(pending, size, day)

    def _encode(self, record: tuple) -> tuple[bytes, date] | None:
        *fields, row_keys, event_ts = record
        try:
            line = encode_record(*fields, row_keys=row_keys, event_ts=event_ts, fast=self.fast_json)
            return line, record_day(fields[0], event_ts)
        except (TypeError, ValueError, OverflowError) as error:  # a value JSON or a date cannot hold
            self._lose("encode_error", 1, error)
            return None

    def _write(self, lines: list[bytes], size: int, day: date) -> None:
        try:
            if self._file is None:
                self._open_segment(day)
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

    def _open_segment(self, day: date) -> None:
        for _ in range(3):  # a new name when another process took or sealed the last one
            path = self.directory / (new_segment_name(day) + ".open")
            fd = create_locked(path)
            if fd is not None:
                self._file = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 - open across calls
                self._path, self._day, self._opened_at, self._bytes = path, day, time.monotonic(), 0
                return
        raise OSError(errno.EEXIST, "no free prediction log segment name", str(path))

    def _close_segment(self) -> None:
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
            os.replace(self._path, closed_name(self._path))
        except OSError as error:
            self._fail(error, [])
            return
        self._release()
        self._closed()

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
        kept = fitting_lines(lines, size - start) if size is not None else 0
        self._count_written(kept)
        self._lose("write_error", len(lines) - kept, error)
        self._closed()

    def _closed(self) -> None:
        """A segment was closed: keep the folder within bounds and have the shipper take it."""
        self._evict()
        if self.shipper is not None:
            self.shipper.notify()

    def _evict(self) -> None:
        """Keep the folder's closed segments within max_total_bytes, oldest deleted first."""
        if not self.max_total_bytes:
            return
        evicted, freed = evict_oldest(self.directory, self.max_total_bytes)
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
        """Write everything buffered, close the open segment (renamed to .jsonl), ship what is closed
        and stop.

        True when the writer and the shipper finished within `timeout`; False when one is still busy (a
        wedged disk or store): the records not written yet go with the process, the segments not shipped
        yet stay for the next start."""
        deadline = None if timeout is None else time.monotonic() + timeout
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
        if self.shipper is None:
            return True
        return self.shipper.close(None if deadline is None else max(0.0, deadline - time.monotonic()))
