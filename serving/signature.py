"""A model's tensor signature, read from its ONNX Runtime session.

The signature drives everything the server says about a model (ModelMetadata, ModelConfig) and
everything it checks on a request (names, datatypes, shapes), and two versions of a model are
swappable only when their signatures are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# ONNX Runtime type string -> Open Inference Protocol datatype.
ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Open Inference Protocol datatype -> numpy dtype (object for BYTES: ONNX Runtime wants str items).
DATATYPE_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPE_TO_NUMPY.items() if k != "BYTES"}

# Triton's model_config DataType enum names, for ModelConfig.
DATATYPE_TO_TRITON = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}

# Request datatype -> model datatypes it may be converted to at the edge. FP64 -> FP32 follows
# mlflow's ONNX flavor (clients often send doubles to float models); the others are lossless.
EDGE_CASTS = {
    ("FP64", "FP32"),
    ("FP32", "FP64"),
    ("INT32", "INT64"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: `shape` holds -1 for every dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return DATATYPE_TO_NUMPY[self.datatype]

    @property
    def is_float(self) -> bool:
        return self.datatype in ("FP16", "FP32", "FP64")


class InputPlan:
    """What request decoding needs to know about one input, computed once per signature."""

    __slots__ = ("spec", "name", "datatype", "dtype", "ndim", "static", "is_float")

    def __init__(self, spec: TensorSpec):
        self.spec = spec
        self.name = spec.name
        self.datatype = spec.datatype
        self.dtype = spec.numpy_dtype
        self.ndim = len(spec.shape)
        self.static = tuple((i, d) for i, d in enumerate(spec.shape) if d != -1)
        self.is_float = spec.is_float


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @cached_property
    def batched(self) -> bool:
        """True when every tensor's first dimension is dynamic: rows may be batched together."""
        tensors = self.inputs + self.outputs
        return bool(tensors) and all(len(t.shape) >= 1 and t.shape[0] == -1 for t in tensors)

    @cached_property
    def plans(self) -> dict[str, InputPlan]:
        return {spec.name: InputPlan(spec) for spec in self.inputs}

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def difference(self, other: ModelSignature) -> str | None:
        """A sentence naming the first difference with `other`, or None when they are equal."""
        for kind, mine, theirs in (("input", self.inputs, other.inputs), ("output", self.outputs, other.outputs)):
            mine_by_name = {t.name: t for t in mine}
            theirs_by_name = {t.name: t for t in theirs}
            for name in sorted(mine_by_name.keys() - theirs_by_name.keys()):
                return f"{kind} '{name}' was removed"
            for name in sorted(theirs_by_name.keys() - mine_by_name.keys()):
                return f"{kind} '{name}' was added"
            for name, spec in mine_by_name.items():
                new = theirs_by_name[name]
                if (spec.datatype, spec.shape) != (new.datatype, new.shape):
                    return (
                        f"{kind} '{name}' changed from {spec.datatype}{list(spec.shape)} "
                        f"to {new.datatype}{list(new.shape)}"
                    )
        return None

    def to_dict(self) -> dict:
        def tensors(specs):
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

        return {"inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}


def _dim(value) -> int:
    # ONNX Runtime reports symbolic dims as strings and unknown ones as None.
    return value if isinstance(value, int) and value >= 0 else -1


def signature_from_session(session) -> ModelSignature:
    """Read the signature of an `onnxruntime.InferenceSession`; unsupported types raise ValueError."""

    def specs(args):
        out = []
        for arg in args:
            datatype = ORT_TO_DATATYPE.get(arg.type)
            if datatype is None:
                raise ValueError(f"tensor '{arg.name}' has unsupported type {arg.type}")
            out.append(TensorSpec(arg.name, datatype, tuple(_dim(d) for d in (arg.shape or []))))
        return tuple(out)

    return ModelSignature(inputs=specs(session.get_inputs()), outputs=specs(session.get_outputs()))
