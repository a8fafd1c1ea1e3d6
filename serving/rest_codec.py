"""KServe v2 REST inference bodies to arrays and back, with Triton's binary tensor data extension.

A body is a JSON object (`inputs` with name, shape, datatype and `data`, flat or nested; BYTES as
JSON strings), optionally followed by raw tensor bytes: then the header
`Inference-Header-Content-Length` gives the JSON's length and each input that travels as bytes says
how many in `parameters.binary_data_size`, in input order (tritonclient.http's default). Outputs go
back as JSON `data`, or as bytes when the request asks (`binary_data_output`, or per output
`parameters.binary_data`). Raw bytes have gRPC's raw layout, so both protocols share one reader
(`serving.codec.from_raw`) and the checks of `serving.codec.decode_tensors`.

Every malformed body raises `InvalidInput` naming the field; nothing a client sends gets further.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from serving.codec import decode_tensors, from_raw, serialize_bytes
from serving.dataplane import InferReply
from serving.errors import InvalidInput, quoted
from serving.signature import DATATYPE_TO_NUMPY

HEADER_LENGTH = "Inference-Header-Content-Length"
_SHAPE_LIMIT = 2**63  # what an int64 shape holds, as over gRPC


@dataclass(slots=True)
class JsonTensor:
    """One entry of `inputs`: `data` (JSON values) or `raw` (bytes of the binary extension)."""

    name: str
    datatype: str
    shape: list[int]
    data: object
    raw: bytes | None


@dataclass(slots=True)
class RestInfer:
    """An inference request over REST, as the data plane sees it (`serving.dataplane.InferRequest`)."""

    model_name: str
    model_version: str
    id: str
    output_names: list[str]
    tensors: list[JsonTensor]
    binary_outputs: bool | set[str]  # True / False for every output, or the names to send as bytes
    parameters: dict  # the body's top-level `parameters`

    def decode(self, model):
        return decode_tensors(self.tensors, model.signature, model.max_batch_size, model.nan_policy, _read)

    def encode(self, reply: InferReply) -> tuple[bytes, int | None]:
        """The response body, and the length of its JSON part when binary outputs follow it."""
        binary = self.binary_outputs
        outputs, chunks = [], []
        for name, array, datatype in zip(reply.names, reply.outputs, reply.datatypes, strict=True):
            entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            if binary is True or (binary is not False and name in binary):
                raw = serialize_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            elif datatype == "BYTES":
                entry["data"] = [v if isinstance(v, str) else bytes(v).decode("utf-8", "replace") for v in array.flat]
            else:
                entry["data"] = np.ascontiguousarray(array).reshape(-1)  # orjson writes NaN/Inf as null
            outputs.append(entry)
        head = orjson.dumps(
            {"model_name": reply.model_name, "model_version": reply.model_version, "id": reply.id, "outputs": outputs},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        if not chunks:
            return head, None
        return b"".join([head, *chunks]), len(head)


def parse_request(body: bytes, header_length: str | None, model_name: str, model_version: str) -> RestInfer:
    """Check a body's structure; the tensors' contents are checked against the model in `decode`."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got '{quoted(header_length)}'") from None
        if not 0 <= size <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {size}, the body has {len(body)} bytes")
        body, binary = body[:size], body[size:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _object(doc, "parameters", "the request")
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of tensors")
    tensors = []
    offset = 0
    for index, entry in enumerate(inputs):
        tensor, size = _tensor(entry, index)
        if size is not None:
            tensor.raw = binary[offset : offset + size]
            offset += size
            if len(tensor.raw) != size:
                raise InvalidInput(
                    f"input '{tensor.name}': binary_data_size {size} overruns the {len(binary)} bytes of binary data"
                )
        tensors.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"the body holds {len(binary)} bytes of binary data, the inputs' binary_data_size {offset}")
    output_names, binary_outputs = _outputs(doc.get("outputs"), binary_all)
    return RestInfer(model_name, model_version, request_id, output_names, tensors, binary_outputs, parameters)


def _object(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{key}' of {where} must be a JSON object")
    return value


def _tensor(entry, index: int) -> tuple[JsonTensor, int | None]:
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = entry.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}]: 'name' must be a string")
    where = f"input '{quoted(name)}'"
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'datatype' must be a string")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and abs(d) < _SHAPE_LIMIT for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers")
    size = _object(entry, "parameters", where).get("binary_data_size")
    data = entry.get("data")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{where}: parameter 'binary_data_size' must be a non-negative integer")
        if data is not None:
            raise InvalidInput(f"{where}: has both 'data' and binary data")
    elif data is None:
        raise InvalidInput(f"{where}: 'data' is missing")
    return JsonTensor(name, datatype, shape, data, None), size


def _outputs(outputs, binary_all: bool) -> tuple[list[str], bool | set[str]]:
    if outputs is None:
        return [], binary_all
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    names, binary = [], set()
    for index, entry in enumerate(outputs):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}]: 'name' must be a string")
        wanted = _object(entry, "parameters", f"output '{quoted(name)}'").get("binary_data", binary_all)
        if not isinstance(wanted, bool):
            raise InvalidInput(f"output '{quoted(name)}': parameter 'binary_data' must be true or false")
        names.append(name)
        if wanted:
            binary.add(name)
    return names, binary


def _read(index, tensor: JsonTensor, plan, datatype, shape, count) -> np.ndarray:
    if tensor.raw is not None:
        return from_raw(tensor.name, tensor.raw, plan, datatype, shape, count)
    name, data = tensor.name, tensor.data
    if datatype == "BYTES":
        items = _flatten(data) if isinstance(data, list) else [data]
        if not all(type(v) is str for v in items):
            raise InvalidInput(f"input '{name}': BYTES data must be JSON strings")
        values = np.empty(len(items), dtype=object)
        values[:] = items
    else:
        try:
            values = np.asarray(data)
        except (ValueError, TypeError):  # ragged nesting
            raise InvalidInput(f"input '{name}': 'data' must be a list of numbers in the shape of the tensor") from None
        dtype = DATATYPE_TO_NUMPY[datatype]
        if values.size and not _fits(values, dtype):
            kind = "booleans" if dtype.kind == "b" else "integers" if dtype.kind in "iu" else "numbers"
            raise InvalidInput(f"input '{name}': {datatype} data must be JSON {kind} in its range")
        with np.errstate(over="ignore"):  # a double past float32's range becomes Inf: the NaN policy decides
            values = values.reshape(-1).astype(dtype, copy=False)
    if values.size != count:
        raise InvalidInput(f"input '{name}': data holds {values.size} values, shape {list(shape)} needs {count}")
    return values


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    """JSON values of the right kind for `dtype`: booleans for BOOL, integers in range for integers."""
    kind = values.dtype.kind
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind == "f":
        return kind in "iuf"
    if kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return info.min <= values.min() and values.max() <= info.max


def _flatten(data: list) -> list:
    """Nested lists in row-major order, without recursion (JSON nests up to orjson's limit)."""
    out, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out
