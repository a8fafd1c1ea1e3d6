import pandas as pd
import pytest

from resources import LocalArtifactStore, S3ArtifactStore, local_resources


def _roundtrip(store):
    frame = pd.DataFrame({"flight_id": ["a", "b"], "score": [0.1, 0.9]})
    store.write_frame("predictions/2013-01.parquet", frame)
    assert store.exists("predictions/2013-01.parquet")
    pd.testing.assert_frame_equal(store.read_frame("predictions/2013-01.parquet"), frame)
    store.write_bytes("prediction_log/2013/01/31/a.jsonl", b"{}\n")
    store.write_bytes("prediction_log/2013/02/01/b.jsonl", b"{}\n")
    # A prefix listing: a month of shipped segments, and nothing of the month beside it.
    assert store.list_keys("prediction_log/2013/01/") == ["prediction_log/2013/01/31/a.jsonl"]
    assert store.list_keys("prediction_log/2013/") == [
        "prediction_log/2013/01/31/a.jsonl",
        "prediction_log/2013/02/01/b.jsonl",
    ]
    assert store.list_keys("prediction_log/2014/") == []
    store.delete("predictions/2013-01.parquet")
    assert not store.exists("predictions/2013-01.parquet")


def test_local_store_roundtrip_leaves_no_partial_files(tmp_path):
    store = LocalArtifactStore(root=str(tmp_path))
    _roundtrip(store)
    store.write_bytes("models/x/model.onnx", b"onnx")
    assert sorted(p.name for p in (tmp_path / "models" / "x").iterdir()) == ["model.onnx"]


def test_s3_store_roundtrip(monkeypatch):
    # moto stands in for AWS S3, which cannot be reached from here; tests/deploy runs a real moto_server.
    import boto3
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="mlops")
        store = S3ArtifactStore(bucket="mlops", prefix="team-a")
        _roundtrip(store)
        assert store.uri("features/2013-01.parquet") == "s3://mlops/team-a/features/2013-01.parquet"


@pytest.mark.parametrize("uri", [None, "s3://my-bucket/flights/{partition}.parquet"])
def test_flights_uri_comes_from_the_environment(monkeypatch, tmp_path, uri):
    if uri:
        monkeypatch.setenv("MLOPS_FLIGHTS_URI", uri)
    else:
        monkeypatch.delenv("MLOPS_FLIGHTS_URI", raising=False)
    assert local_resources(tmp_path)["source"].uri == uri


def test_the_traffic_split_lives_on_the_registered_model(tmp_path):
    from mlflow import MlflowClient

    from resources.mlflow_registry import MlflowRegistry
    from serving.traffic_split import Mode, TrafficSplit

    registry = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_name="m")
    registry.client().create_registered_model("m")
    assert registry.traffic_split() == TrafficSplit()
    split = TrafficSplit(Mode.CANARY, "3", 20.0)
    registry.set_traffic_split(split)
    # A second client (another replica) reads the same state from the store.
    other = MlflowRegistry(tracking_uri=registry.tracking_uri, model_name="m")
    assert other.traffic_split() == split
    tags = MlflowClient(tracking_uri=registry.tracking_uri).get_registered_model("m").tags
    assert '"percent": 20.0' in tags["mlops.traffic_split"]
