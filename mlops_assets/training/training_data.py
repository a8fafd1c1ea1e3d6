"""training_data: the rows the next model learns from, audited by blocking checks before any epoch runs.

Batch rows of the training months, with served traffic and its delayed labels standing in for the
flights the server answered (feedback.py holds the rule). Two blocking checks refuse to train:
`feedback_floors` (volume, label coverage, served share) and `holdout_untouched` (the month the
evaluation and scorecard judge on never reaches training).
"""

from dataclasses import asdict, dataclass

import dagster as dg
import pandas as pd

from mlops_assets import months
from mlops_assets.as_of import AsOfConfig
from mlops_assets.features.assets import load_features
from mlops_assets.lineage import data_hash
from mlops_assets.metadata import readable
from mlops_assets.monitoring.outcomes import outcomes_key
from mlops_assets.monitoring.served import served_rows
from mlops_assets.training import feedback
from resources import ArtifactStore, ServedPredictions

FLOORS_CHECK = "feedback_floors"
HOLDOUT_CHECK = "holdout_untouched"


class TrainingDataConfig(AsOfConfig):
    train_months: list[str] = list(months.FIRST_WINDOW.train_months)
    """Partitions ('YYYY-MM') the network learns from."""
    validation_month: str = months.FIRST_WINDOW.validation_month
    """Partition used to pick the best epoch."""
    holdout_month: str | None = None
    """The month evaluation judges on, which training must never see. Default: the scorecard's held-out month."""
    served_traffic: bool = True
    """Train on what the server saw: in a month with served traffic, its rows labelled by the outcomes that
    have arrived by as_of replace the batch rows of the same flights."""
    min_rows: int = 5_000
    """Fewest training rows; below it the model would learn noise."""
    min_month_rows: int = 1_000
    """Fewest rows of any one training month, so a near-empty month shows instead of hiding in the total."""
    min_label_coverage: float = 0.9
    """Fewest share of the served rows whose outcome has arrived; below it, feedback training would learn
    from the flights whose outcomes come back first."""
    min_served_share: float = 0.0
    """Fewest share of the rows that come from served traffic (0: batch rows alone may train)."""

    def holdout(self) -> str:
        return self.holdout_month or months.held_out(self.train_months, self.validation_month)


@dataclass(frozen=True)
class TrainingData:
    key: str  # Parquet in the artifact store: flight_id, the features, is_late
    train_months: tuple[str, ...]
    validation_month: str
    holdout_month: str
    rows: int
    served_share: float
    label_coverage: float | None  # None when no training month had served traffic
    data_hash: str


def _sources_table(sources: list[feedback.MonthRows]) -> dg.MetadataValue:
    lines = ["| month | batch rows | served rows | labelled served rows |", "|---|---|---|---|"]
    lines += [f"| {s.month} | {s.batch_rows} | {s.served_rows} | {s.labelled_rows} |" for s in sources]
    return dg.MetadataValue.md("\n".join(lines))


def _check(name: str, failures: list[str], metadata: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failures) or None,
        metadata=readable({**metadata, "failures": "; ".join(failures) or "none"}),
    )


@dg.asset(
    group_name="training",
    kinds={"parquet"},
    deps=["validated_features", "outcomes"],
    check_specs=[
        dg.AssetCheckSpec(
            FLOORS_CHECK,
            asset="training_data",
            blocking=True,
            description="Enough rows, months and labelled served traffic to train on.",
        ),
        dg.AssetCheckSpec(
            HOLDOUT_CHECK,
            asset="training_data",
            blocking=True,
            description="The held-out month and the validation month reach no training row.",
        ),
    ],
)
def training_data(
    context: dg.AssetExecutionContext, config: TrainingDataConfig, store: ArtifactStore, served: ServedPredictions
):
    """The audited training rows of a window: batch features, with served traffic and its arrived labels."""
    as_of, holdout = config.evaluation_time(), config.holdout()
    frames, sources = [], []
    for month in config.train_months:
        traffic = outcomes = None
        if config.served_traffic:
            traffic = served_rows(served.read_month(month).records, *months.bounds(month)).frame
            if not traffic.empty and store.exists(outcomes_key(month)):
                outcomes = store.read_frame(outcomes_key(month))
        frame, source = feedback.month_rows(month, load_features(store, [month]), traffic, outcomes, as_of)
        frames.append(frame)
        sources.append(source)
    frame = pd.concat(frames, ignore_index=True)
    key = f"training_data/{context.run_id}.parquet"
    store.write_frame(key, frame)
    value = TrainingData(
        key=key,
        train_months=tuple(config.train_months),
        validation_month=config.validation_month,
        holdout_month=holdout,
        rows=len(frame),
        served_share=feedback.served_share(sources),
        label_coverage=feedback.label_coverage(sources),
        data_hash=data_hash(frame),
    )
    figures = {
        "rows": value.rows,
        "served_share": value.served_share,
        "label_coverage": "no served traffic" if value.label_coverage is None else value.label_coverage,
    }
    floors = feedback.Floors(config.min_rows, config.min_month_rows, config.min_label_coverage, config.min_served_share)
    yield dg.Output(
        value,
        metadata=readable(
            {
                **figures,
                "train_months": ",".join(config.train_months),
                "validation_month": config.validation_month,
                "holdout_month": holdout,
                "as_of": as_of.isoformat(),
                "data_hash": value.data_hash,
                "sources": _sources_table(sources),
                "path": store.uri(key),
            }
        ),
    )
    yield _check(FLOORS_CHECK, feedback.floor_failures(sources, floors), {**figures, **asdict(floors)})
    yield _check(
        HOLDOUT_CHECK,
        feedback.holdout_failures(frame, config.train_months, config.validation_month, holdout),
        {"holdout_month": holdout, "validation_month": config.validation_month},
    )
