"""int8 post-training quantization of the network part of a model with onnxruntime.quantization (no Dagster here).

Only the network (`numeric`, `categorical` in; `probability` out) is quantized; the string front-end
(LabelEncoder, Concat) is attached afterwards by `onnx_export.with_preprocessing`, so category lookup
never passes through a quantizer and stays exact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def gemm_to_matmul(model):
    """Rewrite every Gemm (Linear) as MatMul + Add, in place.

    onnxruntime 1.32's dynamic quantizer has kernels for MatMul (IntegerOpsRegistry: Conv, MatMul,
    Attention, LSTM, Gather) but not Gemm, which is what torch exports for nn.Linear, so without
    this rewrite quantize_dynamic would leave every dense layer in float32.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ValueError(f"Gemm {node.name} is not a plain Linear layer: {attrs}")
        a, weight, *bias = node.input
        if attrs.get("transB", 0):
            transposed = numpy_helper.to_array(initializers[weight]).T.copy()
            initializers[weight].CopyFrom(numpy_helper.from_array(transposed, weight))
        if not bias:
            nodes.append(helper.make_node("MatMul", [a, weight], list(node.output), name=node.name))
            continue
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [a, weight], [product], name=f"{node.name}_matmul"))
        nodes.append(helper.make_node("Add", [product, bias[0]], list(node.output), name=f"{node.name}_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def quantize_dynamic_int8(network, *, per_channel: bool = False, reduce_range: bool = False):
    """Weights to int8 now, activations to uint8 at run time (DynamicQuantizeMatMul on CPU).

    quant_pre_process runs with skip_optimization=True here: its basic-level optimizer would fuse
    MatMul + Add straight back into Gemm, which the dynamic quantizer skips.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(gemm_to_matmul(_copy(network)), source)
        quant_pre_process(str(source), str(prepared), skip_optimization=True)
        quantize_dynamic(
            prepared,
            quantized,
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(quantized)


class FeedReader:
    """onnxruntime CalibrationDataReader over pre-built network feeds, one batch per get_next()."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self._batches = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_static_int8(
    network,
    calibration: Iterable[dict[str, np.ndarray]],
    *,
    op_types: list[str],
    per_channel: bool = False,
    reduce_range: bool = False,
):
    """QDQ int8 with activation ranges calibrated (MinMax) on `calibration` batches of network feeds.

    uint8 activations and int8 weights, the onnxruntime docstring's choice for x86 CPUs; `op_types`
    limits which operators get QuantizeLinear/DequantizeLinear pairs.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(network, source)
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            prepared,
            quantized,
            FeedReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(quantized)


def _copy(model):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
