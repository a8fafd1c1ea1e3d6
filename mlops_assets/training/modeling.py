"""The flight-delay network, its training loop and its ONNX export (no Dagster here).

Preprocessing lives inside the model (NaN imputation, standardisation, category lookup), so the ONNX
graph takes raw feature columns and serving can never preprocess differently from training.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET

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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class TrainResult:
    model: FlightDelayNet
    prep: Preprocessing
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def predict(model: FlightDelayNet, prep: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(prep.numeric(frame)), torch.from_numpy(prep.categorical(frame)))
    return out.numpy().reshape(-1)


def logits(model: FlightDelayNet, prep: Preprocessing, frame: pd.DataFrame) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.logits(torch.from_numpy(prep.numeric(frame)), torch.from_numpy(prep.categorical(frame)))


def fit(
    model: FlightDelayNet,
    prep: Preprocessing,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    soft_targets: torch.Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> TrainResult:
    """Seeded Adam loop; keeps the weights of the epoch with the best validation AUC.

    With `soft_targets` (teacher logits, one per training row) the loss is knowledge distillation:
    (1 - distill_weight) * BCE(labels) + distill_weight * T^2 * BCE(sigmoid(teacher / T)), the T^2
    keeping the soft term's gradients on the same scale whatever the temperature (Hinton et al., 2015).
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    numeric = torch.from_numpy(prep.numeric(train_frame))
    categorical = torch.from_numpy(prep.categorical(train_frame))
    labels = torch.from_numpy(train_frame[TARGET].to_numpy(np.float32)).unsqueeze(1)
    soft = None if soft_targets is None else torch.sigmoid(soft_targets.reshape(-1, 1) / temperature)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)

    result = TrainResult(model=model, prep=prep)
    best_auc, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            out = model.logits(numeric[idx], categorical[idx])
            loss = loss_fn(out, labels[idx])
            if soft is not None:
                soft_loss = loss_fn(out / temperature, soft[idx]) * temperature**2
                loss = (1 - distill_weight) * loss + distill_weight * soft_loss
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


def train(
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame,
    *,
    net: NetConfig,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> TrainResult:
    """Seeded training from scratch; keeps the weights of the epoch with the best validation AUC."""
    torch.manual_seed(seed)
    prep = Preprocessing.fit(train_frame)
    model = FlightDelayNet(prep, net)
    return fit(
        model,
        prep,
        train_frame,
        validation_frame,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )


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


def export_network(model: FlightDelayNet):
    """The network alone as an onnx.ModelProto: `numeric` [batch, 7] float, `categorical` [batch, 3] int64 in."""
    model.eval()
    sample = (torch.zeros(2, len(NUMERIC_FEATURES)), torch.zeros(2, len(CATEGORICAL_FEATURES), dtype=torch.long))
    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot register
    try:
        program = torch.onnx.export(
            model,
            sample,
            input_names=["numeric", "categorical"],
            output_names=["probability"],
            dynamic_shapes={"numeric": {0: batch}, "categorical": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    finally:
        exporter_log.setLevel(level)
    return program.model_proto


def with_preprocessing(network, prep: Preprocessing) -> bytes:
    """ONNX bytes with one [batch, 1] input per raw feature column and output `probability`.

    A small ai.onnx.ml graph in front of `network` (an onnx.ModelProto taking `numeric` and
    `categorical`, float or quantized) turns category strings into indices (unseen ->
    UNKNOWN_CATEGORY) and stacks the numeric columns.
    """
    import onnx
    from onnx import TensorProto, compose, helper

    opsets = {o.domain or "ai.onnx": o.version for o in network.opset_import}
    # merge_models needs one version per domain; onnxruntime's optimizer may already have declared ai.onnx.ml.
    ml_opset = opsets.get("ai.onnx.ml", 3)
    nodes, inputs = [], []
    for column in NUMERIC_FEATURES:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.FLOAT, ["batch", 1]))
    nodes.append(helper.make_node("Concat", list(NUMERIC_FEATURES), ["numeric"], axis=1))
    for column in CATEGORICAL_FEATURES:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, ["batch", 1]))
        vocab = prep.vocabularies[column]
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [column],
                [f"{column}_index"],
                domain="ai.onnx.ml",
                keys_strings=vocab,
                values_int64s=list(range(1, len(vocab) + 1)),
                default_int64=UNKNOWN_CATEGORY,
            )
        )
    nodes.append(helper.make_node("Concat", [f"{c}_index" for c in CATEGORICAL_FEATURES], ["categorical"], axis=1))
    pre_graph = helper.make_graph(
        nodes,
        "preprocessing",
        inputs,
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", len(NUMERIC_FEATURES)]),
            helper.make_tensor_value_info("categorical", TensorProto.INT64, ["batch", len(CATEGORICAL_FEATURES)]),
        ],
    )
    pre = helper.make_model(
        pre_graph,
        opset_imports=[helper.make_opsetid("", opsets["ai.onnx"]), helper.make_opsetid("ai.onnx.ml", ml_opset)],
        ir_version=network.ir_version,
    )
    network = _without_io_value_info(network)
    network = compose.add_prefix(network, prefix="net_", rename_inputs=False, rename_outputs=False)
    merged = compose.merge_models(
        pre, network, io_map=[("numeric", "numeric"), ("categorical", "categorical")], prefix1="", prefix2=""
    )
    onnx.checker.check_model(merged)
    if [o.name for o in merged.graph.output] != ["probability"]:
        raise ValueError(f"merged graph outputs {[o.name for o in merged.graph.output]}, expected ['probability']")
    buffer = io.BytesIO()
    onnx.save_model(merged, buffer)
    return buffer.getvalue()


def _without_io_value_info(network):
    """A copy without value_info entries for graph inputs and outputs.

    onnxruntime's quant_pre_process records shapes for every tensor, `probability` included, and
    onnx.compose.add_prefix renames anything listed in value_info even with rename_outputs=False,
    which would rename the model's output.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(network)
    io_names = {v.name for v in (*copy.graph.input, *copy.graph.output)}
    kept = [v for v in copy.graph.value_info if v.name not in io_names]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(kept)
    return copy


def export_onnx(model: FlightDelayNet, prep: Preprocessing) -> bytes:
    """The network exported by torch with a dynamic batch, behind the raw-column front-end."""
    return with_preprocessing(export_network(model), prep)


def onnx_feeds(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw feature columns as the exported graph takes them: [rows, 1] float32 or string."""
    feeds = {c: frame[c].to_numpy(np.float32).reshape(-1, 1) for c in NUMERIC_FEATURES}
    feeds.update({c: frame[c].astype(str).to_numpy(object).reshape(-1, 1) for c in CATEGORICAL_FEATURES})
    return feeds


def network_feeds(prep: Preprocessing, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The network's own inputs (what the front-end produces), for calibrating the network alone."""
    return {"numeric": prep.numeric(frame), "categorical": prep.categorical(frame)}


def save_model(model: FlightDelayNet, prep: Preprocessing) -> bytes:
    buffer = io.BytesIO()
    config = {**model.config.__dict__, "hidden": list(model.config.hidden)}
    torch.save({"state_dict": model.state_dict(), "prep": prep.__dict__, "net": config}, buffer)
    return buffer.getvalue()


def save_checkpoint(result: TrainResult, net: NetConfig) -> bytes:
    return save_model(result.model, result.prep)


def load_checkpoint(data: bytes) -> tuple[FlightDelayNet, Preprocessing]:
    payload = torch.load(io.BytesIO(data), weights_only=True)
    prep = Preprocessing(**payload["prep"])
    net = NetConfig(**{**payload["net"], "hidden": tuple(payload["net"]["hidden"])})
    model = FlightDelayNet(prep, net)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, prep
