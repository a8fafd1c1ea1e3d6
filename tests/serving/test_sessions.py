"""serving.sessions: the one ONNX Runtime session factory, and the options recorded with a model, used
by the server, the evaluation report (mlops_assets.onnx_metrics) and the scorecard's probe."""

from __future__ import annotations

import asyncio

import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlops_assets import onnx_metrics
from mlops_assets.compression import session_probe
from serving import demo_models as dm
from serving.loaded_model import RepositoryConfig
from serving.metrics import ServerStats
from serving.repository import ModelRepository
from serving.sessions import (
    METADATA_KEY,
    SessionOptions,
    create_session,
    record_options,
    recorded_options,
    serving_options,
)

FLIGHT = dm.flight_model().SerializeToString()
RECORDED = SessionOptions(intra_op_threads=2, inter_op_threads=3, graph_optimization="basic", execution_mode="parallel")

options_strategy = st.builds(
    SessionOptions,
    intra_op_threads=st.integers(0, 64),
    inter_op_threads=st.integers(0, 64),
    graph_optimization=st.sampled_from(["disable", "basic", "extended", "all"]),
    execution_mode=st.sampled_from(["sequential", "parallel"]),
)


def _holds(session, options: SessionOptions) -> bool:
    """Whether onnxruntime opened `session` with `options`."""
    used = session.get_session_options()
    return (
        used.intra_op_num_threads == options.intra_op_threads
        and used.inter_op_num_threads == options.inter_op_threads
        and used.graph_optimization_level.name.endswith(
            {"disable": "DISABLE_ALL", "basic": "ENABLE_BASIC", "extended": "ENABLE_EXTENDED", "all": "ENABLE_ALL"}[
                options.graph_optimization
            ]
        )
        and used.execution_mode.name == f"ORT_{options.execution_mode.upper()}"
    )


@pytest.fixture(scope="module")
def recorded_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("recorded") / "model.onnx"
    path.write_bytes(record_options(FLIGHT, RECORDED))
    return path


@given(options_strategy)
def test_options_round_trip_through_the_model(options):
    model = record_options(FLIGHT, options)
    assert recorded_options(model) == options
    assert recorded_options(record_options(model, SessionOptions())) == SessionOptions()  # replaced, not added


def test_a_model_without_a_record_gets_the_defaults_and_onnxruntime_sees_the_record(recorded_model):
    assert recorded_options(FLIGHT) == SessionOptions()
    meta = ort.InferenceSession(str(recorded_model), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert SessionOptions.from_json(meta.custom_metadata_map[METADATA_KEY]) == RECORDED
    assert SessionOptions.from_json('{"intra_op_threads": 4, "from_a_newer_exporter": 1}') == SessionOptions(4)


def test_the_factory_opens_sessions_with_exactly_the_options(recorded_model):
    for options in (SessionOptions(), RECORDED, SessionOptions(1, 1, "disable", "sequential")):
        assert _holds(create_session(recorded_model, options), options)
        assert _holds(create_session(recorded_model.read_bytes(), options), options)
    with pytest.raises(ValueError):
        SessionOptions(graph_optimization="maximal")


def test_the_evaluation_report_uses_the_recorded_options(recorded_model):
    assert _holds(onnx_metrics.session(recorded_model.read_bytes()), RECORDED)


def test_the_scorecard_probe_uses_the_recorded_options_at_its_two_thread_counts(recorded_model):
    recorded = recorded_options(recorded_model)
    for threads in (0, 1):
        session = session_probe._session(str(recorded_model), recorded, threads)
        assert _holds(session, SessionOptions(threads, 3, "basic", "parallel"))


def test_the_server_uses_the_recorded_options_with_its_own_thread_count(recorded_model):
    """--intra-op-threads wins (it is sized to the pod); the rest is the model's record."""
    repository = ModelRepository(RepositoryConfig(intra_op_threads=1), ServerStats())
    model = repository.prepare("flight_delay", "1", str(recorded_model))
    assert _holds(model.session, SessionOptions(1, 3, "basic", "parallel"))
    assert serving_options(recorded_model, 1) == SessionOptions(1, 3, "basic", "parallel")
    asyncio.run(repository.close())
