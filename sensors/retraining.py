"""The run config of a retraining run, built from the stage Config classes so a renamed field fails at import.

Which months a window holds is the rule in mlops_assets/months.py; only the months change here, and
every other setting keeps its default.
"""

import dagster as dg

from mlops_assets.compression import ScorecardConfig
from mlops_assets.evaluation import EvaluationConfig
from mlops_assets.months import RetrainingWindow
from mlops_assets.training import TrainConfig

DEFAULT_COOLDOWN_SECONDS = 24 * 3600  # between two retraining runs, whoever asks for them


def retraining_run_config(window: RetrainingWindow) -> dg.RunConfig:
    """training_job's run config for `window`: train, validate, score and evaluate on its months."""
    return dg.RunConfig(
        ops={
            "trained_model": TrainConfig(
                train_months=list(window.train_months), validation_month=window.validation_month
            ),
            "evaluation_report": EvaluationConfig(evaluation_month=window.evaluation_month),
            "model_scorecard": ScorecardConfig(month=window.evaluation_month),
        }
    )
