"""The traffic split's tag format and its routing by key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.traffic_split import Mode, TrafficSplit, answered_by_canary, bucket, shadowed

splits = st.builds(
    TrafficSplit,
    mode=st.sampled_from([Mode.SHADOW, Mode.CANARY]),
    canary_version=st.integers(1, 10_000).map(str),
    percent=st.floats(0, 100),
    shadow_sample=st.floats(0, 1),
)


@settings(max_examples=200, deadline=None)
@given(splits)
def test_a_split_survives_the_tag(split):
    assert TrafficSplit.load(split.dump()) == split


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_any_tag_text_loads_or_raises_value_error(text):
    try:
        TrafficSplit.load(text)
    except ValueError as error:
        assert "mlops.traffic_split" in str(error) or "traffic split" in str(error)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"mode": "canary", "percent": 5}', "canary_version"),
        ('{"mode": "canary", "canary_version": "2", "percent": 150}', "percent"),
        ('{"mode": "blue-green", "canary_version": "2"}', "mode"),
        ('{"mode": "canary", "canary_version": "2", "percent": "5"}', "percent"),
        ('{"mode": "off", "weight": 3}', "weight"),
        ('{"mode": "canary", "canary_version": {"v": 2}, "percent": 5}', "canary_version"),
        ('{"mode": "canary", "canary_version": "2", "percent": true}', "percent"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_a_malformed_tag_names_the_field(text, field):
    with pytest.raises(ValueError, match=field):
        TrafficSplit.load(text)


def test_no_tag_is_no_split():
    assert TrafficSplit.load(None) == TrafficSplit() and not answered_by_canary(TrafficSplit(), "k")


@pytest.mark.parametrize("percent", [5.0, 50.0])
def test_the_canary_gets_its_share_of_keys_within_tolerance(percent):
    split = TrafficSplit(Mode.CANARY, "2", percent)
    keys = [f"2013-12-{d:02d}/flight/{i}" for d in range(1, 21) for i in range(1000)]
    share = sum(answered_by_canary(split, k) for k in keys) / len(keys) * 100
    # 20,000 keys: the binomial standard deviation is under 0.36 points at 50%; allow four of them.
    assert abs(share - percent) < 1.5


def test_a_key_lands_on_the_same_side_in_another_process():
    keys = [f"request-{i}" for i in range(200)]
    here = [bucket(k) for k in keys]
    code = "import sys; from serving.traffic_split import bucket; print([bucket(k) for k in sys.argv[1:]])"
    there = subprocess.run([sys.executable, "-c", code, *keys], capture_output=True, text=True, check=True)
    assert eval(there.stdout) == here  # noqa: S307 - our own process printed a list of floats


def test_shadow_samples_by_key_and_never_routes():
    split = TrafficSplit(Mode.SHADOW, "2", shadow_sample=0.25)
    keys = [f"k{i}" for i in range(4000)]
    assert not any(answered_by_canary(split, k) for k in keys)
    assert abs(sum(shadowed(split, k) for k in keys) / len(keys) - 0.25) < 0.03
