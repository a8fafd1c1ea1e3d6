"""A multivariate drift check that univariate tests cannot replace: a classifier trained to tell
reference rows from current rows. It catches relabelled categories and shifts that show only in
combinations. No Dagster here; scikit-learn is imported inside the function (it is slow to import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES
from mlops_assets.monitoring.stattests import sample_rows

# Weather is left out by default: it is a property of the hour it was measured in, so a classifier
# that sees it learns the calendar and tells any month from any other (2013: AUC 0.76-0.80 for a
# month inside its own window). The per-column tests with calibrated bands watch the weather.
SCHEDULE_COLUMNS = ("hour", "day_of_week", "distance", "carrier", "origin", "dest")
MAX_CATEGORIES = 254  # HistGradientBoosting's limit is 255 bins; one is left for "other"
IMPORTANCE_ROWS = 4_000  # held-out rows the classifier's permutation importance is measured on
MIN_CLASSIFIER_ROWS = 50  # each side; fewer cannot be split into a training and a held-out part


@dataclass(frozen=True)
class DomainClassifier:
    """A seeded gradient-boosted classifier trained to tell reference rows from current rows."""

    columns: tuple[str, ...] = SCHEDULE_COLUMNS
    threshold: float = 0.65
    rows: int = 20_000
    max_depth: int = 3
    max_iter: int = 100
    test_share: float = 0.3
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.columns) - set(FEATURES))
        if unknown or not self.columns:
            raise ValueError(f"classifier columns {list(self.columns)} must be feature columns: {list(FEATURES)}")
        if not (0.5 <= self.threshold <= 1 and 0 < self.test_share < 1 and self.rows >= 100):
            raise ValueError("classifier needs 0.5 <= threshold <= 1, 0 < test_share < 1 and rows >= 100")


@dataclass(frozen=True)
class ClassifierResult:
    auc: float  # held-out ROC AUC of telling current rows from reference rows; 0.5: indistinguishable
    threshold: float
    drifted: bool
    importances: dict[str, float]  # held-out AUC lost when the column is permuted, largest first
    rows: tuple[int, int]  # (reference, current) rows the classifier saw
    columns: tuple[str, ...]

    def top(self, count: int = 3, min_importance: float = 0.005) -> list[str]:
        return [c for c, v in list(self.importances.items())[:count] if v >= min_importance]


def domain_classifier(reference: pd.DataFrame, current: pd.DataFrame, settings: DomainClassifier) -> ClassifierResult:
    """Held-out ROC AUC of a classifier telling current rows from reference rows, and what separates them."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(settings.seed)
    columns = list(settings.columns)
    reference = sample_rows(reference[columns], settings.rows, rng)
    current = sample_rows(current[columns], settings.rows, rng)
    frame = pd.concat([reference, current], ignore_index=True)
    for column in columns:
        if column in CATEGORICAL_FEATURES:
            values = frame[column].astype(str)
            keep = values.value_counts().index[:MAX_CATEGORIES]
            frame[column] = pd.Categorical(values.where(values.isin(keep), "(other)"))
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    labels = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    seed = int(settings.seed)
    x_train, x_test, y_train, y_test = train_test_split(
        frame, labels, test_size=settings.test_share, stratify=labels, random_state=seed
    )
    model = HistGradientBoostingClassifier(
        max_depth=settings.max_depth,
        max_iter=settings.max_iter,
        categorical_features="from_dtype",
        class_weight="balanced",  # a short current month must not look like "always reference"
        early_stopping=False,
        random_state=seed,
    ).fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    # Bounded: permuting 12k held-out rows three times per column would cost more than the fit.
    sample = min(1.0, IMPORTANCE_ROWS / len(x_test))
    permuted = permutation_importance(
        model, x_test, y_test, scoring="roc_auc", n_repeats=2, max_samples=sample, random_state=seed
    )
    importances = dict(
        sorted(
            ((c, float(v)) for c, v in zip(columns, permuted.importances_mean, strict=True)),
            key=lambda item: -item[1],
        )
    )
    return ClassifierResult(
        auc=auc,
        threshold=settings.threshold,
        drifted=auc >= settings.threshold,
        importances=importances,
        rows=(len(reference), len(current)),
        columns=tuple(columns),
    )
