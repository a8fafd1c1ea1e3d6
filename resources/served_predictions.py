"""The predictions mlops-serve answered, read back from the artifact store its shippers upload to.

Every server ships each closed prediction-log segment to `<store>/prediction_log/yyyy/mm/dd/`
(serving/log_shipping.py; one event day a segment), so a month is one prefix listing, and the
pipeline never reads a path on a server's disk. Shipped segments are immutable; a torn or corrupt
record is skipped and counted (serving/log_records.py), never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from resources.artifact_store import ArtifactStore
from serving.log_records import SHIPPED_PREFIX, LoggedRequest, decode_segment, month_prefix


@dataclass(frozen=True)
class ServedLog:
    records: tuple[LoggedRequest, ...]
    segments: int
    corrupt: int  # records skipped as torn or unreadable


class ServedPredictions(dg.ConfigurableResource):
    """Served traffic by month, and whether batch data may stand in for a month that has none."""

    store: ArtifactStore
    batch_fallback: bool = False
    """A month with no served traffic is judged on its batch features (with a failing warning check) when
    True, and not at all when False. On for the embedded demo, off in production, where it would hide
    that traffic no longer reaches the monitors."""

    def segments(self, month: str) -> list[str]:
        """Keys of the shipped segments of `month` ('YYYY-MM'), in name order (by day, then by opening time)."""
        year, number = (int(part) for part in month.split("-"))
        return [key for key in self.store.list_keys(month_prefix(year, number)) if key.endswith(".jsonl")]

    def read_month(self, month: str) -> ServedLog:
        """Every served record whose segment belongs to `month` ('YYYY-MM')."""
        keys = self.segments(month)
        records, corrupt = [], 0
        for key in keys:
            decoded = decode_segment(self.store.read_bytes(key))
            records.extend(decoded.records)
            corrupt += decoded.corrupt
        return ServedLog(records=tuple(records), segments=len(keys), corrupt=corrupt)

    def location(self) -> str:
        return self.store.uri(SHIPPED_PREFIX)
