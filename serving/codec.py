"""Protobuf tensors to numpy arrays and back, validated against the model's signature.

Every violation raises `InvalidInput` with a message that names the input, so the client learns
which tensor to fix. This is the hot path of every request: it avoids copies (raw contents are
viewed with `np.frombuffer`) and per-element Python work except for BYTES tensors.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from serving.errors import InvalidInput
from serving.signature import DATATYPE_TO_NUMPY, EDGE_CASTS, ModelSignature, TensorSpec

NAN_POLICIES = ("reject", "allow_nan", "allow")

# Typed `contents` field that carries each datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")


def _deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Parse `count` 4-byte little-endian length-prefixed UTF-8 elements (tritonclient's layout)."""
    items = []
    offset = 0
    size = len(raw)
    unpack = _LEN.unpack_from
    try:
        for _ in range(count):
            (length,) = unpack(raw, offset)
            offset += 4
            end = offset + length
            if end > size:
                raise InvalidInput(f"input '{name}': BYTES element overruns the raw content")
            items.append(raw[offset:end].decode("utf-8"))
            offset = end
    except struct.error:
        raise InvalidInput(
            f"input '{name}': raw content holds fewer than the {count} BYTES elements its shape needs"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
    if offset != size:
        raise InvalidInput(
            f"input '{name}': raw content holds more than the {count} BYTES elements its shape needs"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], batched: bool, max_batch_size: int) -> None:
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}': expected {len(spec.shape)} dimensions {list(spec.shape)}, got {list(shape)}"
        )
    for got, want in zip(shape, spec.shape):
        if got < 0 or (want != -1 and got != want):
            raise InvalidInput(f"input '{spec.name}': expected shape {list(spec.shape)}, got {list(shape)}")
    if batched and max_batch_size and shape[0] > max_batch_size:
        raise InvalidInput(
            f"input '{spec.name}': batch size {shape[0]} exceeds the maximum batch size {max_batch_size}"
        )


def _check_finite(spec: TensorSpec, array: np.ndarray, nan_policy: str) -> None:
    if nan_policy == "allow" or array.size == 0:
        return
    if nan_policy == "reject":
        # One pass for the common case; `isfinite` is false for NaN and +-Inf.
        if not np.isfinite(array).all():
            raise InvalidInput(f"input '{spec.name}' contains NaN or Inf values")
    elif np.isinf(array).any():
        raise InvalidInput(f"input '{spec.name}' contains Inf values")


def decode_inputs(
    request, signature: ModelSignature, max_batch_size: int, nan_policy: str = "reject"
) -> tuple[dict[str, np.ndarray], int]:
    """Arrays for the model's inputs, keyed by name, and the request's batch size (rows).

    For a model without a batch dimension the batch size is 1.
    """
    inputs = request.inputs
    raws = request.raw_input_contents
    if raws and len(raws) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raws)} entries for {len(inputs)} inputs: "
            "when raw contents are used every input must have one"
        )
    batched = signature.batched
    arrays: dict[str, np.ndarray] = {}
    batch = None
    for index, tensor in enumerate(inputs):
        name = tensor.name
        spec = signature.input(name)
        if spec is None:
            expected = ", ".join(t.name for t in signature.inputs)
            raise InvalidInput(f"unexpected input '{name}': the model's inputs are {expected}")
        if name in arrays:
            raise InvalidInput(f"input '{name}' appears more than once")
        datatype = tensor.datatype
        if datatype != spec.datatype and (datatype, spec.datatype) not in EDGE_CASTS:
            raise InvalidInput(f"input '{name}': expected datatype {spec.datatype}, got {datatype or 'none'}")
        shape = tuple(tensor.shape)
        _check_shape(spec, shape, batched, max_batch_size)
        count = math.prod(shape)
        if raws:
            raw = raws[index]
            if datatype == "BYTES":
                array = _deserialize_bytes(name, raw, count)
            else:
                dtype = DATATYPE_TO_NUMPY.get(datatype)
                if dtype is None:
                    raise InvalidInput(f"input '{name}': unsupported datatype {datatype}")
                expected_bytes = count * dtype.itemsize
                if len(raw) != expected_bytes:
                    raise InvalidInput(
                        f"input '{name}': raw content has {len(raw)} bytes, "
                        f"shape {list(shape)} of {datatype} needs {expected_bytes}"
                    )
                array = np.frombuffer(raw, dtype=dtype)
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidInput(f"input '{name}': datatype {datatype} must be sent as raw_input_contents")
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input '{name}': contents hold {len(values)} values, shape {list(shape)} needs {count}"
                )
            if datatype == "BYTES":
                try:
                    array = np.empty(count, dtype=object)
                    array[:] = [v.decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
            else:
                array = np.array(values, dtype=DATATYPE_TO_NUMPY[datatype])
        array = array.reshape(shape)
        if datatype != spec.datatype:
            array = array.astype(spec.numpy_dtype)
        if spec.is_float:
            _check_finite(spec, array, nan_policy)
        if batched:
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise InvalidInput(
                    f"input '{name}': batch size {shape[0]} differs from the other inputs' {batch}"
                )
        arrays[name] = array
    if len(arrays) != len(signature.inputs):
        missing = ", ".join(t.name for t in signature.inputs if t.name not in arrays)
        raise InvalidInput(f"missing inputs: {missing}")
    return arrays, (batch if batched else 1)


def encode_outputs(response, names, arrays, datatypes) -> None:
    """Append output tensors (metadata in `outputs`, bytes in `raw_output_contents`) to `response`."""
    outputs = response.outputs
    raw = response.raw_output_contents
    for name, array, datatype in zip(names, arrays, datatypes):
        tensor = outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        if datatype == "BYTES":
            raw.append(serialize_bytes(array))
        else:
            raw.append(np.ascontiguousarray(array).tobytes())
