"""The prediction log on real files and real processes: rotation (by size and by event day), write
failures, recovery of segments left open by a killed process, retention and a bounded close."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, date, datetime

import numpy as np
import pytest

from serving.log_records import decode_segment, segment_day
from serving.log_segments import recover_segments
from serving.metrics import ServerStats
from serving.prediction_log import PredictionLog
from tests.serving.support import REPO_ROOT, wait_until

pytestmark = pytest.mark.timeout(60)

SEGMENT = re.compile(r"^predictions-\d{8}-\d{8}T\d{6}-\d+-\d+\.jsonl$")  # <event day>-<opened>-<pid>-<seq>
ARRAYS = {"x": np.arange(16, dtype=np.float32)}


def read_segment(path) -> list[dict]:
    assert SEGMENT.match(path.name), path.name
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"{path.name} ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def read_log(folder) -> list[dict]:
    return [record for path in sorted(folder.glob("*.jsonl")) for record in read_segment(path)]


def child(script: str, *args: str) -> subprocess.Popen:
    """A real Python process running `script` with this checkout importable."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def warnings():
    """Warnings of the prediction log (a handler on its own logger: serving's may not propagate)."""
    handler = logging.handlers.BufferingHandler(10_000)
    logger = logging.getLogger("serving.prediction_log")
    logger.addHandler(handler)
    yield handler.buffer
    logger.removeHandler(handler)


# --- format and rotation ---------------------------------------------------------------------------


def test_prediction_log_rotation_sampling_and_recovery(tmp_path):
    folder = tmp_path / "plog"
    log = PredictionLog(folder, max_bytes=2000, flush_interval_s=0.01)
    arrays = {"x": np.arange(20, dtype=np.float32).reshape(20, 1)}
    for i in range(30):
        log.submit(f"r{i}", "m", "1", arrays, {"y": np.array([[np.nan], [1.0]], np.float32)})
    log.close()
    segments = sorted(folder.glob("*.jsonl"))
    assert len(segments) > 3 and not list(folder.glob("*.open"))
    records = read_log(folder)
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(30)]
    assert records[0]["outputs"]["y"] == [None, 1.0]  # non-finite floats become null
    assert len({s.name.split("-")[4] for s in segments}) == len(segments)  # distinct sequence numbers

    never = PredictionLog(tmp_path / "never", sample_rate=0.0)
    assert not any(never.sampled() for _ in range(1000))
    never.close()
    half = PredictionLog(tmp_path / "half", sample_rate=0.5)
    picked = sum(half.sampled() for _ in range(4000))
    half.close()
    assert 1500 < picked < 2500

    # A segment left open by a dead process: the torn last line is dropped and the file closed.
    dead = folder / "predictions-20260101-20260101T000000-999999999-000001.jsonl.open"
    dead.write_text('{"request_id": "ok"}\n{"request_id": "tor')
    recovered = recover_segments(folder)
    assert [p.name for p in recovered] == ["predictions-20260101-20260101T000000-999999999-000001.jsonl"]
    assert recovered[0].read_text() == '{"request_id": "ok"}\n'


def utc(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_each_segment_holds_one_event_day(tmp_path):
    """A record of another day closes the segment, so a day's data is exactly its own segments."""
    log = PredictionLog(tmp_path, flush_interval_s=60)  # all buffered: one write pass sees every day change
    days = [(2013, 12, 1, 23, 59, 59), (2013, 12, 1, 12), (2013, 12, 2, 0, 0, 0), (2013, 12, 1, 8)]
    for i, when in enumerate(days):
        log.submit(f"e{i}", "m", "1", ARRAYS, ARRAYS, row_keys=[f"k{i}:{j}" for j in range(16)], event_ts=utc(*when))
    log.submit("live", "m", "1", ARRAYS, ARRAYS)  # no event time: the day it was received
    bad = log.submit("nan", "m", "1", ARRAYS, ARRAYS, event_ts=float("nan"))
    assert bad and log.close(5)

    segments = sorted(tmp_path.glob("*.jsonl"), key=lambda p: p.name.split("-")[4])  # in the order written
    assert all(SEGMENT.match(p.name) for p in segments) and not list(tmp_path.glob("*.open"))
    decoded = [decode_segment(p.read_bytes()) for p in segments]
    assert [[r.request_id for r in d.records] for d in decoded] == [["e0", "e1"], ["e2"], ["e3"], ["live"]]
    assert all(d.corrupt == 0 for d in decoded)
    for path, segment in zip(segments, decoded, strict=True):
        assert {r.time.date() for r in segment.records} == {segment_day(path.name)}
    assert segment_day(segments[-1].name) == datetime.now(UTC).date() != date(2013, 12, 1)
    first = decoded[0].records[0]
    assert first.time == datetime(2013, 12, 1, 23, 59, 59, tzinfo=UTC) and first.received > first.time
    assert first.row_keys == tuple(f"k0:{j}" for j in range(16))
    assert log.dropped == 1  # the NaN event time, counted as encode_error


# --- write failures ----------------------------------------------------------------------------------

FULL_DISK = """
import json, resource, signal, sys, time
import numpy as np
from serving.metrics import ServerStats
from serving.prediction_log import PredictionLog

folder, limit = sys.argv[1], int(sys.argv[2])
stats = ServerStats()
log = PredictionLog(folder, stats=stats, flush_interval_s=0.002)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
arrays = {"x": np.arange(16, dtype=np.float32)}
submitted = 0
for chunk in range(40):
    for _ in range(50):
        log.submit(f"r{submitted:05d}", "m", "1", arrays, arrays)
        submitted += 1
    while log.written + log.dropped < submitted:
        time.sleep(0.001)
closed = log.close(10)
print(json.dumps({"submitted": submitted, "closed": closed, "written": stats.log_written,
                  "dropped": stats.log_dropped}))
"""


def test_a_full_disk_is_counted_and_the_writer_goes_on_in_new_segments(tmp_path):
    limit = 16 * 1024  # about 60 records a file: every segment fills up and fails
    process = child(FULL_DISK, str(tmp_path), str(limit))
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    result = json.loads(out)
    assert result["closed"] is True
    assert set(result["dropped"]) == {"write_error"} and result["dropped"]["write_error"] > 0
    assert result["written"] + result["dropped"]["write_error"] == result["submitted"]

    assert not list(tmp_path.glob("*.open"))
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert len(segments) >= 10  # each failure closed its segment and the next batch opened a new one
    assert all(path.stat().st_size <= limit for path in segments)
    per_segment = [read_segment(path) for path in segments]
    assert all(per_segment)
    ids = [r["request_id"] for records in per_segment for r in records]
    assert len(ids) == result["written"] and ids == sorted(set(ids))
    assert ids[-1] >= f"r{result['submitted'] - 100:05d}"  # still writing at the end


def test_a_descriptor_closed_under_the_writer_is_counted_and_a_new_segment_opened(tmp_path, warnings):
    stats = ServerStats()
    log = PredictionLog(tmp_path, stats=stats, flush_interval_s=0.005)
    log.submit("before", "m", "1", ARRAYS, ARRAYS)
    wait_until(lambda: log.written == 1, timeout=5, what="the first record written")
    os.close(log._file.fileno())  # the fault: EBADF on the next write

    log.submit("lost", "m", "1", ARRAYS, ARRAYS)
    wait_until(lambda: log.dropped == 1, timeout=5, what="the failed write counted")
    assert log._file is None and stats.log_dropped == {"write_error": 1}
    assert [(w.levelname, w.errno) for w in warnings if hasattr(w, "errno")] == [("WARNING", "EBADF")]

    log.submit("after", "m", "1", ARRAYS, ARRAYS)
    assert log.close(5)
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert [[r["request_id"] for r in read_segment(path)] for path in segments] == [["before"], ["after"]]
    assert not list(tmp_path.glob("*.open")) and stats.log_written == 2


# --- recovery ------------------------------------------------------------------------------------------

WRITER = """
import sys, time
import numpy as np
from serving.prediction_log import PredictionLog

log = PredictionLog(sys.argv[1], flush_interval_s=0.005)
log.submit("r1", "m", "1", {"x": np.zeros(2)}, {"y": np.ones(1)})
while log.written < 1:
    time.sleep(0.005)
print("written", flush=True)
sys.stdin.read()  # until the test closes our stdin
print(log.close(5), flush=True)
"""


def test_segments_of_killed_processes_are_recovered_and_live_ones_left_alone(tmp_path):
    dead, alive = child(WRITER, str(tmp_path)), child(WRITER, str(tmp_path))
    assert dead.stdout.readline() == "written\n" and alive.stdout.readline() == "written\n"
    dead.send_signal(signal.SIGKILL)
    dead.wait(5)
    (killed,) = tmp_path.glob(f"predictions-*-{dead.pid}-*.jsonl.open")
    (live,) = tmp_path.glob(f"predictions-*-{alive.pid}-*.jsonl.open")
    with open(killed, "ab") as segment:
        segment.write(b'{"request_id": "tor')  # a write the kill cut short
    # Under our own (live) pid: only the lock says whether a writer still holds the segment.
    day, stamp = killed.name.split("-")[1:3]
    reused = killed.rename(tmp_path / f"predictions-{day}-{stamp}-{os.getpid()}-000001.jsonl.open")
    live_bytes = live.read_bytes()

    PredictionLog(tmp_path).close()

    assert not reused.exists()
    assert [r["request_id"] for r in read_segment(reused.with_suffix(""))] == ["r1"]
    assert live.read_bytes() == live_bytes  # untouched while its writer lives
    out, _ = alive.communicate("", timeout=10)
    assert out == "True\n" and alive.returncode == 0
    assert not list(tmp_path.glob("*.open"))
    assert [r["request_id"] for r in read_log(tmp_path)] == ["r1", "r1"]


# --- retention and shutdown ---------------------------------------------------------------------------


def test_retention_deletes_the_oldest_closed_segments_and_counts_the_bytes(tmp_path, warnings):
    old = [tmp_path / f"predictions-2020010{day}-2020010{day}T000000-1-000001.jsonl" for day in (1, 2, 3)]
    for path in old:
        path.write_bytes(b'{"request_id":"old"}\n' * 50)  # 1050 bytes each
    stats = ServerStats()
    log = PredictionLog(tmp_path, stats=stats, max_total_bytes=2 * 1050 + 600)
    log.submit("new", "m", "1", ARRAYS, ARRAYS)  # a segment of a few hundred bytes
    assert log.close(5)

    assert [path.exists() for path in old] == [False, True, True]
    assert stats.log_evicted_bytes == 1050
    assert sum(path.stat().st_size for path in tmp_path.glob("*.jsonl")) <= 2 * 1050 + 600
    assert read_log(tmp_path)[-1]["request_id"] == "new"
    assert any(getattr(w, "segments", None) == 1 for w in warnings)

    # A second log in this process (every record its own segment): its names must not collide with the first's.
    unlimited = PredictionLog(tmp_path, max_total_bytes=0, max_bytes=1)
    for i in range(5):
        unlimited.submit(f"u{i}", "m", "1", ARRAYS, ARRAYS)
    assert unlimited.close(5)
    assert len(list(tmp_path.glob("*.jsonl"))) == 3 + 5


def test_close_writes_the_buffer_and_is_bounded(tmp_path):
    stats = ServerStats()
    log = PredictionLog(tmp_path / "small", stats=stats, flush_interval_s=60)  # nothing written before close
    for i in range(1000):
        log.submit(f"r{i}", "m", "1", ARRAYS, ARRAYS)
    assert log.close(timeout=10) is True
    assert [p.suffix for p in (tmp_path / "small").iterdir()] == [".jsonl"]
    assert [r["request_id"] for r in read_log(tmp_path / "small")] == [f"r{i}" for i in range(1000)]
    assert log.submit("late", "m", "1", ARRAYS, ARRAYS) is False and stats.log_dropped == {"closed": 1}

    busy = PredictionLog(tmp_path / "busy", flush_interval_s=60)
    for i in range(50_000):
        busy.submit(f"r{i}", "m", "1", ARRAYS, ARRAYS)
    assert busy.close(timeout=0) is False  # still writing: a shutdown does not wait for it
    assert busy.close(timeout=30) is True
    assert len(read_log(tmp_path / "busy")) == 50_000
