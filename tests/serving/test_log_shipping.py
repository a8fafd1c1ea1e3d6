"""Shipping closed prediction log segments on real files, real processes and a real S3 server (moto):
a destination that is down, unreachable or read-only gets them later with nothing lost and every failure
counted; torn segments are recovered and shipped; workers sharing a folder never ship one twice; an
object in the store is never replaced by different content; close stays bounded when the store hangs."""

from __future__ import annotations

import json
import logging
import logging.handlers
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import numpy as np
import pytest

from serving.log_records import decode_segment, encode_record, new_segment_name, segment_key
from serving.log_shipping import S3Destination, SegmentConflict
from serving.metrics import ServerStats
from serving.prediction_log import PredictionLog
from tests.deploy.services import AWS_TEST_ENV, s3_server
from tests.serving.support import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.timeout(90)

ARRAYS = {"x": np.arange(4, dtype=np.float32)}
FAST = {"ship_backoff_s": (0.02, 0.2), "flush_interval_s": 0.005}  # retries within a test's seconds
DEC_1 = datetime(2013, 12, 1, 18, tzinfo=UTC).timestamp()


def submit(log: PredictionLog, ids, day_offsets=(0,)) -> None:
    """One record per id, on the event days `DEC_1 + offset days` in turn."""
    for i, request_id in enumerate(ids):
        log.submit(request_id, "m", "1", ARRAYS, ARRAYS, event_ts=DEC_1 + 86400 * day_offsets[i % len(day_offsets)])


def shipped(root: Path) -> dict[str, list[str]]:
    """Request ids of every segment in a local store, by key; every one complete and decodable."""
    objects = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = str(path.relative_to(root))
            decoded = decode_segment(path.read_bytes())
            assert decoded.corrupt == 0 and key == segment_key(path.name), key
            objects[key] = [r.request_id for r in decoded.records]
    return objects


def ids_of(objects: dict[str, list[str]]) -> list[str]:
    return sorted(i for ids in objects.values() for i in ids)


def local_segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("predictions-*"))


@pytest.fixture
def warnings():
    handler = logging.handlers.BufferingHandler(10_000)
    logger = logging.getLogger("serving.log_shipping")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # "resumed" is news, not a warning
    yield handler.buffer
    logger.removeHandler(handler)
    logger.setLevel(level)


# --- a local store -------------------------------------------------------------------------------------


def test_closed_segments_ship_by_event_day_and_leave_the_disk(tmp_path):
    folder, store = tmp_path / "plog", tmp_path / "artifacts"
    stats = ServerStats()
    log = PredictionLog(folder, ship_to=f"file://{store}", stats=stats, max_bytes=600, **FAST)
    ids = [f"r{i:03d}" for i in range(40)]
    submit(log, ids, day_offsets=(0, 0, 1))
    assert log.close(10)

    objects = shipped(store)
    assert ids_of(objects) == ids
    assert {key.rsplit("/", 1)[0] for key in objects} == {"prediction_log/2013/12/01", "prediction_log/2013/12/02"}
    assert log.shipper.shipped == stats.log_shipped == len(objects) > 2 and log.shipper.ship_errors == 0
    assert local_segments(folder) == [] and log.shipper.pending == 0
    assert all(oct(path.stat().st_mode)[-3:] == "644" for path in store.rglob("*.jsonl"))


def test_an_unreachable_store_gets_the_segments_once_it_is_back(tmp_path, warnings):
    folder, blocker = tmp_path / "plog", tmp_path / "mount"
    blocker.write_text("not a folder")  # the store's mount point is missing: every upload fails ENOTDIR
    stats = ServerStats()
    log = PredictionLog(folder, ship_to=str(blocker / "artifacts"), stats=stats, max_age_s=0.05, **FAST)
    submit(log, ["a", "b"])
    wait_until(lambda: log.shipper.ship_errors >= 4, timeout=10, what="retried uploads")
    assert log.shipper.pending == 1 and log.shipper.shipped == 0  # the segment waits on the local disk
    assert stats.log_ship_errors == {"ENOTDIR": log.shipper.ship_errors}
    assert sum("could not ship" in w.getMessage() for w in warnings) == 1  # once per WARN_INTERVAL_S

    blocker.unlink()  # the store is back
    submit(log, ["c"])
    wait_until(lambda: log.shipper.pending == 0 and log.shipper.shipped >= 2, timeout=10, what="shipped later")
    assert log.close(10)
    assert ids_of(shipped(blocker / "artifacts")) == ["a", "b", "c"] and local_segments(folder) == []
    assert any("resumed" in w.getMessage() for w in warnings)


def refuse_then_allow(folder: Path, store: Path, user: int | None, results) -> None:
    """In a forked child: ship to a read-only store, then make it writable."""
    if user is not None:  # root writes through any mode bits: drop to an unprivileged user
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    store.chmod(0o555)
    log = PredictionLog(folder, ship_to=str(store), max_age_s=0.05, **FAST)
    log.submit("r1", "m", "1", ARRAYS, ARRAYS)
    wait_until(lambda: log.shipper.ship_errors >= 3, timeout=10, what="refused uploads")
    refused = {"errors": log.shipper.ship_errors, "pending": log.shipper.pending, "shipped": log.shipper.shipped}
    store.chmod(0o755)
    wait_until(lambda: log.shipper.shipped == 1, timeout=10, what="shipped once writable")
    results.put({"refused": refused, "closed": log.close(10), "errors": log.shipper.ship_errors})


def test_a_read_only_store_refuses_until_it_is_writable():
    user = 65534 if os.geteuid() == 0 else None  # "nobody"
    base = Path(tempfile.mkdtemp(prefix="mlops-ro-", dir="/tmp"))  # outside pytest's root-only tmp_path
    try:
        folder, store = base / "plog", base / "artifacts"
        for path in (folder, store):
            path.mkdir()
            if user is not None:
                os.chown(path, user, user)
        base.chmod(0o755)
        context = multiprocessing.get_context("fork")  # the venv's python may not be executable by nobody
        results = context.Queue()
        child = context.Process(target=refuse_then_allow, args=(folder, store, user, results))
        child.start()
        result = results.get(timeout=60)
        child.join(10)
        assert child.exitcode == 0
        assert result["refused"]["pending"] == 1 and result["refused"]["shipped"] == 0
        assert result["closed"] is True and result["errors"] >= 3
        assert ids_of(shipped(store)) == ["r1"] and local_segments(folder) == []
    finally:
        shutil.rmtree(base)


def test_a_torn_segment_of_a_dead_process_is_recovered_then_shipped(tmp_path):
    folder, store = tmp_path / "plog", tmp_path / "artifacts"
    folder.mkdir()
    good = encode_record(DEC_1, "kept", "m", "1", ARRAYS, ARRAYS, event_ts=DEC_1)
    torn = folder / (new_segment_name(date(2013, 12, 1)) + ".open")
    torn.write_bytes(good + good[:25])  # its writer was killed in the middle of a line
    log = PredictionLog(folder, ship_to=str(store), **FAST)
    assert log.close(10)
    objects = shipped(store)
    assert objects == {segment_key(torn.name.removesuffix(".open")): ["kept"]}
    assert local_segments(folder) == []


WORKER = """
import json, sys
import numpy as np
from serving.prediction_log import PredictionLog

folder, store, tag = sys.argv[1:4]
log = PredictionLog(folder, ship_to=store, max_bytes=500, flush_interval_s=0.002, ship_backoff_s=(0.02, 0.2))
for i in range(150):
    event_ts = 1385920800.0 + 40000 * (i % 3)  # 2013-12-01 18:00 UTC and the two days after
    log.submit(f"{tag}{i:03d}", "m", "1", {"x": np.zeros(2)}, {"y": np.ones(2)}, event_ts=event_ts)
print(json.dumps({"closed": log.close(20), "shipped": log.shipper.shipped, "errors": log.shipper.ship_errors}))
"""


def test_workers_sharing_a_folder_ship_every_segment_exactly_once(tmp_path):
    folder, store = tmp_path / "plog", tmp_path / "artifacts"
    folder.mkdir()
    left = [f"old{i:03d}" for i in range(200)]  # segments a previous server closed but never shipped
    for request_id in left:
        line = encode_record(DEC_1, request_id, "m", "1", ARRAYS, ARRAYS, event_ts=DEC_1)
        (folder / new_segment_name(date(2013, 12, 1))).write_bytes(line)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(folder), str(store), tag],
            cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for tag in ("a", "b")
    ]
    results = [json.loads(worker.communicate(timeout=60)[0]) for worker in workers]
    assert all(r["closed"] and r["errors"] == 0 for r in results)

    objects = shipped(store)
    expected = sorted(left + [f"{tag}{i:03d}" for tag in "ab" for i in range(150)])
    assert ids_of(objects) == expected  # nothing lost, nothing twice
    assert sum(r["shipped"] for r in results) == len(objects)  # and no segment uploaded twice
    assert local_segments(folder) == []


def test_an_object_in_the_store_is_never_replaced(tmp_path):
    folder, store = tmp_path / "plog", tmp_path / "artifacts"
    folder.mkdir()
    ours = {}
    for request_id in ("clash", "again"):
        name = new_segment_name(date(2013, 12, 1))
        ours[request_id] = encode_record(DEC_1, request_id, "m", "1", ARRAYS, ARRAYS)
        (folder / name).write_bytes(ours[request_id])
        (store / segment_key(name)).parent.mkdir(parents=True, exist_ok=True)
        theirs = encode_record(DEC_1, "another server's", "m", "1", ARRAYS, ARRAYS)
        # "clash": another pod's segment took the name; "again": our own upload, before a crash kept the file
        (store / segment_key(name)).write_bytes(theirs if request_id == "clash" else ours[request_id])
    stats = ServerStats()
    log = PredictionLog(folder, ship_to=str(store), stats=stats, **FAST)
    assert log.close(10)

    objects = shipped(store)
    assert sorted(objects.values()) == [["again"], ["another server's"], ["clash"]]
    assert stats.log_ship_errors == {"SegmentConflict": 1} and local_segments(folder) == []


def test_retention_bounds_the_disk_while_the_store_is_down(tmp_path):
    folder, blocker = tmp_path / "plog", tmp_path / "mount"
    blocker.write_text("not a folder")
    stats = ServerStats()
    line = len(encode_record(DEC_1, "r000", "m", "1", ARRAYS, ARRAYS, event_ts=DEC_1))
    log = PredictionLog(folder, ship_to=str(blocker / "a"), stats=stats, max_bytes=1, max_total_bytes=5 * line, **FAST)
    ids = [f"r{i:03d}" for i in range(20)]  # one segment each
    submit(log, ids)
    wait_until(lambda: log.written == 20, timeout=10, what="records written")
    assert log.close(10)
    assert sum(path.stat().st_size for path in local_segments(folder)) <= 5 * line
    assert stats.log_evicted_bytes == 15 * line  # counted: the oldest went first

    blocker.unlink()
    PredictionLog(folder, ship_to=str(blocker / "a"), **FAST).close(10)  # the next start ships what is left
    assert ids_of(shipped(blocker / "a")) == ids[15:]


# --- S3 (moto) -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the S3 server, with the environment the shipper's boto3 reads."""
    for name, value in {**AWS_TEST_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3"), f"plog-{time.monotonic_ns()}"


def s3_shipped(client, bucket: str, prefix: str) -> dict[str, list[str]]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            decoded = decode_segment(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            assert decoded.corrupt == 0
            objects[item["Key"]] = [r.request_id for r in decoded.records]
    return objects


def test_segments_ship_to_s3_and_read_back(s3, tmp_path):
    client, bucket = s3
    client.create_bucket(Bucket=bucket)
    log = PredictionLog(tmp_path, ship_to=f"s3://{bucket}/mlops", max_bytes=600, **FAST)
    ids = [f"r{i:03d}" for i in range(30)]
    submit(log, ids, day_offsets=(0, 31))  # 2013-12-01 and 2014-01-01
    assert log.close(10) and log.shipper.ship_errors == 0

    objects = s3_shipped(client, bucket, "mlops/prediction_log/")
    assert ids_of(objects) == ids and local_segments(tmp_path) == []
    assert {key.split("/")[2] for key in objects} == {"2013", "2014"}
    assert len(s3_shipped(client, bucket, "mlops/prediction_log/2014/01/")) == log.shipper.shipped - len(
        s3_shipped(client, bucket, "mlops/prediction_log/2013/12/")
    )

    key = next(iter(objects)).removeprefix("mlops/")
    body = client.get_object(Bucket=bucket, Key="mlops/" + key)["Body"].read()
    store = S3Destination(bucket, "mlops")
    store.put(key, body)  # our own upload again (its reply was lost): fine
    with pytest.raises(SegmentConflict):
        store.put(key, b"different\n")
    assert client.get_object(Bucket=bucket, Key="mlops/" + key)["Body"].read() == body


def test_s3_unreachable_then_back_loses_nothing(s3, s3_endpoint, tmp_path, monkeypatch):
    client, bucket = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    stats = ServerStats()
    down = PredictionLog(tmp_path, ship_to=f"s3://{bucket}/p", stats=stats, **FAST)
    submit(down, ["a", "b"])
    assert down.close(10)  # one last try, then the segment waits for the next start
    assert down.shipper.ship_errors >= 1 and stats.log_ship_errors and len(local_segments(tmp_path)) == 1

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the endpoint answers again, the bucket is not there yet
    stats = ServerStats()
    log = PredictionLog(tmp_path, ship_to=f"s3://{bucket}/p", stats=stats, **FAST)
    wait_until(lambda: stats.log_ship_errors.get("NoSuchBucket", 0) >= 2, timeout=10, what="NoSuchBucket retries")
    client.create_bucket(Bucket=bucket)
    submit(log, ["c"])
    assert log.close(10)
    assert ids_of(s3_shipped(client, bucket, "p/")) == ["a", "b", "c"] and local_segments(tmp_path) == []


def test_close_is_bounded_when_the_store_hangs(s3, tmp_path, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
        log = PredictionLog(tmp_path, ship_to=f"s3://{s3[1]}/p", **FAST)
        submit(log, ["a"])
        started = time.monotonic()
        assert log.close(1.0) is False
        assert time.monotonic() - started < 2.0
        assert len(local_segments(tmp_path)) == 1  # still here, for the next start
