"""Evidently's stat tests as this project uses them: which side of its threshold each method drifts on,
and one column's score computed exactly as Evidently's ValueDrift computes it.

Evidently is imported inside the functions that need it (about 4 s), never when definitions load.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np
import pandas as pd

from mlops_assets.features_spec import NUMERIC_FEATURES

# Evidently 0.7 reports a score per column but no drift flag. Each stat test decides on its own
# side of its threshold: p-value tests drift when the p-value is small, distance tests when the
# distance is large, and a few use <= or > rather than < or >=. Copied from each test's
# implementation in evidently/legacy/calculations/stattests/*.py (0.7.23).
P_VALUE, DISTANCE = "p_value", "distance"
_P_VALUE_BELOW = (
    "anderson",
    "chisquare",
    "es",
    "fisher_exact",
    "g_test",
    "mannw",
    "empirical_mmd",
    "t_test",
    "TVD",
    "z",
)
_DISTANCE_AT_OR_ABOVE = ("wasserstein", "jensenshannon", "kl_div", "psi", "hellinger")
_RULES: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "ks": (P_VALUE, operator.le),
    "cramer_von_mises": (P_VALUE, operator.le),
    **{name: (P_VALUE, operator.lt) for name in _P_VALUE_BELOW},
    **{name: (DISTANCE, operator.ge) for name in _DISTANCE_AT_OR_ABOVE},
    "ed": (DISTANCE, operator.gt),
}


def _rule(method: str) -> tuple[str, Callable[[float, float], bool]]:
    """The rule for a method, by short name ('ks') or by the display name Evidently reports when it picked it."""
    if method in _RULES:
        return _RULES[method]
    from evidently.legacy.calculations import stattests

    for test in vars(stattests).values():
        if isinstance(test, stattests.StatTest) and method == test.display_name and test.name in _RULES:
            return _RULES[test.name]
    raise ValueError(f"no drift rule for Evidently method {method!r}; known: {sorted(_RULES)}")


def method_kind(method: str) -> str:
    return _rule(method)[0]


def is_drifted(method: str, score: float, threshold: float) -> bool:
    """p-value methods drift when the p-value falls below the threshold, distance methods at or above it."""
    return bool(_rule(method)[1](score, threshold))


def finite(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def column_score(method: str, column: str, reference: pd.Series, current: pd.Series) -> float:
    """The score Evidently's ValueDrift gives `current` against `reference` (same stat test, same NaN handling)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if column in NUMERIC_FEATURES else ColumnType.Categorical
    if kind == ColumnType.Categorical:
        reference, current = reference.astype(str), current.astype(str)
    reference = reference.replace([-np.inf, np.inf], np.nan).dropna()
    current = current.replace([-np.inf, np.inf], np.nan).dropna()
    if reference.empty or current.empty:
        return float("nan")
    test = get_stattest(reference, current, kind, method)
    return finite(test(reference, current, kind, None).drift_score)


def sample_rows(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most `rows` rows of `frame`, drawn with `rng`, in their original order."""
    return frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))] if len(frame) > rows else frame
