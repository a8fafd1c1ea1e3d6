"""The server's CPU seconds and resident memory during a load test, read with psutil from its process tree."""

from __future__ import annotations

import threading
import time

import psutil


def _tree(process: psutil.Process) -> list[psutil.Process]:
    """The server and its worker processes (mlops-serve --workers N forks them)."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class ServerProbe:
    """Samples the RSS of the process tree of `pid` every `interval_s` in a thread; `cpu_seconds()` reads the
    tree's user + system CPU time now, so a caller brackets each phase with two reads."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.rss_samples: list[tuple[float, int]] = []  # (s since the probe started, bytes)
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._sample, name="server-probe", daemon=True)

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in _tree(self.process):
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in _tree(self.process):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.rss_samples.append((time.monotonic() - self._started, self.rss_bytes()))

    def __enter__(self) -> ServerProbe:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
