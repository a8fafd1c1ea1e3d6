"""The one ONNX Runtime session factory, and the session options recorded with a model.

The evaluation report, the compression scorecard and the server all open sessions here, from the
options the model carries (`record_options` at export), so all three measure and serve a model under
the same conditions. Heavy imports stay inside the functions: the scorecard's probe measures a fresh
process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

METADATA_KEY = "mlops.session_options"
GRAPH_OPTIMIZATION = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODE = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}

Model = bytes | str | Path  # the ONNX file's bytes, or its path


@dataclass(frozen=True)
class SessionOptions:
    intra_op_threads: int = 0  # threads inside one operator; 0: onnxruntime's default, one per core
    inter_op_threads: int = 1  # threads across operators; used only by the parallel execution mode
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"

    def __post_init__(self):
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError(f"thread counts must be >= 0, got {self}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION)}")
        if self.execution_mode not in EXECUTION_MODE:
            raise ValueError(f"execution_mode must be one of {sorted(EXECUTION_MODE)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SessionOptions:
        """The options a model recorded; keys this version does not know are left out, so that a model
        recorded by a newer exporter still loads."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})


def create_session(model: Model, options: SessionOptions):
    """An ONNX Runtime CPU session with explicit providers and options (as mlflow's onnx flavor)."""
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = options.intra_op_threads
    settings.inter_op_num_threads = options.inter_op_threads
    settings.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[options.graph_optimization]
    )
    settings.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODE[options.execution_mode])
    settings.log_severity_level = 3  # errors only: onnxruntime's warnings are not the caller's to act on
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=settings, providers=["CPUExecutionProvider"])


def record_options(onnx_bytes: bytes, options: SessionOptions) -> bytes:
    """The same model with `options` in its metadata_props (replacing any recorded before)."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=options.to_json())
    return model.SerializeToString()


def recorded_options(model: Model) -> SessionOptions:
    """The options recorded with `model`, or the defaults when it records none."""
    import onnx

    if isinstance(model, bytes):
        proto = onnx.load_model_from_string(model)
    else:
        proto = onnx.load(str(model), load_external_data=False)  # the graph's weights are not needed here
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return SessionOptions.from_json(prop.value)
    return SessionOptions()


def serving_options(model: Model, intra_op_threads: int) -> SessionOptions:
    """What the server opens `model` with: the recorded options, but its own intra-op thread count, which
    is sized to the pod (workers x threads <= the CPU limit), something a model cannot know."""
    return replace(recorded_options(model), intra_op_threads=intra_op_threads)
