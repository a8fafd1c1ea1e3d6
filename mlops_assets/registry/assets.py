"""registered_model, the promotion gate and champion_model: MLflow versions moved only by evidence.

The scorecard's winner among each training run's candidates becomes a registry version with alias
`challenger`. The blocking `promotion_gate` decides, from figures measured on the same data, whether
it may take alias `champion`; the decision and its reason are written onto the version's tags
whatever it is. A refusal is a decision, not a breakage: the gate reports it as a warning, the run
succeeds, and `champion_model` records that it kept the champion and why.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from mlops_assets.compression.model_scorecard import Scorecard
from mlops_assets.evaluation.assets import Evaluation
from mlops_assets.metadata import readable
from mlops_assets.training.values import TrainedModel
from resources import MlflowRegistry
from resources.mlflow_registry import CHALLENGER, CHAMPION


class PromotionConfig(dg.Config):
    auc_margin: float = 0.005
    """How much ROC AUC (absolute) the challenger may lose against the champion and still win."""
    auc_floor: float = 0.6
    """ROC AUC a first model must reach when there is no champion yet."""


SCORECARD_SUMMARY = ("scorecard_profile", "scorecard_score", "scorecard_rank", "scorecard_why", "scorecard_ranking")


@dataclass(frozen=True)
class RegisteredVersion:
    """A registry version holding alias `challenger`, the tags written on it, and the evaluation behind them."""

    version: str
    tags: dict[str, str]
    evaluation: Evaluation


def scorecard_tags(scorecard: Scorecard) -> dict[str, str]:
    """The winner's scorecard as registry tags: its rank and score, every figure, the ranking, where the rest is."""
    winner = scorecard.winner
    figures = scorecard.figures[winner]
    verdict = next(r for r in scorecard.ranking if r["candidate"] == winner)
    tags = {
        "candidate": winner,
        "candidate_run_id": scorecard.winner_candidate.run_id,
        "family": scorecard.winner_candidate.family,
        "scorecard_profile": scorecard.profile,
        "scorecard_month": scorecard.month,
        "scorecard_score": f"{verdict['score']:.4f}",
        "scorecard_rank": f"{verdict['rank']} of {len(scorecard.ranking)}",
        "scorecard_why": scorecard.why,
        "scorecard_ranking": "; ".join(
            f"{r['rank']}. {r['candidate']} {r['score']:.3f}{'' if r['passed'] else ' rejected'}"
            for r in scorecard.ranking
        ),
        "scorecard_weights": ", ".join(f"{axis} {weight:g}" for axis, weight in scorecard.weights.items()),
        "scorecard_max_auc_loss": f"{scorecard.max_auc_loss:g}",
        "scorecard_artifact": scorecard.artifact_uri,
    }
    tags.update(
        {f"scorecard_{key}": f"{value:.6g}" for key, value in figures.items() if isinstance(value, int | float)}
    )
    return tags


@dg.asset(group_name="registry", kinds={"mlflow"})
def registered_model(
    context: dg.AssetExecutionContext,
    trained_model: TrainedModel,
    model_scorecard: Scorecard,
    evaluation_report: Evaluation,
    registry: MlflowRegistry,
) -> dg.Output[RegisteredVersion]:
    """The scorecard's winner as a registry version with alias `challenger`, tagged with its lineage and scorecard."""
    challenger = evaluation_report.challenger
    winner = model_scorecard.winner_candidate
    tags = {
        # The training run: parameters, data hash and every candidate's run nested under it.
        "mlflow_run_id": trained_model.run_id,
        "git_commit": trained_model.git_commit,
        "data_hash": trained_model.data_hash,
        "train_months": trained_model.train_months,
        "dagster_training_run_id": trained_model.dagster_run_id,
        "dagster_registration_run_id": context.run_id,
        "evaluation_month": evaluation_report.evaluation_month,
        "eval_auc": f"{challenger['auc']:.6f}",
        "eval_brier": f"{challenger['brier']:.6f}",
        **scorecard_tags(model_scorecard),
    }
    version = str(registry.register(winner.model_uri, tags).version)
    registry.client().set_registered_model_alias(registry.model_name, CHALLENGER, version)
    return dg.Output(
        RegisteredVersion(version, tags, evaluation_report),
        metadata=readable(
            {
                "model_name": registry.model_name,
                "version": version,
                "alias": CHALLENGER,
                # The figures stay in the tags and the scorecard asset; the UI shows the verdict.
                **{k: v for k, v in tags.items() if not k.startswith("scorecard_") or k in SCORECARD_SUMMARY},
            }
        ),
    )


def decide(challenger_auc: float, champion_auc: float | None, config: PromotionConfig) -> tuple[bool, str]:
    """The promotion rule, kept apart from I/O so it reads as a rule."""
    if champion_auc is None:
        passed = challenger_auc >= config.auc_floor
        relation = ">=" if passed else "<"
        return passed, f"no champion yet; AUC {challenger_auc:.4f} {relation} floor {config.auc_floor:.4f}"
    bar = champion_auc - config.auc_margin
    passed = challenger_auc >= bar
    relation = ">=" if passed else "<"
    return passed, (f"AUC {challenger_auc:.4f} {relation} champion {champion_auc:.4f} - margin {config.auc_margin:.4f}")


@dg.asset_check(
    asset="registered_model",
    # Blocking orders champion_model after the decision; a refusal is a WARN, which blocks nothing.
    blocking=True,
    description="The challenger may become champion (a refusal warns: the champion stays).",
)
def promotion_gate(
    config: PromotionConfig, registered_model: RegisteredVersion, registry: MlflowRegistry
) -> dg.AssetCheckResult:
    report = registered_model.evaluation
    version = registered_model.version
    current = registry.version_by_alias(CHAMPION)
    current_version = str(current.version) if current else None
    champion_auc = report.champion["auc"] if report.champion else None
    if current_version != report.champion_version:
        passed, reason = (
            False,
            (
                f"champion moved to {current_version} after the evaluation against {report.champion_version}; "
                "re-run evaluation_report"
            ),
        )
    else:
        passed, reason = decide(report.challenger["auc"], champion_auc, config)
    decision = "approved" if passed else "refused"
    registry.tag_version(
        version,
        {
            "promotion_decision": decision,
            "promotion_reason": reason,
            "promotion_compared_to": current_version or "none",
            "promotion_decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if passed else dg.AssetCheckSeverity.WARN,
        description=f"{decision}: {reason}",
        metadata=readable(
            {
                "decision": decision,
                "reason": reason,
                "challenger_version": version,
                "champion_version": current_version or dg.MetadataValue.null(),
                "challenger_auc": report.challenger["auc"],
                "champion_auc": champion_auc if champion_auc is not None else dg.MetadataValue.null(),
                "auc_margin": config.auc_margin,
                "auc_floor": config.auc_floor,
            }
        ),
    )


# load_test: no version takes the alias without passing the load test (its blocking load_test_gate).
@dg.asset(group_name="registry", kinds={"mlflow"}, deps=["load_test"])
def champion_model(
    context: dg.AssetExecutionContext, registered_model: RegisteredVersion, registry: MlflowRegistry
) -> dg.Output[dict]:
    """The registry version serving traffic: alias `champion`, moved here only when the gate approved.

    A refused challenger leaves the champion where it was; this asset then records what was kept and why."""
    challenger = registered_model.version
    client = registry.client()
    tags = client.get_model_version(registry.model_name, challenger).tags
    previous = registry.version_by_alias(CHAMPION)
    previous_version = str(previous.version) if previous else None
    reason = tags.get("promotion_reason", "promotion_gate has not decided on this version")
    if tags.get("promotion_decision") == "approved":
        client.set_registered_model_alias(registry.model_name, CHAMPION, challenger)
        registry.tag_version(challenger, {"promoted_at": datetime.now(UTC).isoformat(timespec="seconds")})
        decision, champion, champion_tags = "promoted", challenger, tags
        context.log.info(f"champion: {previous_version} -> {challenger} ({reason})")
    else:
        decision, champion = "kept", previous_version
        champion_tags = previous.tags if previous else {}
        context.log.warning(f"champion stays {previous_version}: challenger {challenger} refused ({reason})")
    summary = (
        f"v{champion} promoted over v{previous_version or 'none'}: {reason}"
        if decision == "promoted"
        else f"kept v{champion or 'none'}, refused v{challenger}: {reason}"
    )
    return dg.Output(
        {
            "version": champion,
            "previous_version": previous_version,
            "decision": decision,
            "challenger_version": challenger,
            "reason": reason,
        },
        metadata=readable(
            {
                "decision": decision,
                "summary": summary,
                "version": champion or dg.MetadataValue.null(),
                "previous_version": previous_version or dg.MetadataValue.null(),
                "challenger_version": challenger,
                "reason": reason,
                # Read by the retraining sensors: which model a verdict must be about, and the months it knows.
                "train_months": champion_tags.get("train_months", ""),
            }
        ),
    )
