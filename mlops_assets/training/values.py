"""What the training and compression stages hand along the graph (no Dagster here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainedModel:
    """A trained checkpoint, its MLflow run and the lineage every candidate of it inherits."""

    family: str
    run_id: str
    checkpoint_key: str
    training_data_key: str
    val_auc: float
    hidden: list[int]
    parameters: int
    git_commit: str
    data_hash: str
    dagster_run_id: str
    train_months: str
    """Comma-separated 'YYYY-MM' months, as the MLflow tag holds them."""
    validation_month: str

    def lineage(self) -> dict[str, str]:
        return {
            "git_commit": self.git_commit,
            "data_hash": self.data_hash,
            "train_months": self.train_months,
            "validation_month": self.validation_month,
        }


@dataclass(frozen=True)
class CandidateOutcome:
    """What a candidate asset produced: a Candidate, or Skipped when the model's family cannot make it."""

    candidate: str


@dataclass(frozen=True)
class Candidate(CandidateOutcome):
    """One ONNX file the scorecard may pick: raw feature columns in, `probability` out, in its own MLflow run."""

    precision: str
    family: str
    run_id: str
    training_run_id: str
    onnx_key: str
    model_uri: str
    size_bytes: int
    parameters: int
    hidden: list[int]
    val_auc: float
    network_key: str | None = None
    """The network without the string front-end (float candidates): what the int8 quantizers start from."""
    checkpoint_key: str | None = None
    """The family's checkpoint (float candidates)."""
    source: str | None = None
    """The float candidate an int8 candidate was quantized from."""


@dataclass(frozen=True)
class Skipped(CandidateOutcome):
    """A candidate the model's family cannot make, and why; the scorecard leaves it out."""

    reason: str
