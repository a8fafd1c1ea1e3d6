"""The run config of a retraining run, built from the stage Config classes so a renamed field fails at import.

Which months a window holds is the rule in mlops_assets/months.py; only the months change here, and
every other setting keeps its default.
"""

import dagster as dg

from mlops_assets.compression.model_scorecard import ScorecardConfig
from mlops_assets.evaluation.assets import EvaluationConfig
from mlops_assets.months import RetrainingWindow
from mlops_assets.training.training_data import TrainingDataConfig

DEFAULT_COOLDOWN_SECONDS = 24 * 3600  # between two retraining runs, whoever asks for them


def retraining_run_config(window: RetrainingWindow) -> dg.RunConfig:
    """training_job's run config for `window`: train, validate, score and evaluate on its months."""
    return dg.RunConfig(
        ops={
            "training_data": TrainingDataConfig(
                train_months=list(window.train_months),
                validation_month=window.validation_month,
                holdout_month=window.evaluation_month,
            ),
            "evaluation_report": EvaluationConfig(evaluation_month=window.evaluation_month),
            "model_scorecard": ScorecardConfig(month=window.evaluation_month),
        }
    )
