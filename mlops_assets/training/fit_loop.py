"""The seeded training loop every torch family shares (no Dagster here).

A network here is a torch module with `logits(numeric, categorical)` and a `forward` returning P(late).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops_assets.features_spec import TARGET
from mlops_assets.training.preprocessing import Preprocessing


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation: the teacher's logits, one per training row, and how much they weigh."""

    teacher_logits: torch.Tensor
    weight: float
    temperature: float


@dataclass
class TrainResult:
    model: nn.Module
    prep: Preprocessing
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def predict(model: nn.Module, prep: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(prep.numeric(frame)), torch.from_numpy(prep.categorical(frame)))
    return out.numpy().reshape(-1)


def logits(model: nn.Module, prep: Preprocessing, frame: pd.DataFrame) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.logits(torch.from_numpy(prep.numeric(frame)), torch.from_numpy(prep.categorical(frame)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fit(
    model: nn.Module,
    prep: Preprocessing,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame,
    settings: FitSettings,
    distillation: Distillation | None = None,
) -> TrainResult:
    """Seeded Adam loop; keeps the weights of the epoch with the best validation AUC.

    With `distillation` the loss is (1 - weight) * BCE(labels) + weight * T^2 * BCE(sigmoid(teacher / T)),
    the T^2 keeping the soft term's gradients on the same scale whatever the temperature (Hinton et al., 2015).
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(settings.seed)
    numeric = torch.from_numpy(prep.numeric(train_frame))
    categorical = torch.from_numpy(prep.categorical(train_frame))
    labels = torch.from_numpy(train_frame[TARGET].to_numpy(np.float32)).unsqueeze(1)
    soft = None
    if distillation is not None:
        temperature = distillation.temperature
        soft = torch.sigmoid(distillation.teacher_logits.reshape(-1, 1) / temperature)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(settings.seed)

    result = TrainResult(model=model, prep=prep)
    best_auc, best_state = -1.0, None
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            optimizer.zero_grad()
            out = model.logits(numeric[idx], categorical[idx])
            loss = loss_fn(out, labels[idx])
            if soft is not None:
                soft_loss = loss_fn(out / temperature, soft[idx]) * temperature**2
                loss = (1 - distillation.weight) * loss + distillation.weight * soft_loss
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scores = predict(model, prep, validation_frame)
        val_auc = float(roc_auc_score(validation_frame[TARGET], scores))
        result.history.append({"epoch": epoch, "train_loss": total / len(order), "val_auc": val_auc})
        if val_auc > best_auc:
            best_auc, result.best_epoch = val_auc, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
