"""The prediction log's record format: what the server writes reads back, records of older servers
still decode, and the decoder never raises on bad bytes, skipping and counting each bad line."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving import log_records
from serving.log_records import (
    LoggedRequest,
    decode_segment,
    encode_record,
    month_prefix,
    segment_day,
    segment_key,
)
from tests.serving.test_serving_fuzz import fuzz_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request, monkeypatch):
    """Both the orjson path and the stdlib fallback, for writing and reading."""
    if request.param == "stdlib":
        monkeypatch.setattr(log_records, "orjson", None)
    return request.param


# --- writing -------------------------------------------------------------------------------------------


def test_encodings_agree(codec):
    """orjson (when installed) and the stdlib fallback write the same records."""
    inputs = {
        "temp": np.array([[0.1], [np.nan], [np.inf]], np.float32),
        "carrier": np.array([["AA"], ["B6"], ["ü"]], dtype=object),
        "count": np.array([[1], [2], [3]], np.int64),
        "flag": np.array([[True], [False], [True]]),
    }
    outputs = {"probability": np.arange(6, dtype=np.float32).reshape(3, 2)[:, :1]}  # a non-contiguous view
    line = encode_record(0.0, "r1", "m", "7", inputs, outputs)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record["ts"] == "1970-01-01T00:00:00.000000Z"
    assert (record["request_id"], record["model_name"], record["model_version"]) == ("r1", "m", "7")
    assert record["inputs"]["temp"][1:] == [None, None]
    assert np.float32(record["inputs"]["temp"][0]) == np.float32(0.1)
    assert record["inputs"]["carrier"] == ["AA", "B6", "ü"]
    assert record["inputs"]["count"] == [1, 2, 3] and record["inputs"]["flag"] == [True, False, True]
    assert record["outputs"]["probability"] == [0.0, 2.0, 4.0]
    assert "row_keys" not in record and "event_time" not in record  # only when the request gave them

    keyed = json.loads(encode_record(1.5, "r2", "m", "7", inputs, outputs, row_keys=["a", "b", "c"], event_ts=86400.25))
    assert keyed["row_keys"] == ["a", "b", "c"] and keyed["event_time"] == "1970-01-02T00:00:00.250000Z"


def test_records_read_back_with_their_event_time_and_row_keys(codec):
    inputs = {"distance": np.array([[100.0], [250.0]]), "carrier": np.array([["AA"], ["UA"]], dtype=object)}
    outputs = {"probability": np.array([[0.25], [0.75]], np.float32)}
    event = datetime(2013, 12, 31, 23, 30, tzinfo=UTC).timestamp()
    line = encode_record(
        event + 3600, "r1", "flight_delay", "3", inputs, outputs, row_keys=["f1", "f2"], event_ts=event
    )
    [record] = decode_segment(line).records
    assert record == LoggedRequest(
        time=datetime(2013, 12, 31, 23, 30, tzinfo=UTC),
        received=datetime(2014, 1, 1, 0, 30, tzinfo=UTC),
        request_id="r1",
        model_name="flight_delay",
        model_version="3",
        row_keys=("f1", "f2"),
        inputs={"distance": [100.0, 250.0], "carrier": ["AA", "UA"]},
        outputs={"probability": [0.25, 0.75]},
    )
    assert record.rows == 2
    assert log_records.record_day(event + 3600, event) == date(2013, 12, 31)  # the segment's day: the event's
    assert log_records.record_day(event + 3600) == date(2014, 1, 1)


def test_records_of_older_servers_decode_with_row_keys_from_the_request_id():
    old = (
        b'{"ts":"2026-01-01T10:00:00.000000Z","request_id":"r9","model_name":"m","model_version":"1",'
        b'"inputs":{"x":[1.0,2.0,3.0]},"outputs":{"y":[0.1,null,0.3]}}\n'
        b'{"ts":"2026-01-01T10:00:01.000000Z","request_id":"one","model_name":"m","model_version":"1",'
        b'"inputs":{"x":[1.0]},"outputs":{"y":[0.5]}}\n'
    )
    decoded = decode_segment(old)
    assert decoded.corrupt == 0
    many, one = decoded.records
    assert many.row_keys == ("r9:0", "r9:1", "r9:2") and one.row_keys == ("one",)
    assert many.time == many.received == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert many.outputs == {"y": [0.1, None, 0.3]}


GOOD = json.loads(encode_record(0.0, "r", "m", "1", {"a": np.zeros(2), "b": np.ones(2)}, {"y": np.zeros(2)}))


def mutated(**changes) -> bytes:
    record = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}  # `...` removes the field
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b"[" * 100_000,  # deeper than any parser's recursion limit
        mutated(ts=...),
        mutated(ts="2026-01-01T00:00:00"),  # no offset: the format is always UTC
        mutated(ts=17),
        mutated(ts="9999-12-31T23:59:59-23:59"),  # past datetime's range once in UTC
        mutated(event_time="yesterday"),
        mutated(event_time=None),
        mutated(request_id=5),
        mutated(model_version=None),
        mutated(inputs=[1, 2]),
        mutated(inputs={"a": 1}),
        mutated(inputs={"a": [[1], [2]]}),  # values are flat
        mutated(inputs={"a": [1, 2], "b": [1]}),  # not one row a position
        mutated(outputs=...),
        mutated(row_keys=["only one"]),
        mutated(row_keys=[1, 2]),
        mutated(row_keys="k"),
    ],
)
def test_bad_lines_are_skipped_and_counted(line):
    decoded = decode_segment(line + b"\n" + json.dumps(GOOD).encode() + b"\n")
    assert decoded.corrupt == 1 and [r.request_id for r in decoded.records] == ["r"]


# --- segment names -------------------------------------------------------------------------------------


def test_segment_names_carry_their_day_and_shipped_keys_group_by_month():
    name = "predictions-20131231-20260102T030405-17-000042.jsonl"
    assert segment_day(name) == date(2013, 12, 31)
    assert segment_key(name) == f"prediction_log/2013/12/31/{name}"
    assert segment_key(name).startswith(month_prefix(2013, 12)) and month_prefix(2013, 1) == "prediction_log/2013/01/"
    fresh = log_records.new_segment_name(date(2014, 2, 3))
    assert segment_day(fresh) == date(2014, 2, 3) and fresh != log_records.new_segment_name(date(2014, 2, 3))
    for other in (
        name + ".open",  # still being written
        "predictions-20260102T030405-17-000042.jsonl",  # before segments carried their day
        "predictions-20131332-20260102T030405-17-000042.jsonl",  # no such date
        ".predictions-20131231-20260102T030405-17-000042.jsonl.x1.tmp",  # a shipment in progress
    ):
        assert segment_day(other) is None
        with pytest.raises(ValueError):
            segment_key(other)


# --- the decoder on arbitrary bytes ---------------------------------------------------------------------

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def requests(draw) -> dict:
    """The arguments of one submitted request, as the data plane gives them: numeric and string columns."""
    rows = draw(st.integers(1, 4))
    names = draw(st.lists(st.text("abcxyz_", min_size=1, max_size=6), min_size=1, max_size=3, unique=True))
    text = st.text(max_size=8)

    def column(values, dtype) -> np.ndarray:
        return np.array(draw(st.lists(values, min_size=rows, max_size=rows)), dtype).reshape(rows, 1)

    return {
        "ts": draw(st.floats(0, 4e9)),
        "request_id": draw(text),
        "model_name": draw(text),
        "model_version": draw(st.sampled_from(["1", "12", "champion"])),
        "inputs": {name: column(text, object) if i % 2 else column(FLOATS, np.float32) for i, name in enumerate(names)},
        "outputs": {"probability": column(FLOATS, np.float32)},
        "row_keys": draw(st.none() | st.lists(text, min_size=rows, max_size=rows)),
        "event_ts": draw(st.none() | st.floats(0, 4e9)),
    }


def line_of(request: dict) -> bytes:
    return encode_record(**request)


def matches(record: LoggedRequest, request: dict) -> bool:
    """Whether a decoded record is the request that was written."""
    rows, request_id = len(request["outputs"]["probability"]), request["request_id"]
    keys = request["row_keys"] or ([request_id] if rows == 1 else [f"{request_id}:{i}" for i in range(rows)])
    when = request["ts"] if request["event_ts"] is None else request["event_ts"]
    return (
        (record.request_id, record.model_name, record.model_version)
        == tuple(request[k] for k in ("request_id", "model_name", "model_version"))
        and record.rows == rows
        and list(record.row_keys) == keys
        and abs(record.time.timestamp() - when) < 1e-5
        and all(record.inputs[name] == list(array.reshape(-1)) for name, array in request["inputs"].items())
    )


# A line that is no record: random bytes, or a valid line cut short (its closing brace gone).
garbage = st.binary(max_size=200).filter(lambda b: b"\n" not in b) | requests().map(line_of).flatmap(
    lambda line: st.integers(1, len(line) - 2).map(lambda cut: line[:cut])
)


@fuzz_settings(300)
@given(data=st.binary(max_size=2000))
def test_random_bytes_never_raise_and_every_line_is_counted(data):
    decoded = decode_segment(data)
    pieces = data.split(b"\n")
    assert len(decoded.records) + decoded.corrupt == len(pieces) - (1 if pieces[-1] == b"" else 0)


@fuzz_settings(120)
@given(segment=st.lists(requests(), min_size=1, max_size=6), cut=st.integers(0, 10**6))
def test_a_truncated_segment_keeps_every_complete_record(codec, segment, cut):
    lines = [line_of(request) for request in segment]
    data = b"".join(lines)
    cut = cut % (len(data) + 1)
    complete = sum(1 for end in np.cumsum([len(line) for line in lines]) if end <= cut)
    decoded = decode_segment(data[:cut])
    assert len(decoded.records) == complete
    assert all(matches(r, q) for r, q in zip(decoded.records, segment, strict=False))
    assert decoded.corrupt == (0 if cut in {0, *np.cumsum([len(line) for line in lines])} else 1)


@fuzz_settings(100)
@given(lines=st.lists(st.tuples(st.booleans(), requests(), garbage), max_size=8))
def test_good_lines_among_garbage_are_all_kept(codec, lines):
    data = b"".join((line_of(request) if good else bad + b"\n") for good, request, bad in lines)
    decoded = decode_segment(data)
    kept = [request for good, request, _ in lines if good]
    assert decoded.corrupt == len(lines) - len(kept)
    assert len(decoded.records) == len(kept)
    assert all(matches(r, q) for r, q in zip(decoded.records, kept, strict=True))
