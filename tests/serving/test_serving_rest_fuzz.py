"""Mutated REST inference bodies: the JSON parser refuses everything malformed with InvalidInput (never
another exception), and a real server answers every mutated body with 200, 400 or 404 and a JSON
error, then still answers a valid request with onnxruntime's numbers."""

from __future__ import annotations

import http.client
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import demo_models as dm
from serving.errors import InvalidInput
from serving.rest_codec import HEADER_LENGTH, parse_request
from serving.signature import signature_from_session
from tests.serving.support import MODEL, one_model_process, served_session
from tests.serving.test_serving_rest import json_body

pytestmark = pytest.mark.timeout(300)

MAX_BATCH = 8
OUTPUT = "probability"
DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "", "fp32", "BF16"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, width=64)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
shapes = st.lists(
    st.sampled_from([0, 1, 2, -1, 7, MAX_BATCH + 1, 2**31, 2**62, 2**63, 2**64]) | st.integers(-3, 10), max_size=4
)


def valid_document(rows: int, seed: int = 0) -> dict:
    return json_body(dm.flight_rows(rows, seed=seed))


def paths(document, prefix=()):
    """Every place in a JSON document: key paths into objects and lists."""
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from paths(value, (*prefix, index))


def at(document, path):
    for step in path:
        document = document[step]
    return document


@st.composite
def bodies(draw) -> tuple[bytes, dict]:
    """A valid body, mutated: values replaced or removed anywhere, odd shapes and datatypes, zero rows,
    the binary extension with wrong sizes, or bytes that are no JSON at all. Returns (body, headers)."""
    rows = draw(st.integers(1, MAX_BATCH))
    document = valid_document(rows, seed=draw(st.integers(0, 3)))
    if draw(st.booleans()):
        document["outputs"] = [{"name": draw(st.sampled_from([OUTPUT, "score", ""]))}]
    if draw(st.booleans()):
        document["id"] = draw(st.text(max_size=20))
    headers = {"Content-Type": "application/json"}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "shape", "datatype", "zero rows", "parameters"]))
        places = list(paths(document))[1:]
        if kind == "replace" and places:
            path = draw(st.sampled_from(places))
            at(document, path[:-1])[path[-1]] = draw(json_values)
        elif kind == "delete" and places:
            path = draw(st.sampled_from(places))
            del at(document, path[:-1])[path[-1]]
        elif kind in ("shape", "datatype", "zero rows") and isinstance(document.get("inputs"), list):
            tensors = [t for t in document["inputs"] if isinstance(t, dict)]
            if not tensors:
                continue
            tensor = draw(st.sampled_from(tensors))
            if kind == "shape":
                tensor["shape"] = draw(shapes)
            elif kind == "datatype":
                tensor["datatype"] = draw(st.sampled_from(DATATYPES) | st.text(max_size=8))
            else:
                for t in tensors:
                    t["shape"], t["data"] = [0, 1], []
        elif kind == "parameters":
            document["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values))
    body = json.dumps(document).encode()
    ending = draw(st.sampled_from(["json"] * 5 + ["binary"] * 3 + ["truncated", "bytes"]))
    if ending == "binary":  # the binary extension: raw bytes after the JSON, sizes possibly wrong
        tensors = document.get("inputs") if isinstance(document.get("inputs"), list) else []
        for tensor in tensors[:2]:
            if isinstance(tensor, dict):
                tensor.pop("data", None)
                tensor["parameters"] = {"binary_data_size": draw(st.integers(-1, 40))}
        head = json.dumps(document).encode()
        headers[HEADER_LENGTH] = draw(st.sampled_from([str(len(head)), str(len(head) + 1), "-1", "x", "0"]))
        body = head + draw(st.binary(max_size=64))
    elif ending == "truncated":
        body = body[: draw(st.integers(0, len(body)))]
    elif ending == "bytes":
        body = draw(st.binary(max_size=200))
    return body, headers


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- the parser alone -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_files):
    session = served_session(model_files["flight_v1"])
    return SimpleNamespace(signature=signature_from_session(session), max_batch_size=MAX_BATCH, nan_policy="reject")


@fuzz_settings(1500)
@given(case=bodies())
def test_the_parser_refuses_malformed_bodies_with_invalid_input_only(model, case):
    body, headers = case
    try:
        request = parse_request(body, headers.get(HEADER_LENGTH), MODEL, "")
        arrays, rows = request.decode(model)
    except InvalidInput as exc:
        assert exc.reason and len(exc.reason) < 2000
        return
    assert set(arrays) == {spec.name for spec in model.signature.inputs}
    assert 1 <= rows <= MAX_BATCH
    for spec in model.signature.inputs:
        assert arrays[spec.name].shape == (rows, 1) and arrays[spec.name].dtype == spec.numpy_dtype


def test_binary_inputs_are_sliced_in_order():
    first, second = np.arange(3, dtype=np.float32), np.arange(3, 6, dtype=np.float32)
    document = {
        "inputs": [
            {"name": "a", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
            {"name": "b", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}},
            {"name": "c", "shape": [3], "datatype": "FP32", "data": [9, 9, 9]},
            {"name": "d", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        ]
    }
    head = json.dumps(document).encode()
    body = head + first.tobytes() + struct.pack("<I", 3) + b"abc" + second.tobytes()
    request = parse_request(body, str(len(head)), MODEL, "")
    assert [t.raw for t in request.tensors] == [first.tobytes(), struct.pack("<I", 3) + b"abc", None, second.tobytes()]
    with pytest.raises(InvalidInput, match="binary data"):
        parse_request(body + b"x", str(len(head)), MODEL, "")


# --- a real server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rest-fuzz")
    with one_model_process(model_files["flight_v1"], folder, "--max-batch-size", str(MAX_BATCH)) as process:
        yield SimpleNamespace(
            process=process,
            connection=http.client.HTTPConnection("127.0.0.1", process.rest_port, timeout=10),
            session=served_session(model_files["flight_v1"]),
        )


def post(target, body: bytes, headers: dict) -> tuple[int, bytes]:
    connection = target.connection
    try:
        connection.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (http.client.HTTPException, OSError):  # the server may close a connection it cannot parse
        connection.close()
        raise


def assert_still_serving(target) -> None:
    assert target.process.process.poll() is None, target.process.logs()[-2000:]
    arrays = dm.flight_rows(3, seed=99)
    status, reply = post(target, json.dumps(valid_document(3, seed=99)).encode(), {})
    assert status == 200, reply
    got = np.array(json.loads(reply)["outputs"][0]["data"], np.float32).reshape(3, 1)
    np.testing.assert_allclose(got, target.session.run([OUTPUT], arrays)[0], rtol=1e-5, atol=1e-7)


@fuzz_settings(200)
@given(case=bodies())
def test_mutated_bodies_get_a_clean_status(target, case):
    body, headers = case
    status, reply = post(target, body, headers)
    assert status in (200, 400, 404), (status, reply[:500])
    if status != 200:
        error = json.loads(reply)
        assert set(error) == {"error"} and "Traceback" not in error["error"]
    assert_still_serving(target)
