import dagster as dg
import numpy as np
import onnxruntime as ort
import pytest

from mlops_assets.features.assets import load_features
from mlops_assets.inference.assets import predictions_key
from mlops_assets.training.onnx_export import onnx_feeds
from resources.mlflow_registry import CHAMPION
from sensors.jobs import TRAINING_SELECTION
from tests.conftest import materialize
from tests.mlops_assets.test_compression import compression_ops


def test_batch_predictions_match_the_champion_scored_with_onnxruntime(resources):
    assert materialize(TRAINING_SELECTION, resources, ops=compression_ops()).success
    result = materialize(["batch_predictions"], resources, partition_key="2013-02")
    assert result.success

    store, registry = resources["store"], resources["registry"]
    version = str(registry.version_by_alias(CHAMPION).version)
    written = store.read_frame(predictions_key("2013-02"))
    assert list(written.columns) == ["flight_id", "score", "model_version"]
    assert set(written["model_version"]) == {version}

    features = load_features(store, ["2013-02"])
    session = ort.InferenceSession(registry.onnx_bytes(version), providers=["CPUExecutionProvider"])
    expected = session.run(None, onnx_feeds(features))[0].reshape(-1)
    assert list(written["flight_id"]) == list(features["flight_id"])
    np.testing.assert_allclose(written["score"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert result.asset_materializations_for_node("batch_predictions")[0].metadata["rows"].value == len(features)


def test_batch_predictions_without_a_champion_fail_clearly(resources):
    with pytest.raises(dg.Failure, match="champion"):
        materialize(["batch_predictions"], resources, partition_key="2013-02")
