"""Served traffic as a frame: one row per row the server scored, with its key, version, score and time.

No Dagster here. The records come from resources.ServedPredictions (the shipped prediction log).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from mlops_assets.features_spec import FEATURES, NUMERIC_FEATURES, ROW_KEY
from serving.log_records import LoggedRequest

SCORE_OUTPUT = "probability"  # the ONNX output every candidate has (mlops_assets/training/onnx_export.py)
SERVED_COLUMNS = [ROW_KEY, "model_version", "score", "time"]


@dataclass(frozen=True)
class ServedRows:
    frame: pd.DataFrame  # FEATURES as the server received them, then SERVED_COLUMNS
    requests: int
    skipped: int  # requests in the period without every feature column (another model's traffic)

    @property
    def model_versions(self) -> list[str]:
        return sorted(self.frame["model_version"].unique()) if len(self.frame) else []


def served_rows(records: Iterable[LoggedRequest], start: datetime, end: datetime) -> ServedRows:
    """The rows of the requests with start <= time < end."""
    columns: dict[str, list] = {c: [] for c in [*FEATURES, *SERVED_COLUMNS]}
    requests = skipped = 0
    for record in records:
        if not start <= record.time < end:
            continue
        rows = {len(record.inputs.get(c, ())) for c in FEATURES}
        if any(c not in record.inputs for c in FEATURES) or len(rows) != 1:
            skipped += 1
            continue
        (count,) = rows
        requests += 1
        for column in FEATURES:
            columns[column].extend(record.inputs[column])
        scores = record.outputs.get(SCORE_OUTPUT, ())
        columns["score"].extend(scores if len(scores) == count else [None] * count)
        columns[ROW_KEY].extend(record.row_keys if len(record.row_keys) == count else [None] * count)
        columns["model_version"].extend([record.model_version] * count)
        columns["time"].extend([record.time] * count)
    frame = pd.DataFrame(columns)
    for column in [*NUMERIC_FEATURES, "score"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["model_version"] = frame["model_version"].astype(str)
    return ServedRows(frame=frame, requests=requests, skipped=skipped)
