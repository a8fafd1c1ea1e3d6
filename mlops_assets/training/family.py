"""What the pipeline needs from a model family, and the torch base the shipped families share (no Dagster here).

A family builds a model on the fitted preprocessing, fits it, exports its network to ONNX (the
raw-column front-end is attached by `onnx_export.with_preprocessing`) and saves it. Pruning and
distillation are optional: a family names in `unsupported` the candidates it cannot make and why,
and compression skips those candidates with that reason instead of failing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops_assets.training import fit_loop, onnx_export
from mlops_assets.training.fit_loop import Distillation, FitSettings, TrainResult
from mlops_assets.training.preprocessing import Preprocessing

PRUNED, STUDENT = "pruned", "student"  # the optional candidates a family may leave out


class ModelFamily(Protocol):
    name: str
    unsupported: Mapping[str, str]
    """Candidate kind (PRUNED, STUDENT) -> why this family cannot make it; empty when it makes both."""

    def build(self, prep: Preprocessing, hidden: tuple[int, ...]) -> Any:
        """A fresh, untrained model; `hidden` are hidden-layer widths for families that have them."""

    def fit(
        self,
        model: Any,
        prep: Preprocessing,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        settings: FitSettings,
        distillation: Distillation | None = None,
    ) -> TrainResult:
        """Fit `model` in place, keeping the weights of its best validation epoch; `distillation` for a student."""

    def predict(self, model: Any, prep: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
        """P(late) per row of `frame`, as the exported ONNX file must reproduce it."""

    def logits(self, model: Any, prep: Preprocessing, frame: pd.DataFrame) -> torch.Tensor:
        """Scores before the sigmoid: a teacher's targets when a student is distilled."""

    def export_network(self, model: Any):
        """The model without the raw-column front-end, as an onnx.ModelProto (`numeric`, `categorical` in)."""

    def widths(self, model: Any) -> list[int]:
        """Hidden-layer widths, [] for a model without hidden layers."""

    def parameter_count(self, model: Any) -> int: ...

    def save(self, model: Any, prep: Preprocessing) -> bytes: ...

    def load(self, payload: dict) -> tuple[Any, Preprocessing]: ...

    def prune(self, model: Any, prep: Preprocessing, keep_fraction: float) -> Any:
        """A smaller model keeping `keep_fraction` of its prunable units; called only when PRUNED is supported."""


class TorchFamily:
    """Fit, export and checkpoints for families whose model is a torch module with `logits(numeric, categorical)`."""

    name: ClassVar[str]
    unsupported: ClassVar[Mapping[str, str]] = {}

    def architecture(self, model: nn.Module) -> dict:
        """What `from_architecture` needs to rebuild `model` before loading its weights."""
        raise NotImplementedError

    def from_architecture(self, prep: Preprocessing, architecture: dict) -> nn.Module:
        raise NotImplementedError

    def fit(self, model, prep, train, validation, settings, distillation=None) -> TrainResult:
        return fit_loop.fit(model, prep, train, validation, settings, distillation)

    def predict(self, model, prep, frame) -> np.ndarray:
        return fit_loop.predict(model, prep, frame)

    def logits(self, model, prep, frame) -> torch.Tensor:
        return fit_loop.logits(model, prep, frame)

    def export_network(self, model):
        return onnx_export.export_network(model)

    def parameter_count(self, model) -> int:
        return fit_loop.parameter_count(model)

    def save(self, model, prep) -> bytes:
        buffer = io.BytesIO()
        payload = {"family": self.name, "architecture": self.architecture(model), "state_dict": model.state_dict()}
        torch.save({**payload, "prep": prep.__dict__}, buffer)
        return buffer.getvalue()

    def load(self, payload: dict) -> tuple[nn.Module, Preprocessing]:
        prep = Preprocessing(**payload["prep"])
        model = self.from_architecture(prep, payload["architecture"])
        model.load_state_dict(payload["state_dict"])
        model.eval()
        return model, prep

    def prune(self, model, prep, keep_fraction):
        raise NotImplementedError(self.unsupported.get(PRUNED, f"{self.name} does not prune"))


def read_checkpoint(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)
