"""Prediction log segments on disk.

A segment is written as `<segment>.jsonl.open` and renamed to `.jsonl` once complete, so a reader only
ever reads complete files. The writer holds `flock(LOCK_EX)` on each `.open` segment while it has it
open, so a process starting up recovers (drops the torn last line, renames) exactly the `.open` segments
whose lock is free: those of dead processes. Pids cannot tell, as containers reuse them. A closed
segment is shipped or evicted only by the process that claims its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("serving.prediction_log")

OPEN_SUFFIX = ".jsonl.open"
DONE_SUFFIX = ".jsonl"


def closed_name(path: Path) -> Path:
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


def error_cause(error: Exception) -> str:
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
        os.replace(path, closed_name(path))
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
            extra={"segment": str(path), "errno": error_cause(error)},
        )
        return None


def recover_segments(directory: Path) -> list[Path]:
    """Close the segments left `.open` by processes that died (nobody holds their lock)."""
    recovered = []
    for path in sorted(Path(directory).glob("predictions-*" + OPEN_SUFFIX)):
        if seal_segment(path):
            recovered.append(closed_name(path))
    return recovered


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[int | None]:
    """A closed segment's descriptor under our exclusive lock, or None when another process holds it
    (shipping or evicting it) or it is gone: no two processes ship or delete one segment at once."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd if _try_lock(fd) and _names(path, fd) else None
    finally:
        os.close(fd)


def create_locked(path: Path) -> int | None:
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
        if closed_name(path).exists():  # our pid reused by another container: never rename over its data
            os.unlink(path)
            return None
        keep = True
        return fd
    except BlockingIOError:  # that recovery holds it; it removes the empty file
        return None
    finally:
        if not keep:
            os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # evicted by another worker meanwhile
        return 0


def evict_oldest(directory: Path, max_total_bytes: int) -> tuple[int, int]:
    """Delete the oldest closed segments until those left fit in `max_total_bytes`; (segments, bytes) deleted."""
    evicted = freed = 0
    try:
        segments = [(p, _size(p)) for p in sorted(Path(directory).glob("predictions-*" + DONE_SUFFIX))]
        excess = sum(size for _, size in segments) - max_total_bytes
        for path, size in segments:
            if excess <= 0:
                break
            excess -= size
            with claimed(path) as fd:
                if fd is not None:  # else being shipped or evicted by another worker: it leaves anyway
                    path.unlink()
                    evicted, freed = evicted + 1, freed + size
    except OSError as error:
        log.warning("prediction log retention failed", extra={"errno": error_cause(error)})
    return evicted, freed


def fitting_lines(lines: list[bytes], room: int) -> int:
    """How many of `lines`, written in order, fit entirely in `room` bytes."""
    kept = 0
    for line in lines:
        room -= len(line)
        if room < 0:
            break
        kept += 1
    return kept
