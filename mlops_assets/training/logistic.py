"""A logistic-regression family on the same preprocessing (no Dagster here).

One weight per standardised numeric column and one per category value (an embedding of width 1 is
a one-hot coefficient), so it is the smallest model the features allow: nothing to prune or distil.
"""

from __future__ import annotations

import torch
from torch import nn

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlops_assets.training.family import PRUNED, STUDENT, TorchFamily
from mlops_assets.training.preprocessing import Preprocessing


class LogisticRegression(nn.Module):
    def __init__(self, prep: Preprocessing):
        super().__init__()
        self.register_buffer("mean", torch.tensor(prep.numeric_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(prep.numeric_std, dtype=torch.float32))
        self.numeric_weights = nn.Linear(len(NUMERIC_FEATURES), 1)
        self.category_weights = nn.ModuleList(
            nn.Embedding(len(prep.vocabularies[c]) + 1, 1) for c in CATEGORICAL_FEATURES
        )
        # Coefficients start at zero, as logistic regression's do: random category effects (an
        # embedding's default N(0, 1)) would take many epochs to unlearn.
        for weights in (self.numeric_weights.weight, self.numeric_weights.bias, *self.category_weights.parameters()):
            nn.init.zeros_(weights)

    def logits(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        numeric = torch.where(torch.isnan(numeric), self.mean, numeric)
        total = self.numeric_weights((numeric - self.mean) / self.std)
        for i, weights in enumerate(self.category_weights):
            total = total + weights(categorical[:, i])
        return total

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(numeric, categorical))


class LogisticFamily(TorchFamily):
    name = "logistic"
    unsupported = {
        PRUNED: "logistic regression has no hidden units to remove",
        STUDENT: "logistic regression is already the smallest model on these features: no smaller student",
    }

    def build(self, prep: Preprocessing, hidden: tuple[int, ...]) -> LogisticRegression:
        return LogisticRegression(prep)  # no hidden layers: `hidden` does not apply

    def widths(self, model: LogisticRegression) -> list[int]:
        return []

    def architecture(self, model: LogisticRegression) -> dict:
        return {}

    def from_architecture(self, prep: Preprocessing, architecture: dict) -> LogisticRegression:
        return LogisticRegression(prep)
