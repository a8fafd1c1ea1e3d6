"""live_performance on served traffic: what the server answered, joined by row key with the outcomes
that had arrived, per model version, on a real champion, a real registry and a real instance."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import features_key, load_features
from mlops_assets.features_spec import ROW_KEY, TARGET
from mlops_assets.monitoring.performance import label_arrivals
from resources import LocalArtifactStore, ServedPredictions
from resources.mlflow_registry import CHAMPION
from tests.conftest import materialize
from tests.mlops_assets.test_monitoring import tick_live
from tests.sensors.support import ship_served

DELAY_HOURS = 24.0


def _departures(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame[ROW_KEY].str[:10], utc=True) + pd.to_timedelta(frame["hour"], unit="h")


@pytest.fixture
def served_march(monitored_resources, tmp_path) -> dict:
    """2013-03 as served traffic of the champion (the real ONNX file scored every row)."""
    registry = monitored_resources["registry"]
    version = str(registry.version_by_alias(CHAMPION).version)
    march = load_features(monitored_resources["store"], ["2013-03"])
    scores = onnx_metrics.predict(onnx_metrics.session(registry.onnx_bytes(version)), march)
    store = LocalArtifactStore(root=str(tmp_path / "served"))
    ship_served(store, march, scores, version, "2013-03")
    resources = {**monitored_resources, "served": ServedPredictions(store=store, batch_fallback=False)}
    return {"resources": resources, "frame": march, "scores": scores, "version": version, "store": store}


def _live(resources, instance, month: str, **config) -> dict:
    result = materialize(
        ["outcomes", "live_performance"],
        resources,
        instance=instance,
        partition_key=month,
        ops={"outcomes": {"label_delay_hours": DELAY_HOURS}, "live_performance": config},
    )
    return {k: v.value for k, v in result.asset_materializations_for_node("live_performance")[0].metadata.items()}


def test_served_predictions_joined_with_outcomes_give_the_auc_of_the_same_rows(served_march, instance):
    live = _live(served_march["resources"], instance, "2013-03")
    frame, scores = served_march["frame"], served_march["scores"]
    assert live["judged_source"] == "served" and live["model_version"] == served_march["version"]
    assert live["labelled_rows"] == live["predictions"] == live["served_rows"] == len(frame)
    assert live["auc"] == pytest.approx(roc_auc_score(frame[TARGET], scores), abs=1e-4)
    assert live["unlabelled_share"] == 0 and "| served |" in live["versions"]
    assert live["degraded"] is False
    # The per-version figures as data: the served row is the judged one, with the same AUC.
    served = [f for f in live["version_figures"] if f["source"] == "served"]
    assert [f["version"] for f in served] == [served_march["version"]]
    assert served[0]["labelled"] == len(frame) and served[0]["auc"] == pytest.approx(live["auc"], abs=1e-4)


def test_no_label_is_used_before_it_arrived(served_march, instance):
    as_of = pd.Timestamp("2013-03-15T00:00:00Z")
    live = _live(served_march["resources"], instance, "2013-03", as_of=as_of.isoformat())
    frame, scores = served_march["frame"], served_march["scores"]
    arrived = (_departures(frame) + pd.Timedelta(hours=DELAY_HOURS) <= as_of).to_numpy()
    assert 0 < arrived.sum() < len(frame)
    assert live["labelled_rows"] == arrived.sum() and live["predictions"] == len(frame)
    assert live["unlabelled_share"] == pytest.approx(1 - arrived.mean(), abs=1e-4)
    assert live["auc"] == pytest.approx(roc_auc_score(frame[TARGET][arrived], scores[arrived]), abs=1e-4)
    assert live["as_of"] == as_of.isoformat()
    # Before any label arrived there is nothing to judge, and the failure says when to come back.
    with pytest.raises(dg.Failure, match="try again when the labels have arrived"):
        _live(served_march["resources"], instance, "2013-03", as_of="2013-03-01T00:00:00")


def test_a_version_whose_served_predictions_turned_wrong_triggers_retraining(served_march, instance):
    store = served_march["resources"]["store"]
    march = served_march["frame"]
    # 2013-08's flights turn out the opposite of what the champion answered for them.
    store.write_frame(features_key("2013-08"), march.assign(**{TARGET: (1 - march[TARGET]).astype("int8")}))
    ship_served(served_march["store"], march, served_march["scores"], served_march["version"], "2013-08")
    live = _live(served_march["resources"], instance, "2013-08")
    assert live["judged_source"] == "served" and live["degraded"] is True
    assert live["auc"] == pytest.approx(1 - live["eval_auc"], abs=0.05) and "served v" in live["reason"]
    (request,) = tick_live(instance).run_requests
    assert request.tags["mlops/partitions"] == "2013-08" and "AUC" in request.tags["mlops/reason"]


def test_label_arrivals_follow_departure_plus_delay():
    features = pd.DataFrame({ROW_KEY: ["2013-05-02/UA/1/EWR", "2013-05-31/B6/2/JFK"], "hour": [6, 23], TARGET: [1, 0]})
    arrivals = label_arrivals(features, delay_hours=2.5)
    assert list(arrivals["arrived_at"]) == [
        pd.Timestamp("2013-05-02T08:30:00Z"),
        pd.Timestamp("2013-06-01T01:30:00Z"),  # a late-evening flight's label arrives the next month
    ]
