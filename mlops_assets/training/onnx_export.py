"""ONNX export of any network that takes `numeric` and `categorical`, behind the raw-column front-end (no Dagster here).

The network is exported by torch; a small ai.onnx.ml graph in front of it turns category strings
into indices and stacks the numeric columns, so the file takes raw feature columns.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlops_assets.training.preprocessing import UNKNOWN_CATEGORY, Preprocessing


def export_network(model):
    """A torch module alone as an onnx.ModelProto: `numeric` [batch, 7] float, `categorical` [batch, 3] int64 in."""
    import torch

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


def onnx_feeds(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw feature columns as the exported graph takes them: [rows, 1] float32 or string."""
    feeds = {c: frame[c].to_numpy(np.float32).reshape(-1, 1) for c in NUMERIC_FEATURES}
    feeds.update({c: frame[c].astype(str).to_numpy(object).reshape(-1, 1) for c in CATEGORICAL_FEATURES})
    return feeds
