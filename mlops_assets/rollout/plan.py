"""The ladder a challenger climbs and the one rule that moves it. No Dagster here.

A step holds until its dwell time has passed and its gates have enough evidence; any failed gate rolls
the release back at once; the last step's pass promotes. A step whose dwell time has passed twice over
without the minimum traffic is rolled back too: a canary nobody can judge must not sit in production.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from mlops_assets.rollout.gates import GateResult, failed

HOUR = 3600.0


@dataclass(frozen=True)
class Step:
    name: str
    canary_percent: float  # share of live traffic the canary answers; 0 in shadow
    shadow: bool  # the champion answers, a sample is mirrored to the canary off the response path
    dwell_seconds: float


# Common practice: an hour in shadow and at 5%, then 4 h at 20% and 12 h at 50% before all traffic.
DEFAULT_LADDER = (
    Step("shadow", 0.0, True, HOUR),
    Step("canary 5%", 5.0, False, HOUR),
    Step("canary 20%", 20.0, False, 4 * HOUR),
    Step("canary 50%", 50.0, False, 12 * HOUR),
)


class Phase(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"


class Action(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLL_BACK = "roll_back"


@dataclass(frozen=True)
class Rollout:
    version: str  # the canary
    champion: str  # the version it would replace
    step: int
    step_started_at: float  # epoch seconds
    phase: Phase = Phase.RUNNING
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.ROLLED_BACK, Phase.PROMOTED)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    rollout: Rollout  # the state after the action


def decide(rollout: Rollout, ladder: tuple[Step, ...], gates: list[GateResult], now: float) -> Decision:
    """What the controller does at `now` with this step's gate results."""
    if rollout.finished or rollout.phase == Phase.PAUSED:
        return Decision(Action.HOLD, f"rollout is {rollout.phase}", rollout)
    step, elapsed = ladder[rollout.step], now - rollout.step_started_at
    bad = failed(gates)
    if bad:
        reason = f"{step.name}: " + "; ".join(f"{r.gate} failed - {r.detail}" for r in bad)
        return Decision(Action.ROLL_BACK, reason, replace(rollout, phase=Phase.ROLLED_BACK, reason=reason))
    waiting = [r for r in gates if r.passed is None]
    if waiting and elapsed >= 2 * step.dwell_seconds:
        reason = f"{step.name}: starved after {elapsed:.0f} s - " + "; ".join(r.detail for r in waiting)
        return Decision(Action.ROLL_BACK, reason, replace(rollout, phase=Phase.ROLLED_BACK, reason=reason))
    if waiting or elapsed < step.dwell_seconds:
        detail = "; ".join(r.detail for r in waiting) or f"dwell {elapsed:.0f} of {step.dwell_seconds:.0f} s"
        return Decision(Action.HOLD, f"{step.name}: {detail}", rollout)
    passed = ", ".join(r.gate for r in gates)
    if rollout.step + 1 == len(ladder):
        reason = f"{step.name}: {passed} passed; v{rollout.version} takes all traffic"
        return Decision(Action.PROMOTE, reason, replace(rollout, phase=Phase.PROMOTED, reason=reason))
    following = ladder[rollout.step + 1]
    reason = f"{step.name}: {passed} passed; on to {following.name}"
    return Decision(Action.ADVANCE, reason, replace(rollout, step=rollout.step + 1, step_started_at=now, reason=reason))
