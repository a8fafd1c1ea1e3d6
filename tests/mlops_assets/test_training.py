import numpy as np
import onnxruntime as ort
import pytest
from mlflow import MlflowClient

from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from mlops_assets.training import families
from mlops_assets.training.assets import PARITY_TOLERANCE
from mlops_assets.training.fit_loop import FitSettings
from mlops_assets.training.onnx_export import onnx_feeds
from mlops_assets.training.publish import SESSION_OPTIONS
from serving.sessions import METADATA_KEY
from tests.conftest import FAST_DATA, FAST_TRAIN, materialize


@pytest.fixture
def trained(resources):
    ops = {"training_data": FAST_DATA, "trained_model": FAST_TRAIN}
    result = materialize(["training_data", "trained_model", "onnx_model"], resources, ops=ops)
    assert result.success
    return result


def test_trained_model_is_tracked_with_lineage(trained, resources):
    info = trained.output_for_node("trained_model")
    run = MlflowClient(resources["registry"].tracking_uri).get_run(info.run_id)
    assert run.data.params["epochs"] == str(FAST_TRAIN["epochs"])
    assert run.data.params["train_months"] == str(FAST_DATA["train_months"])
    assert int(run.data.params["train_rows"]) > 20_000
    history = MlflowClient(resources["registry"].tracking_uri).get_metric_history(info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]
    assert 0.55 < max(m.value for m in history) < 1.0
    tags = run.data.tags
    assert len(tags["git_commit"].removesuffix("+dirty")) in (40, len("unknown"))
    assert len(tags["data_hash"]) == 64
    assert tags["dagster_run_id"] == trained.run_id
    assert tags["train_months"] == "2013-01"


def test_training_is_seeded(features_home):
    from resources import local_resources

    store = local_resources(features_home)["store"]
    train, validation = load_features(store, ["2013-01"]), load_features(store, ["2013-02"])
    runs = [
        families.train("mlp", train, validation, hidden=(32,), settings=FitSettings(1, 1024, 1e-3, seed=3))
        for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    other = families.train("mlp", train, validation, hidden=(32,), settings=FitSettings(1, 1024, 1e-3, seed=4))
    assert other.history != runs[0].history


def test_onnx_takes_raw_columns_with_a_dynamic_batch_and_matches_pytorch(trained, resources):
    store = resources["store"]
    info = trained.output_for_node("onnx_model")
    session = ort.InferenceSession(store.read_bytes(info.onnx_key), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == list(FEATURES)
    assert all(inputs[c].type == "tensor(float)" for c in NUMERIC_FEATURES)
    assert all(inputs[c].type == "tensor(string)" for c in CATEGORICAL_FEATURES)
    assert inputs["hour"].shape[0] not in (1, 2)  # symbolic batch dimension

    rows = load_features(store, ["2013-03"]).head(777)
    loaded = families.load_checkpoint(store.read_bytes(trained.output_for_node("trained_model").checkpoint_key))
    for batch in (rows.head(1), rows):
        onnx_scores = session.run(None, onnx_feeds(batch))[0].reshape(-1)
        assert np.abs(onnx_scores - loaded.family.predict(loaded.model, loaded.prep, batch)).max() <= PARITY_TOLERANCE

    parity = next(e for e in trained.get_asset_check_evaluations() if e.check_name == "onnx_parity")
    assert parity.passed and parity.metadata["max_abs_diff"].value <= PARITY_TOLERANCE
    # The file carries the session options evaluation, the scorecard and the server open it with.
    assert session.get_modelmeta().custom_metadata_map[METADATA_KEY] == SESSION_OPTIONS.to_json()


def test_unseen_and_missing_values_are_handled_inside_the_graph(trained, resources):
    store = resources["store"]
    session = ort.InferenceSession(
        store.read_bytes(trained.output_for_node("onnx_model").onnx_key), providers=["CPUExecutionProvider"]
    )
    row = load_features(store, ["2013-03"]).head(1).copy()
    odd = row.assign(carrier="NEW", temp=np.nan)
    scores = [session.run(None, onnx_feeds(frame))[0].item() for frame in (row, odd)]
    assert all(0.0 < s < 1.0 for s in scores)
    assert scores[0] != scores[1]
