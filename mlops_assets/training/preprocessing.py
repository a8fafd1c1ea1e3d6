"""What every model family learns from the training window before it learns anything else (no Dagster here).

The statistics travel inside the exported graph (NaN imputation, standardisation, category lookup),
so serving can never preprocess differently from training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES

UNKNOWN_CATEGORY = 0  # index every category unseen in training maps to


@dataclass
class Preprocessing:
    """Statistics learnt from the training window; they travel inside the exported graph."""

    numeric_mean: list[float]
    numeric_std: list[float]
    vocabularies: dict[str, list[str]]

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Preprocessing:
        numeric = frame[list(NUMERIC_FEATURES)].astype("float64")
        std = numeric.std().fillna(1.0).replace(0.0, 1.0)
        return cls(
            numeric_mean=numeric.mean().fillna(0.0).tolist(),
            numeric_std=std.tolist(),
            vocabularies={c: sorted(frame[c].dropna().astype(str).unique()) for c in CATEGORICAL_FEATURES},
        )

    def numeric(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float32)

    def categorical(self, frame: pd.DataFrame) -> np.ndarray:
        """Category strings to indices, 1-based; unseen or missing values become UNKNOWN_CATEGORY."""
        columns = []
        for column in CATEGORICAL_FEATURES:
            lookup = {value: i + 1 for i, value in enumerate(self.vocabularies[column])}
            columns.append(frame[column].astype(str).map(lookup).fillna(UNKNOWN_CATEGORY).to_numpy(np.int64))
        return np.stack(columns, axis=1)

    def network_feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The network's own inputs (what the exported front-end produces), for calibrating the network alone."""
        return {"numeric": self.numeric(frame), "categorical": self.categorical(frame)}
