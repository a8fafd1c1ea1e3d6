"""The flight-delay MLP family: embeddings and standardised numeric columns into dense layers (no Dagster here).

It makes every candidate: pruning removes whole hidden units, distillation trains a narrower MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlops_assets.training.family import TorchFamily
from mlops_assets.training.preprocessing import Preprocessing


@dataclass
class NetConfig:
    hidden: tuple[int, ...] = (256, 256, 128)
    embedding_dim: int = 8
    dropout: float = 0.1


class FlightDelayNet(nn.Module):
    """MLP over standardised numeric columns and embedded categories; returns P(late)."""

    def __init__(self, prep: Preprocessing, config: NetConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(prep.numeric_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(prep.numeric_std, dtype=torch.float32))
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(prep.vocabularies[c]) + 1, config.embedding_dim) for c in CATEGORICAL_FEATURES
        )
        width = len(NUMERIC_FEATURES) + config.embedding_dim * len(CATEGORICAL_FEATURES)
        layers: list[nn.Module] = []
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def logits(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        numeric = torch.where(torch.isnan(numeric), self.mean, numeric)
        parts = [(numeric - self.mean) / self.std]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(numeric, categorical))

    def linears(self) -> list[nn.Linear]:
        """The dense layers in order: one per hidden layer, then the output layer."""
        return [m for m in self.mlp if isinstance(m, nn.Linear)]


def unit_importance(model: FlightDelayNet) -> list[torch.Tensor]:
    """Magnitude of every hidden unit: L2 norm of its incoming weights and bias times L2 norm of its outgoing weights.

    A unit whose input or output weights are near zero contributes little to the next layer
    whatever its activation, so the product ranks units by the signal they can pass on.
    """
    layers = model.linears()
    scores = []
    for layer, following in zip(layers[:-1], layers[1:], strict=True):
        incoming = torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1).norm(dim=1)
        outgoing = following.weight.norm(dim=0)
        scores.append((incoming * outgoing).detach())
    return scores


def prune_hidden_units(model: FlightDelayNet, prep: Preprocessing, keep_fraction: float) -> FlightDelayNet:
    """A new, narrower network keeping the `keep_fraction` largest-magnitude units of every hidden layer.

    Units are removed, not masked: each Linear loses rows and the next one loses the matching
    columns, so the exported ONNX has smaller weight matrices and does less arithmetic.
    """
    old = model.linears()
    keep = []
    for score in unit_importance(model):
        count = max(1, round(len(score) * keep_fraction))
        keep.append(torch.sort(torch.topk(score, count).indices).values)
    config = NetConfig(
        hidden=tuple(len(k) for k in keep), embedding_dim=model.config.embedding_dim, dropout=model.config.dropout
    )
    pruned = FlightDelayNet(prep, config)
    pruned.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("mlp.")}, strict=False
    )  # buffers and embeddings carry over unchanged
    rows = [*keep, None]  # the output layer keeps its single unit
    columns = [None, *keep]  # the first layer keeps every input feature
    with torch.no_grad():
        for source, target, row, column in zip(old, pruned.linears(), rows, columns, strict=True):
            weight, bias = source.weight, source.bias
            if row is not None:
                weight, bias = weight[row], bias[row]
            if column is not None:
                weight = weight[:, column]
            target.weight.copy_(weight)
            target.bias.copy_(bias)
    pruned.eval()
    return pruned


class MlpFamily(TorchFamily):
    name = "mlp"

    def build(self, prep: Preprocessing, hidden: tuple[int, ...]) -> FlightDelayNet:
        return FlightDelayNet(prep, NetConfig(hidden=tuple(hidden)))

    def widths(self, model: FlightDelayNet) -> list[int]:
        return list(model.config.hidden)

    def architecture(self, model: FlightDelayNet) -> dict:
        return {**model.config.__dict__, "hidden": list(model.config.hidden)}

    def from_architecture(self, prep: Preprocessing, architecture: dict) -> FlightDelayNet:
        return FlightDelayNet(prep, NetConfig(**{**architecture, "hidden": tuple(architecture["hidden"])}))

    def prune(self, model: FlightDelayNet, prep: Preprocessing, keep_fraction: float) -> FlightDelayNet:
        return prune_hidden_units(model, prep, keep_fraction)
