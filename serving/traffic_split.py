"""The traffic split between champion and canary, as the registry holds it. No Dagster, no MLflow here.

The rollout controller writes one tag on the registered model; every replica reads it on its next
registry poll, so they all route alike and the server keeps no state of its own. A request goes to
the canary when the hash of its routing key (a request parameter, else the request id) falls under the
canary's percentage: the same key lands on the same version on every replica and across restarts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum

TAG = "mlops.traffic_split"  # on the registered model, not on a version


class Mode(StrEnum):
    OFF = "off"  # the champion answers everything
    SHADOW = "shadow"  # the champion answers; a sample also runs on the canary, off the response path
    CANARY = "canary"  # `percent` of routing keys are answered by the canary


@dataclass(frozen=True)
class TrafficSplit:
    mode: Mode = Mode.OFF
    canary_version: str | None = None
    percent: float = 0.0  # canary mode: share of routing keys, 0..100
    shadow_sample: float = 1.0  # shadow mode: share of requests also run on the canary, 0..1

    def __post_init__(self):
        if self.mode != Mode.OFF and not self.canary_version:
            raise ValueError(f"traffic split mode {self.mode.value} needs a canary_version")
        if not 0.0 <= self.percent <= 100.0:
            raise ValueError(f"traffic split percent {self.percent} is outside 0..100")
        if not 0.0 <= self.shadow_sample <= 1.0:
            raise ValueError(f"traffic split shadow_sample {self.shadow_sample} is outside 0..1")

    def dump(self) -> str:
        return json.dumps({**asdict(self), "mode": self.mode.value}, sort_keys=True)

    @classmethod
    def load(cls, text: str | None) -> TrafficSplit:
        """The split a tag holds; no tag means no split. A malformed tag raises ValueError naming the field."""
        if not text:
            return cls()
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{TAG} is not JSON: {error}") from error
        if not isinstance(fields, dict):
            raise ValueError(f"{TAG} must be a JSON object, got {type(fields).__name__}")
        unknown = set(fields) - {"mode", "canary_version", "percent", "shadow_sample"}
        if unknown:
            raise ValueError(f"{TAG} has unknown fields {sorted(unknown)}")
        try:
            mode = Mode(fields.get("mode", "off"))
        except ValueError as error:
            raise ValueError(f"{TAG}.mode must be one of {[m.value for m in Mode]}") from error
        version = fields.get("canary_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
            raise ValueError(f"{TAG}.canary_version must be a version number or string")
        for name in ("percent", "shadow_sample"):
            if name in fields and (isinstance(fields[name], bool) or not isinstance(fields[name], int | float)):
                raise ValueError(f"{TAG}.{name} must be a number")
        return cls(
            mode=mode,
            canary_version=None if version is None else str(version),
            percent=float(fields.get("percent", 0.0)),
            shadow_sample=float(fields.get("shadow_sample", 1.0)),
        )


def bucket(routing_key: str) -> float:
    """Where a key falls in [0, 100): stable across processes and machines (not Python's salted hash)."""
    digest = hashlib.sha256(routing_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def answered_by_canary(split: TrafficSplit, routing_key: str) -> bool:
    return split.mode == Mode.CANARY and bucket(routing_key) < split.percent


def shadowed(split: TrafficSplit, routing_key: str) -> bool:
    """Whether a request is also run on the canary (shadow mode); the sample is by key, like the split."""
    return split.mode == Mode.SHADOW and bucket(routing_key) < split.shadow_sample * 100.0
