"""The request parameters the prediction log keeps, `row_key` and `event_time`, read the same for both wires.

OIP requests carry a `parameters` map (gRPC `ModelInferRequest.parameters`, REST's top-level
`"parameters"` object); these two let a served prediction be joined later with its outcome:

- `row_key`: the rows' keys; one string for a one-row request, or a JSON array of one string per
  row (over gRPC a string parameter holding that array's text; a string starting with `[` is
  always read as such an array);
- `event_time`: when the rows happened: ISO-8601 with a zone (`2013-12-05T12:00:00Z`) or epoch
  seconds as a number; it picks the UTC day of the record's segment.

A malformed value raises `InvalidInput` naming the field, before the model runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from serving.errors import InvalidInput, quoted

ROW_KEY, EVENT_TIME = "row_key", "event_time"
NAMES = (ROW_KEY, EVENT_TIME)
# Event times a record can hold: its ISO form must have a four-digit year in every time zone.
MIN_EVENT_TS = datetime(1, 1, 2, tzinfo=UTC).timestamp()
MAX_EVENT_TS = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


def log_parameters(parameters: Mapping[str, object], rows: int) -> tuple[list[str] | None, float | None]:
    """(row keys, event time in epoch seconds) of a request of `rows` rows; None for each one not given."""
    if not parameters:
        return None, None
    row_keys = parameters.get(ROW_KEY)
    event_time = parameters.get(EVENT_TIME)
    return (
        None if row_keys is None else _row_keys(row_keys, rows),
        None if event_time is None else _event_ts(event_time),
    )


def _row_keys(value: object, rows: int) -> list[str]:
    where = f"parameters.{ROW_KEY}"
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            if rows != 1:
                raise InvalidInput(f"{where}: one key for a request of {rows} rows; send a JSON array of {rows}")
            return [value]
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise InvalidInput(f"{where}: '{quoted(value)}' is not a JSON array of strings") from None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise InvalidInput(f"{where}: must be a string or a JSON array of strings, one per row")
    if len(value) != rows:
        raise InvalidInput(f"{where}: {len(value)} keys for a request of {rows} rows")
    return value


def _event_ts(value: object) -> float:
    where = f"parameters.{EVENT_TIME}"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            ts = parsed.timestamp() if parsed.tzinfo is not None else None
        except (ValueError, OverflowError):
            ts = None
        if ts is None:
            raise InvalidInput(
                f"{where}: '{quoted(value)}' is not ISO-8601 with a zone (2013-12-05T12:00:00Z) nor epoch seconds"
            )
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{where}: epoch seconds must be a finite number, got {value}")
        ts = value  # an int is compared exactly: a huge one is out of range, not an overflow
    else:
        raise InvalidInput(f"{where}: must be an ISO-8601 string or epoch seconds")
    if not MIN_EVENT_TS <= ts <= MAX_EVENT_TS:
        raise InvalidInput(f"{where}: {quoted(str(value))} is outside the years 1 to 9999")
    return float(ts)
