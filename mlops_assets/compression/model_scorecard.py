"""model_scorecard: every candidate measured on one held-out month and ranked; the winner is the challenger."""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mlops_assets import months
from mlops_assets.compression import scorecard
from mlops_assets.compression.float_candidates import made
from mlops_assets.features.assets import load_features
from mlops_assets.metadata import readable
from mlops_assets.training.values import Candidate, CandidateOutcome, Skipped, TrainedModel
from resources import ArtifactStore, MlflowRegistry


class WeightProfile(dg.Config):
    """Relative weight of each axis in the score (any non-negative scale; an axis left out weighs 0)."""

    accuracy: float = 0.0
    """Weight of ROC AUC on the held-out month."""
    latency: float = 0.0
    """Weight of p50 and p99 latency at batch 1, one thread."""
    throughput: float = 0.0
    """Weight of rows/s at batch 256, all threads."""
    size: float = 0.0
    """Weight of the ONNX file size."""
    memory: float = 0.0
    """Weight of the onnxruntime session's peak memory."""
    robustness: float = 0.0
    """Weight of AUC under Gaussian noise on numeric features and under unseen categories."""
    cost: float = 0.0
    """Weight of the cost per 1,000 predictions (CPU-seconds, one thread, times the vCPU-hour price)."""


PROFILES = {
    "realtime": {
        "accuracy": 3,
        "latency": 4,
        "throughput": 0.5,
        "size": 0.5,
        "memory": 0.5,
        "robustness": 1,
        "cost": 0.5,
    },
    "batch": {"accuracy": 3, "latency": 0.5, "throughput": 4, "size": 0.5, "memory": 0.5, "robustness": 1, "cost": 3},
}


class ScorecardConfig(dg.Config):
    month: str | None = None
    """Held-out partition ('YYYY-MM') every candidate is scored on; None: `months.held_out` of the training window."""
    profile: str = "realtime"
    """Name of the weight profile in `profiles` that ranks the candidates."""
    profiles: dict[str, WeightProfile] = PROFILES
    """Named weights per axis: `realtime` is latency heavy, `batch` throughput and cost heavy."""
    max_auc_loss: float = 0.01
    """Accuracy floor: ROC AUC (absolute) a candidate may lose against the baseline; more and it is rejected."""
    price_per_vcpu_hour: float = 0.048
    """US dollars per vCPU-hour, for the cost per 1,000 predictions (0.048: a general-purpose cloud vCPU on demand)."""
    latency_runs: int = 500
    """Single-row calls timed per round for p50/p99."""
    throughput_repeats: int = 50
    """Batches of 256 rows timed per round for rows/s and CPU-seconds."""
    rounds: int = 3
    """Fresh measuring processes per candidate; figures are their medians."""
    noise_std: float = 0.25
    """Gaussian noise on each numeric feature, in standard deviations of that feature."""
    unseen_fraction: float = 0.5
    """Share (0-1) of rows whose categories are all replaced by values never seen in training."""

    def weights(self) -> dict[str, float]:
        """The chosen profile's weight per axis (defaults arrive as plain dicts, run config as WeightProfile)."""
        if self.profile not in self.profiles:
            raise dg.Failure(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return WeightProfile.model_validate(dict(self.profiles[self.profile])).model_dump()


@dataclass(frozen=True)
class Scorecard:
    """The ranking of one training run's candidates; `winner_candidate` is what registered_model registers."""

    profile: str
    weights: dict[str, float]
    month: str
    rows: int
    max_auc_loss: float
    price_per_vcpu_hour: float
    winner: str
    why: str
    ranking: list[dict]
    figures: dict[str, dict]
    skipped: dict[str, str]
    """Candidate -> why the model's family could not make it."""
    winner_candidate: Candidate
    artifact_uri: str


@dg.asset(group_name="compression", kinds={"onnx", "mlflow"}, deps=["validated_features"])
def model_scorecard(
    context: dg.AssetExecutionContext,
    config: ScorecardConfig,
    trained_model: TrainedModel,
    onnx_model: Candidate,
    pruned_model: CandidateOutcome,
    student_model: CandidateOutcome,
    int8_dynamic_model: Candidate,
    int8_static_model: Candidate,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.Output[Scorecard]:
    """Every candidate scored on accuracy, speed, size and cost on one held-out month; the winner is the challenger."""
    weights = config.weights()
    made_here = made(onnx_model, pruned_model, student_model, int8_dynamic_model, int8_static_model)
    candidates = {c.candidate: c for c in made_here}
    skipped = {s.candidate: s.reason for s in (pruned_model, student_model) if isinstance(s, Skipped)}
    month = config.month or months.held_out(trained_model.train_months.split(","), trained_model.validation_month)
    frame = load_features(store, [month])
    measurement = scorecard.Measurement(
        latency_runs=config.latency_runs,
        throughput_repeats=config.throughput_repeats,
        rounds=config.rounds,
        noise_std=config.noise_std,
        unseen_fraction=config.unseen_fraction,
    )
    models = {name: store.read_bytes(candidate.onnx_key) for name, candidate in candidates.items()}
    figures = scorecard.measure(models, frame, measurement, config.price_per_vcpu_hour)
    verdicts = scorecard.choose(figures, weights, baseline="baseline", max_auc_loss=config.max_auc_loss)
    winner = verdicts[0]
    table = scorecard.markdown(figures, verdicts, weights, config.profile)
    reason = scorecard.why(verdicts, weights)
    png = scorecard.plot_png(figures, verdicts, floor=figures["baseline"]["auc"] - config.max_auc_loss)
    ranking = [
        {"candidate": v.name, "rank": v.rank, "score": v.score, "passed": v.passed, "reason": v.reason, "axes": v.axes}
        for v in verdicts
    ]
    report = {
        "profile": config.profile,
        "weights": weights,
        "month": month,
        "rows": len(frame),
        "max_auc_loss": config.max_auc_loss,
        "price_per_vcpu_hour": config.price_per_vcpu_hour,
        "winner": winner.name,
        "why": reason,
        "ranking": ranking,
        "figures": figures,
        "skipped": skipped,
    }

    training_run = trained_model.run_id
    with registry.active_run(run_id=training_run):
        import mlflow

        mlflow.log_text(table + f"\n\n{reason}\n", f"scorecard/{config.profile}.md")
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / f"{config.profile}.png"
            plot.write_bytes(png)
            mlflow.log_artifact(str(plot), artifact_path="scorecard")
        mlflow.log_dict(report, f"scorecard/{config.profile}.json")
        mlflow.set_tags({"scorecard_winner": winner.name, "scorecard_profile": config.profile})
    for verdict in verdicts:
        run_id = candidates[verdict.name].run_id
        with registry.active_run(run_id=run_id):
            import mlflow

            numbers = {k: v for k, v in figures[verdict.name].items() if isinstance(v, (int, float))}
            mlflow.log_metrics({f"scorecard_{k}": float(v) for k, v in numbers.items()})
            mlflow.log_metric("scorecard_score", verdict.score)
            mlflow.set_tags({"scorecard_rank": verdict.rank, "scorecard_verdict": verdict.reason})

    artifact = f"runs:/{training_run}/scorecard/{config.profile}.json"
    return dg.Output(
        Scorecard(**report, winner_candidate=candidates[winner.name], artifact_uri=artifact),
        metadata=readable(
            {
                "winner": winner.name,
                "winner_score": winner.score,
                "why": reason,
                "profile": config.profile,
                "weights": json.dumps(weights),
                "max_auc_loss": config.max_auc_loss,
                "month": month,
                "rejected": ", ".join(v.name for v in verdicts if not v.passed) or "none",
                "skipped": "; ".join(f"{name}: {reason}" for name, reason in skipped.items()) or "none",
                "scorecard": dg.MetadataValue.md(table),
                # Dagster shows pictures only behind a link; MLflow's artifact view shows this one at once.
                "plot_url": dg.MetadataValue.url(
                    registry.artifact_url(training_run, f"scorecard/{config.profile}.png")
                ),
                "plot": dg.MetadataValue.md(scorecard.embedded_png(png)),
                "mlflow_artifact": artifact,
            }
        ),
    )
