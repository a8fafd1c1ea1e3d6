"""A second model family plugged in through configuration only: training, ONNX parity, the scorecard and
the promotion gate on a real Dagster run, with the candidates it cannot make skipped and said why."""

import shutil

import numpy as np
import pandas as pd
import pytest

from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET
from mlops_assets.training import families
from mlops_assets.training.family import PRUNED, STUDENT
from mlops_assets.training.fit_loop import FitSettings
from mlops_assets.training.preprocessing import Preprocessing
from mlops_assets.training.values import Skipped
from resources import local_resources
from sensors.jobs import TRAINING_SELECTION
from tests.conftest import materialize
from tests.mlops_assets.test_compression import ACCURACY_ONLY, compression_ops

# Logistic regression starts from zero coefficients; a larger step than the MLP's learns it in two epochs.
LOGISTIC = {"family": "logistic", "learning_rate": 0.05}


@pytest.fixture(scope="module")
def logistic_run(features_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("logistic_home")
    shutil.copytree(features_home / "artifacts" / "features", home / "artifacts" / "features")
    resources = local_resources(home)
    result = materialize(TRAINING_SELECTION, resources, ops=compression_ops(ACCURACY_ONLY, **LOGISTIC))
    assert result.success
    return result, resources


def _check(result, asset: str, name: str):
    return next(e for e in result.get_asset_check_evaluations() if e.asset_key.path == [asset] and e.check_name == name)


def test_a_logistic_family_trains_and_exports_with_parity(logistic_run):
    result, resources = logistic_run
    trained = result.output_for_node("trained_model")
    assert trained.family == "logistic" and trained.hidden == []
    loaded = families.load_checkpoint(resources["store"].read_bytes(trained.checkpoint_key))
    vocabulary_sizes = sum(len(loaded.prep.vocabularies[c]) + 1 for c in CATEGORICAL_FEATURES)
    assert trained.parameters == len(NUMERIC_FEATURES) + 1 + vocabulary_sizes  # one weight per column or category
    assert trained.val_auc > 0.6
    baseline = result.output_for_node("onnx_model")
    assert baseline.family == "logistic" and baseline.size_bytes < 20_000
    assert _check(result, "onnx_model", "onnx_parity").passed


def test_candidates_the_family_cannot_make_are_skipped_with_their_reason(logistic_run):
    result, _ = logistic_run
    for asset, kind in (("pruned_model", PRUNED), ("student_model", STUDENT)):
        value = result.output_for_node(asset)
        assert isinstance(value, Skipped) and value.reason == families.family("logistic").unsupported[kind]
        metadata = result.asset_materializations_for_node(asset)[0].metadata
        assert metadata["skipped"].value == value.reason
        assert _check(result, asset, "onnx_parity").description.startswith("nothing to compare")
    chosen = result.output_for_node("best_float_model")
    assert chosen.candidate == "baseline"
    table = result.asset_materializations_for_node("best_float_model")[0].metadata["candidates"].value
    assert "| pruned | - | - | - | skipped: logistic regression has no hidden units" in table


def test_the_scorecard_and_the_gate_judge_the_family_like_any_other(logistic_run):
    result, resources = logistic_run
    report = result.output_for_node("model_scorecard")
    assert set(report.figures) == {"baseline", "int8_dynamic", "int8_static"}
    assert set(report.skipped) == {PRUNED, STUDENT}
    assert (
        "pruned: logistic regression"
        in result.asset_materializations_for_node("model_scorecard")[0].metadata["skipped"].value
    )
    for asset in ("int8_dynamic_model", "int8_static_model"):
        assert _check(result, asset, "onnx_parity").passed
    registered = result.output_for_node("registered_model")
    assert registered.tags["family"] == "logistic"
    assert registered.tags["scorecard_rank"] == "1 of 3"
    gate = _check(result, "registered_model", "promotion_gate")
    assert gate.metadata["decision"].value == "approved" and "floor" in gate.metadata["reason"].value
    registry = resources["registry"]
    assert str(registry.version_by_alias("champion").version) == registered.version


def test_each_family_checkpoint_loads_back_to_the_same_predictions():
    rng = np.random.default_rng(0)
    prep = Preprocessing(
        numeric_mean=[0.0] * len(NUMERIC_FEATURES),
        numeric_std=[1.0] * len(NUMERIC_FEATURES),
        vocabularies={c: ["a", "b"] for c in CATEGORICAL_FEATURES},
    )
    frame = pd.DataFrame({c: rng.normal(size=32) for c in NUMERIC_FEATURES})
    frame = frame.assign(**{c: rng.choice(["a", "b", "new"], 32) for c in CATEGORICAL_FEATURES})
    frame[TARGET] = rng.integers(0, 2, 32)
    for name, family in families.FAMILIES.items():
        model = family.build(prep, (8,))
        family.fit(model, prep, frame, frame, FitSettings(epochs=1, batch_size=8, learning_rate=0.01, seed=0))
        loaded = families.load_checkpoint(family.save(model, prep))
        assert loaded.family is family, name
        np.testing.assert_array_equal(
            loaded.family.predict(loaded.model, prep, frame), family.predict(model, prep, frame)
        )


def test_an_unknown_family_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'tree' is not one of \['logistic', 'mlp'\]"):
        families.family("tree")
