"""The prediction log's record format, written by serving and read back by the pipeline; keep it stable.

- one JSON object a line: `{"ts": ISO-8601 UTC, "request_id": str, "model_name": str, "model_version": str,
  "inputs": {name: [flat values]}, "outputs": {name: [flat values]}}`, plus, when the request gave them,
  `"row_keys": [str, one per row]` and `"event_time": ISO-8601 UTC`; timestamps end in `Z`; non-finite
  floats are written as null;
- segments: `predictions-<event yyyymmdd>-<open UTC yyyymmddTHHMMSS>-<pid>-<seq>.jsonl`; every record
  of a segment has that UTC event day (the event time when given, else the receive time `ts`);
- shipped segments: `prediction_log/<yyyy>/<mm>/<dd>/<segment>` in the artifact store, so a month's
  data is one prefix listing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

try:  # optional: about 20x faster on numeric arrays; the stdlib fallback reads and writes the same format
    import orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    orjson = None

SHIPPED_PREFIX = "prediction_log"  # key prefix in the artifact store
SEGMENT_NAME = re.compile(r"^predictions-(\d{8})-\d{8}T\d{6}-\d+-\d+\.jsonl$")
_SEQUENCE = itertools.count(1)  # shared by every log in the process, so their segment names never collide
_SCALARS = (str, int, float, bool, type(None))


# --- writing -----------------------------------------------------------------------------------------


def encode_record(
    ts: float,
    request_id: str,
    model_name: str,
    model_version: str,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    *,
    row_keys: list[str] | None = None,
    event_ts: float | None = None,
    fast: bool = True,
) -> bytes:
    """One JSONL line (with its newline). Written as given: the decoder, not the request path, decides
    which records are rows (inputs of one flat length, one row key per row)."""
    use_orjson = fast and orjson is not None
    values = _fast_values if use_orjson else _values
    record = {
        "ts": _iso(ts),
        "request_id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "inputs": {k: values(_flat(v)) for k, v in inputs.items()},
        "outputs": {k: values(_flat(v)) for k, v in outputs.items()},
    }
    if row_keys is not None:
        record["row_keys"] = list(map(str, row_keys))
    if event_ts is not None:
        record["event_time"] = _iso(event_ts)
    if use_orjson:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")


def _flat(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1)


def _fast_values(flat: np.ndarray):
    if flat.dtype.kind in "SO":
        return _values(flat)
    return flat  # orjson writes numeric arrays itself, NaN/Inf as null


def _values(flat: np.ndarray) -> list:
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if np.isfinite(v) else None for v in flat.tolist()]
    if flat.dtype.kind in "SO":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return flat.tolist()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _iso(ts: float) -> str:
    return _utc(ts).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_day(ts: float, event_ts: float | None = None) -> date:
    """The UTC event day a record belongs to: that of its event time when given, else of its receive time."""
    return _utc(ts if event_ts is None else event_ts).date()


def new_segment_name(day: date) -> str:
    """A fresh closed-segment name for records of `day`, opened now by this process."""
    opened = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"predictions-{day:%Y%m%d}-{opened}-{os.getpid()}-{next(_SEQUENCE):06d}.jsonl"


# --- segment names and keys ----------------------------------------------------------------------------


def segment_day(name: str) -> date | None:
    """The UTC event day a closed segment's name carries; None for any other name."""
    match = SEGMENT_NAME.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:  # digits that are no date
        return None


def segment_key(name: str) -> str:
    """Where a closed segment lives in the artifact store. Raises ValueError for a name with no day."""
    day = segment_day(name)
    if day is None:
        raise ValueError(f"not a prediction log segment name: {name!r}")
    return f"{SHIPPED_PREFIX}/{day:%Y/%m/%d}/{name}"


def month_prefix(year: int, month: int) -> str:
    return f"{SHIPPED_PREFIX}/{year:04d}/{month:02d}/"


# --- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    time: datetime  # the event time when the request gave one, else the receive time (tz-aware UTC)
    received: datetime  # the server's receive time ("ts")
    request_id: str
    model_name: str
    model_version: str
    row_keys: tuple[str, ...]  # one per row: as logged, else derived from the request id
    inputs: dict[str, list]
    outputs: dict[str, list]

    @property
    def rows(self) -> int:
        """Rows in the request (the length of the first input)."""
        return len(next(iter(self.inputs.values()), ()))


@dataclass(frozen=True)
class DecodedSegment:
    records: tuple[LoggedRequest, ...]
    corrupt: int  # lines skipped: torn, not JSON, missing or ill-typed fields, rows of unequal length or keys


def decode_segment(data: bytes) -> DecodedSegment:
    """Every well-formed record of a segment, and how many lines were not; never raises on bad content."""
    lines = data.split(b"\n")
    torn = lines.pop()  # what follows the last newline: nothing, or a write cut short
    records = tuple(record for record in map(_decode_line, lines) if record is not None)
    return DecodedSegment(records, len(lines) - len(records) + (1 if torn else 0))


def _loads(line: bytes):
    return orjson.loads(line) if orjson is not None else json.loads(line)


def _decode_line(line: bytes) -> LoggedRequest | None:
    try:
        raw = _loads(line)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(raw, dict):
        return None
    received = _time(raw.get("ts"))
    event = _time(raw["event_time"]) if "event_time" in raw else received
    request_id, name, version = raw.get("request_id"), raw.get("model_name"), raw.get("model_version")
    inputs, outputs = _arrays(raw.get("inputs")), _arrays(raw.get("outputs"))
    if (
        received is None
        or event is None
        or not all(isinstance(v, str) for v in (request_id, name, version))
        or inputs is None
        or outputs is None
        or len({len(v) for v in inputs.values()}) > 1
    ):
        return None
    rows = len(next(iter(inputs.values()), ()))
    row_keys = raw.get("row_keys")
    if "row_keys" not in raw:  # records of servers before row keys, and requests that gave none
        row_keys = [request_id] if rows == 1 else [f"{request_id}:{i}" for i in range(rows)]
    elif not (isinstance(row_keys, list) and len(row_keys) == rows and all(isinstance(k, str) for k in row_keys)):
        return None
    return LoggedRequest(event, received, request_id, name, version, tuple(row_keys), inputs, outputs)


def _time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None  # the format is always UTC
    except (ValueError, OverflowError):
        return None


def _arrays(value) -> dict[str, list] | None:
    if not isinstance(value, dict):
        return None
    for values in value.values():
        if not (isinstance(values, list) and all(isinstance(v, _SCALARS) for v in values)):
            return None
    return value
