"""The table of model families `TrainConfig.family` names, and loading a checkpoint whatever its family (no Dagster)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from mlops_assets.training.family import ModelFamily, read_checkpoint
from mlops_assets.training.fit_loop import FitSettings, TrainResult
from mlops_assets.training.logistic import LogisticFamily
from mlops_assets.training.mlp import MlpFamily
from mlops_assets.training.preprocessing import Preprocessing

# A user's own family is one more entry here (see README, "Bring your own data and model").
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (MlpFamily(), LogisticFamily())}


def family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read back: the family that made it, the model and its preprocessing."""

    family: ModelFamily
    model: Any
    prep: Preprocessing


def load_checkpoint(data: bytes) -> Loaded:
    payload = read_checkpoint(data)
    owner = family(payload["family"])
    model, prep = owner.load(payload)
    return Loaded(owner, model, prep)


def train(
    name: str,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame,
    *,
    hidden: tuple[int, ...],
    settings: FitSettings,
) -> TrainResult:
    """Seeded training from scratch; keeps the weights of the epoch with the best validation AUC."""
    torch.manual_seed(settings.seed)
    prep = Preprocessing.fit(train_frame)
    owner = family(name)
    return owner.fit(owner.build(prep, hidden), prep, train_frame, validation_frame, settings)
