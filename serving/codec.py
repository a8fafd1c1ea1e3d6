"""Request tensors to numpy arrays, validated against the model's signature, and outputs back.

`decode_tensors` holds the checks every protocol shares, so gRPC and REST refuse a request with the
same message; the protobuf reader is here, the JSON one in `serving.rest_codec`. Every violation
raises `InvalidInput` with a message that names the input, so the client learns which tensor to fix.
This is the hot path of every request: it avoids copies (raw contents are viewed with
`np.frombuffer`) and per-element Python work except for BYTES tensors.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from serving.errors import InvalidInput, quoted
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
        raise InvalidInput(f"input '{name}': raw content holds more than the {count} BYTES elements its shape needs")
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


def _shape_error(spec: TensorSpec, shape: tuple[int, ...]) -> InvalidInput:
    if len(shape) != len(spec.shape):
        return InvalidInput(
            f"input '{spec.name}': expected {len(spec.shape)} dimensions {list(spec.shape)}, got {list(shape)}"
        )
    return InvalidInput(f"input '{spec.name}': expected shape {list(spec.shape)}, got {list(shape)}")


def _check_finite(checks: list[tuple[str, np.ndarray]], nan_policy: str) -> None:
    """One vectorised check over all float inputs; only on failure find the input to blame."""
    if nan_policy == "allow" or not checks:
        return
    if len(checks) == 1:
        values = checks[0][1].reshape(-1)
    else:
        try:
            values = np.concatenate([a.reshape(-1) for _, a in checks])
        except (TypeError, ValueError):  # mixed float widths: fall back to one check each
            values = None
    if values is not None:
        ok = np.isfinite(values).all() if nan_policy == "reject" else not np.isinf(values).any()
        if ok:
            return
    for name, array in checks:
        if nan_policy == "reject" and not np.isfinite(array).all():
            raise InvalidInput(f"input '{name}' contains NaN or Inf values")
        if nan_policy == "allow_nan" and np.isinf(array).any():
            raise InvalidInput(f"input '{name}' contains Inf values")


def decode_inputs(
    request, signature: ModelSignature, max_batch_size: int, nan_policy: str = "reject"
) -> tuple[dict[str, np.ndarray], int]:
    """A protobuf ModelInferRequest's inputs as arrays: raw contents when sent, else typed contents."""
    inputs = request.inputs
    raws = request.raw_input_contents
    if raws and len(raws) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raws)} entries for {len(inputs)} inputs: "
            "when raw contents are used every input must have one"
        )

    def read(index, tensor, plan, datatype, shape, count):
        if raws:
            return from_raw(tensor.name, raws[index], plan, datatype, shape, count)
        return _typed_contents(tensor.name, tensor, datatype, shape, count)

    return decode_tensors(inputs, signature, max_batch_size, nan_policy, read)


def decode_tensors(
    tensors, signature: ModelSignature, max_batch_size: int, nan_policy: str, read
) -> tuple[dict[str, np.ndarray], int]:
    """Arrays for the model's inputs, keyed by name, and the request's batch size (rows).

    The checks every protocol shares. `tensors` have `name`, `datatype` and `shape`; `read(index,
    tensor, plan, datatype, shape, count)` returns a tensor's `count` elements as a flat array in its
    own datatype. For a model without a batch dimension the batch size is 1.
    """
    plans = signature.plans
    batched = signature.batched
    arrays: dict[str, np.ndarray] = {}
    floats: list[tuple[str, np.ndarray]] = []
    batch = -1
    batch_input = ""
    for index, tensor in enumerate(tensors):
        name = tensor.name
        plan = plans.get(name)
        if plan is None:
            expected = ", ".join(t.name for t in signature.inputs)
            raise InvalidInput(f"unexpected input '{quoted(name)}': the model's inputs are {expected}")
        if name in arrays:
            raise InvalidInput(f"input '{name}' appears more than once")
        datatype = tensor.datatype
        if datatype != plan.datatype and (datatype, plan.datatype) not in EDGE_CASTS:
            raise InvalidInput(f"input '{name}': expected datatype {plan.datatype}, got {quoted(datatype) or 'none'}")
        shape = tuple(tensor.shape)
        if len(shape) != plan.ndim:
            raise _shape_error(plan.spec, shape)
        for i, dim in plan.static:
            if shape[i] != dim:
                raise _shape_error(plan.spec, shape)
        if shape and min(shape) < 0:
            raise _shape_error(plan.spec, shape)
        if batched:
            rows = shape[0]
            if batch < 0:
                if rows == 0:  # nothing to compute; refused so a batch never holds zero rows
                    raise InvalidInput(f"input '{name}': batch size 0, a request needs at least one row")
                if max_batch_size and rows > max_batch_size:
                    raise InvalidInput(
                        f"input '{name}': batch size {rows} exceeds the maximum batch size {max_batch_size}"
                    )
                batch, batch_input = rows, name
            elif rows != batch:
                raise InvalidInput(
                    f"inputs disagree on the batch size: input '{batch_input}' has {batch} rows, "
                    f"input '{name}' has {rows}"
                )
        array = read(index, tensor, plan, datatype, shape, math.prod(shape)).reshape(shape)
        if datatype != plan.datatype:
            array = array.astype(plan.dtype)  # an edge cast (FP64 -> FP32, INT32 -> INT64, ...)
        if plan.is_float:
            floats.append((name, array))
        arrays[name] = array
    if len(arrays) != len(plans):
        missing = ", ".join(t.name for t in signature.inputs if t.name not in arrays)
        raise InvalidInput(f"missing inputs: {missing}")
    _check_finite(floats, nan_policy)
    return arrays, (batch if batched else 1)


def from_raw(name: str, raw: bytes, plan, datatype: str, shape: tuple[int, ...], count: int) -> np.ndarray:
    """A tensor sent as raw bytes (gRPC raw contents, the REST binary extension), viewed without a copy."""
    if datatype == "BYTES":
        return _deserialize_bytes(name, raw, count)
    dtype = plan.dtype if datatype == plan.datatype else DATATYPE_TO_NUMPY[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': raw content has {len(raw)} bytes, "
            f"shape {list(shape)} of {datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype)


def _typed_contents(name: str, tensor, datatype: str, shape: tuple[int, ...], count: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': datatype {datatype} must be sent as raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': contents hold {len(values)} values, shape {list(shape)} needs {count}")
    if datatype != "BYTES":
        return np.array(values, dtype=DATATYPE_TO_NUMPY[datatype])
    array = np.empty(count, dtype=object)
    try:
        array[:] = [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
    return array


def encode_outputs(response, names, arrays, datatypes) -> None:
    """Append output tensors (metadata in `outputs`, bytes in `raw_output_contents`) to `response`."""
    outputs = response.outputs
    raw = response.raw_output_contents
    for name, array, datatype in zip(names, arrays, datatypes, strict=True):
        tensor = outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        if datatype == "BYTES":
            raw.append(serialize_bytes(array))
        else:
            raw.append(np.ascontiguousarray(array).tobytes())
