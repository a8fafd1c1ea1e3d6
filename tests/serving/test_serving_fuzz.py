"""Mutated ModelInferRequests against a real server process: every reply is the status the protocol
calls for (never INTERNAL, UNKNOWN or a hang), a valid request is still answered after each one,
and memory and metrics stay bounded. The zero-row request that once wedged the server comes first."""

from __future__ import annotations

import copy
import re
import struct
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving import demo_models as dm
from serving.codec import serialize_bytes
from tests.serving.support import MODEL, ServerProcess, http_get, one_model_process, served_session

pytestmark = pytest.mark.timeout(300)

MAX_BATCH = 8
CALL_TIMEOUT_S = 5.0
RSS_GROWTH_LIMIT_MB = 50.0
WARM_UP_REQUESTS = 200

NUMERIC = tuple(dm.NUMERIC)
CATEGORICAL = tuple(dm.CATEGORICAL)
INPUTS = NUMERIC + CATEGORICAL
KIND = {**dict.fromkeys(NUMERIC, "FP32"), **dict.fromkeys(CATEGORICAL, "BYTES")}
ACCEPTED_DATATYPES = {"FP32": {"FP32", "FP64"}, "BYTES": {"BYTES"}}  # FP64 -> FP32 is an edge cast
SERVED_VERSIONS = {"", "1", "champion"}  # --model-path serves version 1 under the default alias
OUTPUT = "probability"
FLOAT32_MAX = float(np.finfo(np.float32).max)
# The typed `contents` field the protocol reads for each datatype the model accepts.
CONTENTS_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

Code = grpc.StatusCode
ALLOWED = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE}


# --- the server -------------------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    process: ServerProcess
    channel: grpc.Channel
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    session: object  # onnxruntime reference for the same model file
    baseline_rss_kb: int = 0
    broken_by: str = ""  # the request after which the server stopped answering
    replies: dict[str, int] = field(default_factory=dict)  # status name -> count, mutated requests
    body_replies: dict[str, int] = field(default_factory=dict)  # status name -> count, corrupted bytes

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def log_tail(self, size: int = 4000) -> str:
        """The end of the server's log (refusals quoting long names make it large)."""
        with open(self.process.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, 2) - size))
            return log.read().decode(errors="replace")


@pytest.fixture(scope="module")
def target(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    args = ("--max-batch-size", str(MAX_BATCH), "--cache-dir", str(folder / "cache"))
    with (
        one_model_process(model_files["flight_v1"], folder, *args) as process,
        grpc.insecure_channel(process.url) as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=CALL_TIMEOUT_S)
        # The strategies below are built from this signature: fail loudly if the model changes.
        assert {(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs} == {
            (name, KIND[name], (-1, 1)) for name in INPUTS
        }
        fuzz = FuzzTarget(process, channel, stub, served_session(model_files["flight_v1"]))
        for i in range(WARM_UP_REQUESTS):  # every batch size, so ONNX Runtime's arena is at its size
            arrays = dm.flight_rows(i % MAX_BATCH + 1, seed=i)
            reply = stub.ModelInfer(encode(arrays), timeout=CALL_TIMEOUT_S)
            assert_matches_onnxruntime(fuzz, reply, arrays)
        fuzz.baseline_rss_kb = fuzz.rss_kb()
        yield fuzz


def encode(arrays: dict[str, np.ndarray], **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, **fields)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=KIND[name], shape=list(array.shape))
        request.raw_input_contents.append(serialize_bytes(array) if KIND[name] == "BYTES" else array.tobytes())
    return request


def infer(target: FuzzTarget, request: pb.ModelInferRequest) -> tuple[Code, pb.ModelInferResponse | None, str]:
    try:
        return Code.OK, target.stub.ModelInfer(request, timeout=CALL_TIMEOUT_S), ""
    except grpc.RpcError as err:
        return err.code(), None, err.details() or ""


def assert_matches_onnxruntime(target: FuzzTarget, reply: pb.ModelInferResponse, arrays: dict[str, np.ndarray]):
    rows = next(iter(arrays.values())).shape[0]
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [(OUTPUT, "FP32", [rows, 1])]
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(rows, 1)
    expected = target.session.run([OUTPUT], arrays)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def assert_still_serving(target: FuzzTarget, why: str) -> None:
    try:
        assert target.process.process.poll() is None, f"server exited after {why}:\n{target.log_tail()}"
        arrays = dm.flight_rows(3, seed=99)
        code, reply, details = infer(target, encode(arrays))
        assert code == Code.OK, f"a valid request got {code.name} ({details}) after {why}:\n{target.log_tail()}"
        assert_matches_onnxruntime(target, reply, arrays)
    except AssertionError:
        target.broken_by = target.broken_by or why
        raise


def assert_not_broken(target: FuzzTarget) -> None:
    # A wedged or dead server fails every later example alike, 5 s a call: name the request that
    # broke it rather than let hypothesis shrink towards an innocent one.
    if target.broken_by:
        pytest.fail(f"the server stopped answering after {target.broken_by}", pytrace=False)


# --- 1. the request that used to wedge the server -----------------------------------------------------


def test_zero_row_request_then_a_valid_one(target):
    request = pb.ModelInferRequest(model_name=MODEL)
    for name in INPUTS:
        request.inputs.add(name=name, datatype=KIND[name], shape=[0, 1])
        request.raw_input_contents.append(b"")
    code, _, details = infer(target, request)
    assert code == Code.INVALID_ARGUMENT, (code, details)
    assert any(f"input '{name}'" in details for name in INPUTS), details
    assert "Traceback" not in details

    arrays = dm.flight_rows(4, seed=5)
    code, reply, details = infer(target, encode(arrays))
    assert code == Code.OK, details
    assert_matches_onnxruntime(target, reply, arrays)


# --- 2. the fuzz ---------------------------------------------------------------------------------------


@dataclass
class Tensor:
    name: str
    kind: str  # the model's datatype for this name: FP32 or BYTES
    array: np.ndarray  # the values meant
    datatype: str  # as declared in the request
    shape: list[int]  # as declared in the request
    wire: str  # how the values are encoded: FP32, FP64 or BYTES
    typed: bool = False  # `contents` instead of raw_input_contents
    also_typed: bool = False  # raw bytes and typed contents on the same tensor
    override: object = None  # raw bytes, or (field, values) when typed, replacing the encoding
    override_valid: bool | None = None  # False: certainly refused; None: could go either way
    parameters: dict = field(default_factory=dict)

    def raw(self) -> bytes:
        if self.wire == "BYTES":
            return serialize_bytes(self.array)
        return self.array.astype(np.float32 if self.wire == "FP32" else np.float64).tobytes()

    def contents(self) -> tuple[str, list]:
        if self.wire == "BYTES":
            return "bytes_contents", [str(v).encode() for v in self.array.reshape(-1)]
        return ("fp32_contents" if self.wire == "FP32" else "fp64_contents"), self.array.reshape(-1).tolist()

    def content_valid(self) -> bool | None:
        """Whether the encoded values are acceptable, given a valid name, datatype and shape."""
        if self.override is not None:
            return self.override_valid
        if self.datatype != self.wire:  # declared FP64 but encoded as FP32, or the other way round
            return False
        if self.kind == "FP32" and not np.isfinite(self.array).all():  # the server's NaN policy: reject
            return False
        if self.kind == "FP32" and np.abs(self.array).max(initial=0) > FLOAT32_MAX:
            return None  # FP64 outside FP32's range: refused, or cast to Inf at the edge
        if self.also_typed and not self.typed:  # the protocol forbids it: the server may refuse or
            return None  # ignore the typed copy
        return True


@dataclass
class Draft:
    tensors: list[Tensor]
    model_name: str = MODEL
    model_version: str = ""
    id: str = ""
    parameters: dict = field(default_factory=dict)
    outputs: list[tuple[str, dict]] = field(default_factory=list)
    raw_delta: int = 0  # raw_input_contents entries dropped (<0) or added (>0)
    extra_raw: bytes = b""
    mutations: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Draft(mutations={self.mutations})\n{describe(self.to_proto())}"

    @property
    def raw_mode(self) -> bool:
        return any(not t.typed for t in self.tensors)

    def to_proto(self) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.model_name, model_version=self.model_version, id=self.id)
        set_parameters(request.parameters, self.parameters)
        raw_mode = self.raw_mode
        for t in self.tensors:
            tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            set_parameters(tensor.parameters, t.parameters)
            if t.typed or t.also_typed:
                name, values = t.override if (t.typed and t.override is not None) else t.contents()
                getattr(tensor.contents, name).extend(values)
            if raw_mode:
                request.raw_input_contents.append(
                    b"" if t.typed else (t.override if t.override is not None else t.raw())
                )
        if self.raw_delta < 0:
            del request.raw_input_contents[self.raw_delta :]
        for _ in range(self.raw_delta):
            request.raw_input_contents.append(self.extra_raw)
        for name, parameters in self.outputs:
            set_parameters(request.outputs.add(name=name).parameters, parameters)
        return request

    def expected(self) -> Code | None:
        """The status this request must get, from the protocol's rules; None where either OK or
        INVALID_ARGUMENT is right (random bytes that may or may not decode)."""
        if self.model_name != MODEL or self.model_version not in SERVED_VERSIONS:
            return Code.NOT_FOUND
        if sorted(t.name for t in self.tensors) != sorted(INPUTS):
            return Code.INVALID_ARGUMENT  # missing, duplicate or unknown inputs
        for t in self.tensors:
            if t.datatype not in ACCEPTED_DATATYPES[t.kind]:
                return Code.INVALID_ARGUMENT
            if len(t.shape) != 2 or t.shape[1] != 1 or not 1 <= t.shape[0] <= MAX_BATCH:
                return Code.INVALID_ARGUMENT
        if len({t.shape[0] for t in self.tensors}) > 1:
            return Code.INVALID_ARGUMENT
        if self.raw_mode and (self.raw_delta or any(t.typed for t in self.tensors)):
            return Code.INVALID_ARGUMENT  # raw contents must come for every input or for none
        if not self.raw_mode and self.raw_delta:
            return Code.INVALID_ARGUMENT
        if any(name != OUTPUT for name, _ in self.outputs):
            return Code.INVALID_ARGUMENT
        valid = [t.content_valid() for t in self.tensors]
        if False in valid:
            return Code.INVALID_ARGUMENT
        return None if None in valid else Code.OK


def set_parameters(target, values: dict) -> None:
    for key, (kind, value) in values.items():
        setattr(target[key], kind, value)


# Strategies. Floats are float32-exact so FP32 and FP64 encodings carry the same values.
finite_float = st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32)
category = {name: st.one_of(st.sampled_from(dm.CATEGORICAL[name]), st.text(max_size=12)) for name in CATEGORICAL}
huge_text = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\x00", "字", "'"]), st.integers(1_000, 100_000))
any_text = st.one_of(st.text(max_size=40), huge_text)
parameter = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("double_param"), st.floats()),
    st.tuples(st.just("string_param"), any_text),
)
parameters = st.dictionaries(
    st.one_of(st.sampled_from(["binary_data_size", "sequence_id", "priority", "timeout", ""]), st.text(max_size=20)),
    parameter,
    max_size=4,
)
datatypes = st.one_of(
    st.sampled_from(
        ["FP32", "FP64", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "", "FP8", "fp32", "STRING"]
    ),
    st.text(max_size=10),
    huge_text,
)


def column(draw, name: str, rows: int) -> np.ndarray:
    if KIND[name] == "FP32":
        return np.array(draw(st.lists(finite_float, min_size=rows, max_size=rows)), np.float32).reshape(rows, 1)
    values = np.empty((rows, 1), dtype=object)
    values[:, 0] = draw(st.lists(category[name], min_size=rows, max_size=rows))
    return values


def resize(draw, t: Tensor, rows: int) -> None:
    t.array = column(draw, t.name, rows)
    t.shape = [rows, 1]
    t.override, t.override_valid = None, None


def pick(draw, draft: Draft, kind: str | None = None, where=lambda t: True) -> Tensor | None:
    choices = [t for t in draft.tensors if (kind is None or t.kind == kind) and where(t)]
    return draw(st.sampled_from(choices)) if choices else None


# Mutations, each `(draw, draft) -> None`, applied in the order of the groups below so a later
# group never silently undoes an earlier one (values, then encoding, then declarations, then
# bytes, then the input list, then the request).


def zero_rows(draw, draft):
    some = st.lists(st.sampled_from(draft.tensors), min_size=1, unique_by=id)
    for t in draw(st.one_of(st.just(draft.tensors), some)):  # every input, as in the wedge, or some
        t.array, t.shape = t.array[:0], [0, 1]


def rows_disagree(draw, draft):
    t = draw(st.sampled_from(draft.tensors))
    resize(draw, t, draw(st.sampled_from([n for n in range(1, MAX_BATCH + 1) if n != t.shape[0]])))


def over_max_batch(draw, draft):
    rows = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 4))
    for t in draft.tensors:
        resize(draw, t, rows)


def non_finite(draw, draft):
    t = pick(draw, draft, "FP32", lambda t: t.array.size > 0)
    if t is not None:
        t.array = t.array.copy()
        t.array.flat[draw(st.integers(0, t.array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))


def doubles_beyond_float32(draw, draft):
    t = pick(draw, draft, "FP32", lambda t: t.array.size > 0)
    if t is not None:
        t.array = t.array.astype(np.float64)
        big = draw(st.floats(FLOAT32_MAX * 2, 1e308))
        t.array.flat[draw(st.integers(0, t.array.size - 1))] = big if draw(st.booleans()) else -big
        t.datatype = t.wire = "FP64"


def send_doubles(draw, draft):
    numeric = [t for t in draft.tensors if t.kind == "FP32"]
    for t in draw(st.lists(st.sampled_from(numeric), min_size=1, unique_by=id)):
        t.datatype = t.wire = "FP64"


def typed_contents(draw, draft):
    for t in draft.tensors:
        t.typed = True


def mix_raw_and_typed(draw, draft):
    typed = draw(st.lists(st.sampled_from(draft.tensors), min_size=1, max_size=len(draft.tensors) - 1, unique_by=id))
    for t in draft.tensors:
        t.typed = any(t is u for u in typed)


def raw_and_typed_on_one_tensor(draw, draft):
    draw(st.sampled_from(draft.tensors)).also_typed = True


def negative_dim(draw, draft):
    t = draw(st.sampled_from(draft.tensors))
    t.shape = list(t.shape)
    t.shape[draw(st.integers(0, len(t.shape) - 1))] = draw(st.integers(-(2**63), -1))


def huge_dim(draw, draft):
    t = draw(st.sampled_from(draft.tensors))
    if draw(st.booleans()):
        t.shape = [draw(st.integers(MAX_BATCH + 1, 2**63 - 1)), 1]
    else:
        t.shape = [t.shape[0], draw(st.sampled_from([0, 2, 2**31, 2**63 - 1]))]


def wrong_rank(draw, draft):
    t = draw(st.sampled_from(draft.tensors))
    dims = st.integers(0, 4)
    t.shape = draw(st.one_of(st.lists(dims, max_size=1), st.lists(dims, min_size=3, max_size=5)))


def wrong_datatype(draw, draft):
    t = draw(st.sampled_from(draft.tensors))
    t.datatype = draw(datatypes)


def raw_length(draw, draft):
    t = pick(draw, draft, draw(st.sampled_from(["FP32", "BYTES"])), lambda t: not t.typed)
    if t is None:
        return
    base = t.raw()
    how = draw(st.sampled_from(["short", "long", "empty", "random"]))
    if how == "short":
        data = base[: draw(st.integers(0, max(0, len(base) - 1)))]
    elif how == "long":
        data = base + draw(st.binary(min_size=1, max_size=64))
    elif how == "empty":
        data = b""
    else:
        data = draw(st.one_of(st.binary(max_size=128), st.binary(min_size=len(base), max_size=len(base))))
    if t.kind == "BYTES":
        # A cut or an extended serialization never parses into the same number of elements.
        maybe = how == "random" or data == base
    else:  # numbers: only the length the declared datatype needs can decode
        maybe = len(data) == t.array.size * (8 if t.datatype == "FP64" else 4)
    t.override, t.override_valid = data, (None if maybe else False)


def bytes_framing(draw, draft):
    t = pick(draw, draft, "BYTES", lambda t: not t.typed and t.wire == "BYTES" and t.array.size > 0)
    if t is None:
        return
    items = [str(v).encode() for v in t.array.reshape(-1)]
    lengths = [len(v) for v in items]
    how = draw(st.sampled_from(["overrun", "short_last", "any_prefix", "max_prefix", "not_utf8"]))
    if how == "short_last" and lengths[-1] == 0:
        how = "overrun"
    valid = False
    if how == "overrun":  # the last element claims more bytes than remain
        lengths[-1] += draw(st.integers(1, 2**32 - 1 - lengths[-1]))
    elif how == "short_last":  # the last element claims fewer: bytes left over
        lengths[-1] -= draw(st.integers(1, lengths[-1]))
    elif how == "any_prefix":  # one element lies about its length: anything may follow
        lengths[draw(st.integers(0, len(items) - 1))] = draw(st.integers(0, 2**32 - 1))
        valid = None
    elif how == "max_prefix":
        lengths[draw(st.integers(0, len(items) - 1))] = 2**32 - 1
    else:  # not_utf8
        i = draw(st.integers(0, len(items) - 1))
        items[i] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc", b"AA\xfe"]))
        lengths[i] = len(items[i])
    t.override = b"".join(struct.pack("<I", n) + v for n, v in zip(lengths, items, strict=True))
    t.override_valid = valid


def typed_tensor(draw, draft, kind: str | None = None) -> Tensor | None:
    """A tensor sent as typed contents; the whole request switches to them if none is."""
    if not any(t.typed for t in draft.tensors):
        if any(isinstance(t.override, bytes) for t in draft.tensors):
            return None  # raw bytes already mutated: keep that mutation
        typed_contents(draw, draft)
    return pick(draw, draft, kind, lambda t: t.typed and t.array.size > 0)


def typed_count(draw, draft):
    t = typed_tensor(draw, draft)
    if t is not None:
        name, values = t.contents()
        values = values[:-1] if draw(st.booleans()) else values + values[:1] * draw(st.integers(1, 4))
        t.override, t.override_valid = (name, values), False


def typed_wrong_field(draw, draft):
    t = typed_tensor(draw, draft)
    if t is None:
        return
    sent, read = t.contents()[0], CONTENTS_FIELD.get(t.datatype)
    values = {
        "bool_contents": st.booleans(),
        "int_contents": st.integers(-(2**31), 2**31 - 1),
        "int64_contents": st.integers(-(2**63), 2**63 - 1),
        "uint_contents": st.integers(0, 2**32 - 1),
        "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": finite_float,
        "fp64_contents": st.floats(),
        "bytes_contents": st.binary(max_size=8),
    }
    name = draw(st.sampled_from(sorted(k for k in values if k not in (sent, read))))
    t.override = (name, draw(st.lists(values[name], min_size=t.array.size, max_size=t.array.size)))
    t.override_valid = False


def non_utf8_typed(draw, draft):
    t = typed_tensor(draw, draft, "BYTES")
    if t is not None:
        name, values = t.contents()
        values[draw(st.integers(0, len(values) - 1))] = b"\xff\xfe"
        t.override, t.override_valid = (name, values), False


def duplicate_input(draw, draft):
    draft.tensors.append(copy.deepcopy(draw(st.sampled_from(draft.tensors))))


def missing_input(draw, draft):
    gone = draw(st.sampled_from(draft.tensors)).name
    draft.tensors = [t for t in draft.tensors if t.name != gone]


def unknown_input(draw, draft):
    name = draw(any_text.filter(lambda s: s not in INPUTS))
    rows = draft.tensors[0].shape[0] if draft.tensors and draft.tensors[0].shape else 1
    array = np.zeros((max(rows, 0), 1), np.float32)
    tensor = Tensor(name, "FP32", array, "FP32", list(array.shape), "FP32")
    draft.tensors.insert(draw(st.integers(0, len(draft.tensors))), tensor)


def raw_count(draw, draft):
    if draft.raw_mode:
        draft.raw_delta = draw(st.sampled_from([-1, -2, -len(draft.tensors), 1, 3]))
        draft.extra_raw = draw(st.binary(max_size=16))


def request_parameters(draw, draft):
    draft.parameters = draw(parameters)
    for t in draft.tensors:
        t.parameters = draw(parameters)


def model_name(draw, draft):
    draft.model_name = draw(
        st.one_of(st.sampled_from(["", "Flight_Delay", "flight_delay ", "flight", "champion"]), any_text)
    )


def model_version(draw, draft):
    draft.model_version = draw(
        st.one_of(st.sampled_from(["1", "champion", "2", "0", "01", "-1", "challenger", "latest", " 1"]), any_text)
    )


def request_id(draw, draft):
    draft.id = draw(any_text)


def requested_outputs(draw, draft):
    names = st.one_of(st.just(OUTPUT), st.text(max_size=20), huge_text)
    draft.outputs = draw(st.lists(st.tuples(names, parameters), min_size=1, max_size=3))


GROUPS = [
    [zero_rows, rows_disagree, over_max_batch],
    [non_finite, doubles_beyond_float32, send_doubles, typed_contents, mix_raw_and_typed, raw_and_typed_on_one_tensor],
    [negative_dim, huge_dim, wrong_rank, wrong_datatype],
    [raw_length, bytes_framing, typed_count, typed_wrong_field, non_utf8_typed],
    [duplicate_input, missing_input, unknown_input],
    [raw_count, request_parameters, model_name, model_version, request_id, requested_outputs],
]
ORDER = {m: i for i, m in enumerate(m for group in GROUPS for m in group)}
# Mutations a valid request survives: a quarter of the examples use only these, so the fuzz
# checks answers as well as refusals.
HARMLESS = [send_doubles, typed_contents, request_parameters, request_id]


@st.composite
def drafts(draw) -> Draft:
    rows = draw(st.integers(1, MAX_BATCH))
    tensors = []
    for name in INPUTS:
        array = column(draw, name, rows)
        tensors.append(Tensor(name, KIND[name], array, KIND[name], [rows, 1], KIND[name]))
    draft = Draft(tensors)
    pool = draw(st.sampled_from([HARMLESS, list(ORDER), list(ORDER), list(ORDER)]))
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
    for mutation in sorted(chosen, key=ORDER.__getitem__):
        if draft.tensors:
            mutation(draw, draft)
        draft.mutations.append(mutation.__name__)
    return draft


def describe(request: pb.ModelInferRequest) -> str:
    """The request as protobuf text, with long strings and bytes cut to a readable length."""
    short = pb.ModelInferRequest()
    short.CopyFrom(request)

    def cut(value):
        if len(value) <= 60:
            return value
        marker = f"...<{len(value)} long>"
        return value[:20] + (marker if isinstance(value, str) else marker.encode())

    def cut_parameters(parameters):
        for value in parameters.values():
            if value.WhichOneof("parameter_choice") == "string_param":
                value.string_param = cut(value.string_param)

    short.model_name, short.model_version, short.id = cut(short.model_name), cut(short.model_version), cut(short.id)
    cut_parameters(short.parameters)
    for tensor in short.inputs:
        tensor.name, tensor.datatype = cut(tensor.name), cut(tensor.datatype)
        cut_parameters(tensor.parameters)
    for output in short.outputs:
        output.name = cut(output.name)
        cut_parameters(output.parameters)
    for i, raw in enumerate(short.raw_input_contents):
        short.raw_input_contents[i] = cut(raw)
    return str(short)


def fuzz_settings(examples: int):
    """Reproducible in CI (derandomized, no example database), with one server shared by every example."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@fuzz_settings(300)
@given(draft=drafts())
def test_mutated_requests_get_a_clean_status(target, draft):
    assert_not_broken(target)
    request = draft.to_proto()
    culprit = f"{draft.mutations}:\n{describe(request)}"
    expected = draft.expected()
    note(f"expected: {expected.name if expected else 'OK or INVALID_ARGUMENT'}")
    for mutation in draft.mutations:
        event(mutation)
    event(f"expected {expected.name if expected else 'either'}")
    code, reply, details = infer(target, request)
    target.replies[code.name] = target.replies.get(code.name, 0) + 1
    if code == Code.DEADLINE_EXCEEDED:
        assert_still_serving(target, culprit)  # a hang of this request alone, or a wedged server?

    def context() -> str:  # only built when an assertion fails
        return f"{code.name} ({details[:500]!r}) for {draft.mutations}\nserver log:\n{target.log_tail()}"

    assert code in ALLOWED, context()
    assert "Traceback" not in details
    if expected is None:
        assert code in (Code.OK, Code.INVALID_ARGUMENT), context()
    else:
        assert code == expected, f"expected {expected.name}, got {context()}"
    if code == Code.OK:
        rows = draft.tensors[0].shape[0]
        wanted = [name for name, _ in draft.outputs] or [OUTPUT]
        assert [(o.name, list(o.shape)) for o in reply.outputs] == [(name, [rows, 1]) for name in wanted]
        assert [len(raw) for raw in reply.raw_output_contents] == [4 * rows] * len(wanted)
        if expected == Code.OK:  # values known: the server's answer is onnxruntime's
            got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(rows, 1)
            feeds = {t.name: t.array.astype(np.float32) if t.kind == "FP32" else t.array for t in draft.tensors}
            np.testing.assert_allclose(got, target.session.run([OUTPUT], feeds)[0], rtol=1e-5, atol=1e-7)
    assert_still_serving(target, culprit)


def long_name_request(where: str, name: str) -> pb.ModelInferRequest:
    request = encode(dm.flight_rows(1))
    if where == "input":
        request.inputs.add(name=name, datatype="FP32", shape=[1, 1])
        request.raw_input_contents.append(b"\0" * 4)
    elif where == "datatype":
        request.inputs[0].datatype = name
    elif where == "model":
        request.model_name = name
    elif where == "version":
        request.model_version = name
    else:
        request.outputs.add(name=name)
    return request


# Error messages quote client strings cut short: a 32 kB name once made the status overflow the client's
# metadata limit, so the client read RESOURCE_EXHAUSTED instead of the real refusal.
@pytest.mark.parametrize(
    "where, code",
    [
        ("input", Code.INVALID_ARGUMENT),
        ("datatype", Code.INVALID_ARGUMENT),
        ("output", Code.INVALID_ARGUMENT),
        ("model", Code.NOT_FOUND),
        ("version", Code.NOT_FOUND),
    ],
)
def test_a_long_name_is_refused_with_a_status_the_client_can_read(target, where, code):
    got, _, details = infer(target, long_name_request(where, "a" * 32_000))
    assert got == code, f"{got.name}: {details[:200]}"
    assert_still_serving(target, f"a long {where} name")


# --- 2b. the same one level down: corrupted request bytes -----------------------------------------------


@st.composite
def bodies(draw) -> bytes:
    """A valid ModelInferRequest's serialized bytes with bytes flipped, cut, inserted or replaced."""
    arrays = dm.flight_rows(draw(st.integers(1, MAX_BATCH)), seed=draw(st.integers(0, 1000)))
    body = bytearray(encode(arrays).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["flip", "cut", "insert", "append", "replace"]))
        if how == "flip" and at < len(body):
            body[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del body[at:]
        elif how == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "append":  # protobuf merges a repeated field: later fields win or add
            extra = pb.ModelInferRequest(model_name=draw(st.sampled_from(["", MODEL, "other"])))
            extra.inputs.add(name=draw(st.sampled_from(INPUTS)), datatype="FP32", shape=[1, 1])
            body += extra.SerializeToString()
        elif how == "replace":
            body = bytearray(draw(st.binary(max_size=200)))
    return bytes(body)


@fuzz_settings(150)
@given(body=bodies())
def test_corrupted_request_bytes_get_a_clean_status(target, body):
    assert_not_broken(target)
    call = target.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        request = pb.ModelInferRequest.FromString(body)
    except DecodeError:
        request = None
    try:
        code, reply, details = Code.OK, pb.ModelInferResponse.FromString(call(body, timeout=CALL_TIMEOUT_S)), ""
    except grpc.RpcError as err:
        code, reply, details = err.code(), None, err.details() or ""
    target.body_replies[code.name] = target.body_replies.get(code.name, 0) + 1
    if code == Code.DEADLINE_EXCEEDED:
        assert_still_serving(target, f"the body {body!r}")

    def context() -> str:
        return f"{code.name} ({details[:300]!r}) for {body[:200]!r}\nserver log:\n{target.log_tail()}"

    assert request is not None or code == Code.INVALID_ARGUMENT, context()
    assert code in ALLOWED, context()
    if code == Code.OK:
        rows = request.inputs[0].shape[0]
        assert [(o.name, list(o.shape)) for o in reply.outputs] == [(OUTPUT, [rows, 1])], context()
    assert_still_serving(target, f"the body {body!r}")


# grpc.aio's own deserializer failure reads UNKNOWN with an exception's class name; the interceptor
# turns it into INVALID_ARGUMENT.
def test_a_body_that_is_not_a_protobuf_is_invalid_argument(target):
    call = target.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff", timeout=CALL_TIMEOUT_S)
    assert err.value.code() == Code.INVALID_ARGUMENT, f"{err.value.code().name}: {err.value.details()}"
    assert_still_serving(target, "a body that is not a protobuf")


# --- 3. after the fuzz ----------------------------------------------------------------------------------


def test_after_the_fuzz_the_server_answers_and_memory_is_bounded(target):
    if not target.replies:  # run on its own (-k): fuzz first, so there is something to measure
        test_mutated_requests_get_a_clean_status(target)
    assert_still_serving(target, "the fuzz")
    after = target.rss_kb()
    growth_mb = (after - target.baseline_rss_kb) / 1024
    print(
        f"server RSS: {target.baseline_rss_kb / 1024:.1f} MB after {WARM_UP_REQUESTS} warm-up requests, "
        f"{after / 1024:.1f} MB after the fuzz ({growth_mb:+.1f} MB); replies: {target.replies}, "
        f"to corrupted bytes: {target.body_replies}"
    )
    assert growth_mb < RSS_GROWTH_LIMIT_MB
    # Nor do the metrics: their series are per served model and version, never per request.
    labels = re.findall(r'\b(model|version)="((?:[^"\\]|\\.)*)"', http_get(target.process.http + "/metrics")[1])
    assert {value for key, value in labels if key == "model"} == {MODEL}
    assert {value for key, value in labels if key == "version"} == {"1"}
    # The fuzz reached every kind of reply it should, not only refusals.
    for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND"):
        assert target.replies.get(code, 0) >= 10, target.replies
