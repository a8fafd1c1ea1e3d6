"""Small ONNX models for tests, benchmarks and smoke checks of the server.

`flight_model` has the product's signature: one [batch, 1] input per raw feature column (floats
for numbers, strings for categories, looked up inside the graph by an ai.onnx.ml LabelEncoder) and
one `probability` output. The others cover every datatype the server supports, and a slow model
makes backpressure observable. Built with `onnx.helper`, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUMERIC = ["hour", "day_of_week", "distance", "temp", "wind_speed", "precip", "visib"]
CATEGORICAL = {
    "carrier": ["9E", "AA", "B6", "DL", "EV", "MQ", "UA", "US", "VX", "WN"],
    "origin": ["EWR", "JFK", "LGA"],
    "dest": ["ATL", "BOS", "CLT", "DCA", "DEN", "FLL", "LAX", "MCO", "ORD", "SFO"],
}
_SCALE = {
    "hour": 24.0,
    "day_of_week": 7.0,
    "distance": 2500.0,
    "temp": 100.0,
    "wind_speed": 40.0,
    "precip": 1.0,
    "visib": 10.0,
}
OPSETS = (("", 17), ("ai.onnx.ml", 3))


def _model(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def flight_model(
    seed: int = 0, hidden: tuple[int, ...] = (64, 64), drop_input: str | None = None, numeric_type: str = "float"
):
    """The flight-delay classifier's signature with random weights (`seed` makes versions differ)."""
    from onnx import TensorProto, helper, numpy_helper

    elem = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE}[numeric_type]
    rng = np.random.default_rng(seed)
    nodes, inputs, initializers, columns = [], [], [], []
    for name in NUMERIC:
        if name == drop_input:
            continue
        inputs.append(helper.make_tensor_value_info(name, elem, ["batch", 1]))
        source = name
        if numeric_type != "float":
            nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
            source = f"{name}_f"
        initializers.append(numpy_helper.from_array(np.array([1.0 / _SCALE[name]], np.float32), f"{name}_scale"))
        nodes.append(helper.make_node("Mul", [source, f"{name}_scale"], [f"{name}_x"]))
        columns.append(f"{name}_x")
    for name, vocab in CATEGORICAL.items():
        if name == drop_input:
            continue
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1]))
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [name],
                [f"{name}_x"],
                domain="ai.onnx.ml",
                keys_strings=vocab,
                values_floats=[(i + 1) / len(vocab) for i in range(len(vocab))],
                default_float=0.0,
            )
        )
        columns.append(f"{name}_x")
    nodes.append(helper.make_node("Concat", columns, ["features"], axis=1))
    width, current = len(columns), "features"
    for layer, units in enumerate(list(hidden) + [1]):
        w = rng.normal(0, 1.0 / np.sqrt(width), size=(width, units)).astype(np.float32)
        b = rng.normal(0, 0.1, size=(units,)).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        out = f"h{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [out]))
        if layer < len(hidden):
            nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
            out = f"{out}_relu"
        current, width = out, units
    nodes.append(helper.make_node("Sigmoid", [current], ["probability"]))
    outputs = [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])]
    return _model(helper.make_graph(nodes, "flight_delay", inputs, outputs, initializers))


def flight_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` plausible rows for `flight_model`, as [n, 1] arrays keyed by input name."""
    rng = np.random.default_rng(seed)
    rows = {
        "hour": rng.integers(5, 23, n),
        "day_of_week": rng.integers(0, 7, n),
        "distance": rng.uniform(100, 2500, n),
        "temp": rng.uniform(10, 95, n),
        "wind_speed": rng.uniform(0, 30, n),
        "precip": rng.exponential(0.02, n),
        "visib": rng.uniform(2, 10, n),
    }
    arrays = {k: v.astype(np.float32).reshape(n, 1) for k, v in rows.items()}
    for name, vocab in CATEGORICAL.items():
        arrays[name] = rng.choice(np.array(vocab, dtype=object), size=(n, 1))
    return arrays


def types_model():
    """Every supported datatype in: FP32 [b,2], FP64, INT64, INT32, BOOL, BYTES ([b,1] each).

    Outputs `total` (FP32 [b,1], the sum of all numbers plus 10 for label "b") and `label_out`
    (BYTES [b,1], the string input echoed) so BYTES outputs are exercised too.
    """
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("f32", T.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("f64", T.DOUBLE, ["batch", 1]),
        helper.make_tensor_value_info("i64", T.INT64, ["batch", 1]),
        helper.make_tensor_value_info("i32", T.INT32, ["batch", 1]),
        helper.make_tensor_value_info("flag", T.BOOL, ["batch", 1]),
        helper.make_tensor_value_info("label", T.STRING, ["batch", 1]),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["f32", "axis1"], ["f32_sum"], keepdims=1),
        helper.make_node("Cast", ["f64"], ["f64_f"], to=T.FLOAT),
        helper.make_node("Cast", ["i64"], ["i64_f"], to=T.FLOAT),
        helper.make_node("Cast", ["i32"], ["i32_f"], to=T.FLOAT),
        helper.make_node("Cast", ["flag"], ["flag_f"], to=T.FLOAT),
        helper.make_node(
            "LabelEncoder",
            ["label"],
            ["label_f"],
            domain="ai.onnx.ml",
            keys_strings=["a", "b"],
            values_floats=[0.0, 10.0],
            default_float=-100.0,
        ),
        helper.make_node("Sum", ["f32_sum", "f64_f", "i64_f", "i32_f", "flag_f", "label_f"], ["total"]),
        helper.make_node("Identity", ["label"], ["label_out"]),
    ]
    outputs = [
        helper.make_tensor_value_info("total", T.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("label_out", T.STRING, ["batch", 1]),
    ]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis1")
    return _model(helper.make_graph(nodes, "types", inputs, outputs, [axis]))


def slow_model(width: int = 512, repeats: int = 40):
    """x FP32 [b,1] -> y FP32 [b,1] after `repeats` [width x width] matmuls per row (milliseconds)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.normal(0, 1.0 / np.sqrt(width), size=(width, width))).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones((1, width), np.float32), "ones")]
    nodes = [helper.make_node("MatMul", ["x", "ones"], ["h0"])]
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{repeats}"], ["y"], axes=[1], keepdims=1))  # opset 17 form
    inputs = [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 1])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 1])]
    return _model(helper.make_graph(nodes, "slow", inputs, outputs, inits))


def gather_model():
    """idx INT64 [b,1] -> value FP32 [b,1] from a 5-entry table: an index past 4 fails inside
    ONNX Runtime at run time (after warm-up passed), which is how tests reach INTERNAL."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    table = numpy_helper.from_array(np.arange(5, dtype=np.float32) * 10, "table")
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["value"], axis=0),
    ]
    inputs = [helper.make_tensor_value_info("idx", T.INT64, ["batch", 1])]
    outputs = [helper.make_tensor_value_info("value", T.FLOAT, ["batch", 1])]
    return _model(helper.make_graph(nodes, "gather", inputs, outputs, [table]))


def save(model, path: str | Path) -> Path:
    """Write `model` as one self-contained .onnx file."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def stall_model():
    """steps INT64 [b,1] -> y FP32 [b,1] (= steps) after a loop of max(steps) iterations: zeros (the
    warm-up) cost nothing, a huge value keeps ONNX Runtime busy for minutes. How tests wedge a batch."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "count",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("cond_in", T.BOOL, []),
            helper.make_tensor_value_info("acc_in", T.FLOAT, []),
        ],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("acc_out", T.FLOAT, [])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    inits = [
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["steps"], ["trips"], keepdims=0),
        helper.make_node("Loop", ["trips", "true", "zero"], ["acc"], body=body),
        helper.make_node("Mul", ["acc", "zero"], ["nothing"]),  # keeps the loop in the graph
        helper.make_node("Cast", ["steps"], ["steps_f"], to=T.FLOAT),
        helper.make_node("Add", ["steps_f", "nothing"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("steps", T.INT64, ["batch", 1])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 1])]
    return _model(helper.make_graph(nodes, "stall", inputs, outputs, inits))
