"""The bound on request data queued for batching in one worker, shared by every model version's batcher."""

from __future__ import annotations

from serving.errors import QueueFull


class QueueBudget:
    """Bytes of request data queued across every batcher of a server, bounded by `limit` (0: none)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.used = 0

    def take(self, nbytes: int) -> None:
        if self.limit and self.used + nbytes > self.limit:
            raise QueueFull(f"queued inference data would exceed the server's limit of {self.limit} bytes")
        self.used += nbytes

    def give(self, nbytes: int) -> None:
        self.used -= nbytes
