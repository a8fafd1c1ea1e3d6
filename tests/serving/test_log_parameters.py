"""The `row_key` and `event_time` request parameters, property-tested: what is well formed comes back as
the keys and the epoch seconds it means, anything else is InvalidInput naming the field, nothing raises
otherwise."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import InvalidInput
from serving.log_parameters import MAX_EVENT_TS, MIN_EVENT_TS, log_parameters
from tests.serving.test_serving_fuzz import fuzz_settings

keys = st.text(max_size=20)
rows = st.integers(min_value=1, max_value=64)
zones = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)
)
event_times = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9999, 12, 30), timezones=zones)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


def refused(parameters: dict, n: int, field: str) -> str:
    with pytest.raises(InvalidInput) as raised:
        log_parameters(parameters, n)
    assert raised.value.reason.startswith(f"parameters.{field}: "), raised.value.reason
    return raised.value.reason


@fuzz_settings(300)
@given(data=st.data(), n=rows)
def test_row_keys_as_a_json_array_of_one_string_per_row(data, n):
    row_keys = data.draw(st.lists(keys, min_size=n, max_size=n))
    text = json.dumps(row_keys)
    assert log_parameters({"row_key": text}, n) == (row_keys, None)  # gRPC: a string parameter
    assert log_parameters({"row_key": row_keys}, n) == (row_keys, None)  # REST: the JSON array itself


@fuzz_settings(200)
@given(key=keys.filter(lambda k: not k.lstrip().startswith("[")))
def test_one_row_takes_one_plain_string(key):
    assert log_parameters({"row_key": key}, 1) == ([key], None)
    refused({"row_key": key}, 2, "row_key")


@fuzz_settings(200)
@given(data=st.data(), n=rows)
def test_a_wrong_count_or_type_of_row_keys_is_refused(data, n):
    count = data.draw(st.integers(min_value=0, max_value=70).filter(lambda c: c != n))
    wrong_count = json.dumps(data.draw(st.lists(keys, min_size=count, max_size=count)))
    assert f"{count} keys for a request of {n} rows" in refused({"row_key": wrong_count}, n, "row_key")
    not_strings = data.draw(st.lists(st.integers() | st.none() | st.floats(), min_size=n, max_size=n))
    refused({"row_key": json.dumps(not_strings)}, n, "row_key")
    refused({"row_key": not_strings}, n, "row_key")
    refused({"row_key": data.draw(st.integers() | st.booleans() | st.floats())}, n, "row_key")
    refused({"row_key": "[" + data.draw(st.text(max_size=10)).replace("]", "")}, n, "row_key")


@fuzz_settings(300)
@given(moment=event_times)
def test_event_time_in_iso_8601_with_any_zone_and_as_epoch_seconds(moment):
    expected = moment.timestamp()
    assert log_parameters({"event_time": moment.isoformat()}, 1) == (None, expected)
    assert log_parameters({"event_time": moment.astimezone(UTC).isoformat().replace("+00:00", "Z")}, 1)[1] == expected
    assert log_parameters({"event_time": expected}, 1) == (None, expected)  # a number (REST, gRPC double_param)
    assert log_parameters({"event_time": int(expected)}, 1) == (None, float(int(expected)))  # gRPC int64_param


def test_the_documented_forms():
    assert (
        log_parameters({"event_time": "2013-12-05T12:00:00Z"}, 1)[1]
        == datetime(2013, 12, 5, 12, tzinfo=UTC).timestamp()
    )
    assert log_parameters({"event_time": 1386244800}, 1)[1] == 1386244800.0
    assert log_parameters({"row_key": '["a", "b"]', "event_time": "2013-12-05T07:00:00-05:00"}, 2) == (
        ["a", "b"],
        1386244800.0,
    )
    assert log_parameters({}, 3) == (None, None)
    assert log_parameters({"other": 1}, 3) == (None, None)  # parameters the log does not read are left alone


@pytest.mark.parametrize(
    "value",
    [
        "2013-12-05T12:00:00",  # no zone: which day would it be?
        "2013-12-05",
        "yesterday",
        "",
        "1386244800",  # epoch seconds travel as a number
        math.nan,
        math.inf,
        -math.inf,
        True,
        MAX_EVENT_TS + 1,
        MIN_EVENT_TS - 1,
        2**64 - 1,  # a uint64 parameter
        -(2**63),
        1e300,
        ["2013-12-05T12:00:00Z"],
        {"t": 1},
    ],
)
def test_a_malformed_event_time_is_refused(value):
    refused({"event_time": value}, 1, "event_time")


@fuzz_settings(500)
@given(row_key=json_values, event_time=json_values, n=rows)
def test_any_value_is_accepted_or_refused_naming_its_field(row_key, event_time, n):
    try:
        row_keys, event_ts = log_parameters({"row_key": row_key, "event_time": event_time}, n)
    except InvalidInput as exc:
        assert exc.reason.startswith(("parameters.row_key: ", "parameters.event_time: "))
        assert len(exc.reason) < 300  # client-supplied text is quoted cut
        return
    assert row_keys is None or (len(row_keys) == n and all(isinstance(k, str) for k in row_keys))
    assert event_ts is None or MIN_EVENT_TS <= event_ts <= MAX_EVENT_TS
