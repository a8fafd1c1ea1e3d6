"""The four-axis scorecard: measure every candidate the same way, weight the axes, apply the accuracy floor.

Axes: predictive (AUC; F1 reported), operational (latency at batch 1, rows/s at batch 256), resource
(file size, session peak memory, cost per 1,000 predictions) and robustness (AUC under noise and under
unseen categories). No Dagster here: `compression.model_scorecard` wires it to assets.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets import onnx_metrics
from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET
from mlops_assets.training.onnx_export import onnx_feeds

AXES = ("accuracy", "latency", "throughput", "size", "memory", "robustness", "cost")
UNSEEN = "__unseen__"  # a category no vocabulary holds; the graph maps it to UNKNOWN_CATEGORY
PROBE = Path(__file__).with_name("session_probe.py")


@dataclass(frozen=True)
class Measurement:
    """How a probe measures; the same for every candidate of one scorecard."""

    latency_runs: int = 500
    throughput_batch: int = 256
    throughput_repeats: int = 50
    rounds: int = 3
    noise_std: float = 0.25
    unseen_fraction: float = 0.5
    seed: int = 0


def probe(models: dict[str, bytes], frame: pd.DataFrame, measurement: Measurement) -> dict[str, dict[str, float]]:
    """Operational figures of every model from fresh subprocesses, round-robin, median of each figure.

    A fresh process per measurement keeps one candidate's allocations and warm caches out of the
    next one's memory and timing figures. Rounds visit every candidate in turn, so a busy neighbour
    on a shared machine slows them all alike, and the median of the rounds damps it.
    """
    single = [onnx_feeds(frame.iloc[[i % len(frame)]]) for i in range(measurement.latency_runs)]
    request = {
        "single": single,
        "batch": onnx_feeds(frame.head(measurement.throughput_batch)),
        "warmup": min(50, measurement.latency_runs),
        "repeats": measurement.throughput_repeats,
    }
    rounds: dict[str, list[dict]] = {name: [] for name in models}
    with tempfile.TemporaryDirectory(prefix="scorecard-") as tmp:
        for name, data in models.items():
            (Path(tmp) / f"{name}.onnx").write_bytes(data)
        for _ in range(measurement.rounds):
            for name in models:
                output, path = Path(tmp) / f"{name}.json", Path(tmp) / "request.pkl"
                model = str(Path(tmp) / f"{name}.onnx")
                path.write_bytes(pickle.dumps({**request, "model": model, "output": str(output)}))
                done = subprocess.run([sys.executable, str(PROBE), str(path)], capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"session probe of {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
                    )
                rounds[name].append(json.loads(output.read_text()))
    figures = {}
    for name, runs in rounds.items():
        figures[name] = {key: float(np.median([r[key] for r in runs])) for key in runs[0] if key != "memory_method"}
        figures[name]["memory_method"] = runs[0]["memory_method"]
    return figures


def perturbed(frame: pd.DataFrame, measurement: Measurement) -> dict[str, pd.DataFrame]:
    """The held-out rows with Gaussian noise on the numeric columns, and with categories never seen in training.

    Noise: each numeric column plus N(0, noise_std x its standard deviation on these rows). Unseen:
    in `unseen_fraction` of the rows every categorical column is replaced by a value no vocabulary holds.
    """
    rng = np.random.default_rng(measurement.seed)
    noisy = frame.copy()
    for column in NUMERIC_FEATURES:
        values = noisy[column].astype("float64")
        noisy[column] = values + rng.normal(0.0, measurement.noise_std * float(values.std()), len(values))
    unseen = frame.copy()
    rows = rng.random(len(frame)) < measurement.unseen_fraction
    for column in CATEGORICAL_FEATURES:
        unseen[column] = unseen[column].astype(str).where(~rows, UNSEEN)
    return {"noise": noisy, "unseen": unseen}


def measure(
    models: dict[str, bytes], frame: pd.DataFrame, measurement: Measurement, price_per_vcpu_hour: float
) -> dict[str, dict]:
    """Every figure the scorecard shows, per model, on `frame` (labelled held-out rows)."""
    labels = frame[TARGET].to_numpy()
    variants = perturbed(frame, measurement)
    operational = probe(models, frame, measurement)
    figures = {}
    for name, data in models.items():
        clean = onnx_metrics.predictive(labels, onnx_metrics.scores(data, frame))
        robust = {
            f"auc_{variant}": onnx_metrics.predictive(labels, onnx_metrics.scores(data, rows))["auc"]
            for variant, rows in variants.items()
        }
        timed = operational[name]
        cost = {
            f"cost_per_1k_usd_{label}": timed[f"cpu_s_per_row_{label}"] * 1000 / 3600 * price_per_vcpu_hour
            for label in ("one_thread", "all_threads")
        }
        figures[name] = {"auc": clean["auc"], "f1": clean["f1"], **robust, **timed, **cost, "size_bytes": len(data)}
    return figures


def axis_scores(figures: dict[str, dict], auc_scale: float) -> dict[str, dict[str, float]]:
    """Each candidate's score in [0, 1] on each axis, relative to the best candidate on that axis.

    Costs (latency, size, memory, price) score best/value and throughput value/best, so a candidate
    twice as slow as the fastest scores 0.5 whatever the units. AUC differences are tiny as ratios,
    so accuracy and robustness score 1 - (best - value) / auc_scale instead, clipped at 0: a
    candidate `auc_scale` (the accuracy floor) below the best scores 0.
    """

    def best_over(value) -> float:
        return value(max(figures.values(), key=value))

    def lowest(key: str) -> float:
        return min(f[key] for f in figures.values())

    def robust(f: dict) -> float:
        return (f["auc_noise"] + f["auc_unseen"]) / 2

    top_auc, top_robust = best_over(lambda f: f["auc"]), best_over(robust)
    top_rows = best_over(lambda f: f["rows_per_s_all_threads"])
    p50, p99 = lowest("latency_p50_ms_one_thread"), lowest("latency_p99_ms_one_thread")
    size, memory = lowest("size_bytes"), max(lowest("peak_memory_mb"), 1e-3)
    cost = lowest("cost_per_1k_usd_one_thread")
    scores = {}
    for name, f in figures.items():
        scores[name] = {
            "accuracy": max(0.0, 1 - (top_auc - f["auc"]) / auc_scale),
            "latency": (p50 / f["latency_p50_ms_one_thread"] + p99 / f["latency_p99_ms_one_thread"]) / 2,
            "throughput": f["rows_per_s_all_threads"] / top_rows,
            "size": size / f["size_bytes"],
            "memory": memory / max(f["peak_memory_mb"], 1e-3),
            "robustness": max(0.0, 1 - (top_robust - robust(f)) / auc_scale),
            "cost": cost / f["cost_per_1k_usd_one_thread"],
        }
    return scores


@dataclass
class Verdict:
    name: str
    score: float
    axes: dict[str, float]
    passed: bool
    reason: str
    rank: int = 0


def choose(figures: dict[str, dict], weights: dict[str, float], *, baseline: str, max_auc_loss: float) -> list[Verdict]:
    """Candidates ranked by weighted score, those under the accuracy floor last; the first one wins.

    The floor is absolute: a candidate losing more than `max_auc_loss` AUC against `baseline` is
    rejected whatever its other figures. Ties go to the smaller file.
    """
    unknown = set(weights) - set(AXES)
    if unknown or not any(weights.values()):
        raise ValueError(f"weights must be non-negative numbers over {AXES}, not all zero; got {weights}")
    total = sum(weights.values())
    floor = figures[baseline]["auc"] - max_auc_loss
    verdicts = []
    for name, axes in axis_scores(figures, max_auc_loss).items():
        auc = figures[name]["auc"]
        loss = figures[baseline]["auc"] - auc
        passed = auc >= floor
        reason = (
            f"AUC {auc:.4f} >= floor {floor:.4f}"
            if passed
            else f"rejected: AUC {auc:.4f} loses {loss:.4f} against {baseline}, more than {max_auc_loss:.4f}"
        )
        score = sum(weights.get(axis, 0.0) * axes[axis] for axis in AXES) / total
        verdicts.append(Verdict(name, score, axes, passed, reason))
    verdicts.sort(key=lambda v: (not v.passed, -v.score, figures[v.name]["size_bytes"]))
    for rank, verdict in enumerate(verdicts, start=1):
        verdict.rank = rank
    return verdicts


COLUMNS = (
    ("auc", "AUC", "{:.4f}"),
    ("f1", "F1", "{:.3f}"),
    ("latency_p50_ms_one_thread", "p50 ms (1 thr)", "{:.3f}"),
    ("latency_p99_ms_one_thread", "p99 ms (1 thr)", "{:.3f}"),
    ("latency_p50_ms_all_threads", "p50 ms (all)", "{:.3f}"),
    ("latency_p99_ms_all_threads", "p99 ms (all)", "{:.3f}"),
    ("rows_per_s_one_thread", "rows/s b256 (1 thr)", "{:,.0f}"),
    ("rows_per_s_all_threads", "rows/s b256 (all)", "{:,.0f}"),
    ("size_bytes", "size KiB", None),
    ("peak_memory_mb", "peak MiB", "{:.1f}"),
    ("auc_noise", "AUC noise", "{:.4f}"),
    ("auc_unseen", "AUC unseen", "{:.4f}"),
    ("cost_per_1k_usd_one_thread", "$ / 1k, model compute only (1 thr)", "{:.2e}"),
)


def markdown(figures: dict[str, dict], verdicts: list[Verdict], weights: dict[str, float], profile: str) -> str:
    """The scorecard as a Markdown table, best first, with the weights that ranked it."""
    header = ["rank", "candidate", "score", *(label for _, label, _ in COLUMNS), "floor"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in verdicts:
        f = figures[v.name]
        cells = [str(v.rank), f"**{v.name}**" if v.rank == 1 else v.name, f"{v.score:.3f}"]
        for key, _, fmt in COLUMNS:
            cells.append(f"{f[key] / 1024:,.0f}" if key == "size_bytes" else fmt.format(f[key]))
        cells.append("pass" if v.passed else "**rejected**")
        lines.append("| " + " | ".join(cells) + " |")
    axes = ["| candidate | " + " | ".join(AXES) + " |", "|" + "---|" * (len(AXES) + 1)]
    for v in verdicts:
        axes.append(f"| {v.name} | " + " | ".join(f"{v.axes[a]:.2f}" for a in AXES) + " |")
    weight_text = ", ".join(f"{a} {weights.get(a, 0.0):g}" for a in AXES)
    return "\n".join(
        [
            *lines,
            "",
            f"Profile `{profile}` weights: {weight_text}. Score = weighted mean of the axis scores below "
            "(1 = best candidate on that axis).",
            "",
            *axes,
            "",
            *(f"- {v.name}: {v.reason}" for v in verdicts if not v.passed),
        ]
    )


def why(verdicts: list[Verdict], weights: dict[str, float]) -> str:
    """One sentence: which weighted axes carried the winner over the runner-up."""
    winner = verdicts[0]
    others = [v for v in verdicts[1:] if v.passed]
    if not others:
        return f"{winner.name} is the only candidate over the accuracy floor."
    runner = others[0]
    total = sum(weights.values())
    gains = sorted(((weights.get(a, 0.0) * (winner.axes[a] - runner.axes[a]) / total, a) for a in AXES), reverse=True)
    leads = ", ".join(f"{a} (+{g:.3f})" for g, a in gains if g > 0.0005) or "no single axis"
    return (
        f"{winner.name} scores {winner.score:.3f} against {runner.name}'s {runner.score:.3f}; "
        f"weighted gains over it come from {leads}."
    )


def plot_png(figures: dict[str, dict], verdicts: list[Verdict], floor: float) -> bytes:
    """AUC against p99 latency at batch 1 (one thread); marker area proportional to file size; the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    largest = max(f["size_bytes"] for f in figures.values())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for v in verdicts:
        f = figures[v.name]
        color = "tab:green" if v.rank == 1 else ("tab:blue" if v.passed else "tab:red")
        ax.scatter(
            f["latency_p99_ms_one_thread"],
            f["auc"],
            s=60 + 1400 * f["size_bytes"] / largest,
            alpha=0.55,
            color=color,
            edgecolors="black",
            marker="o" if v.passed else "X",
        )
        label = f"{v.name} ({f['size_bytes'] / 1024:,.0f} KiB)"
        ax.annotate(label, (f["latency_p99_ms_one_thread"], f["auc"]), xytext=(6, 6), textcoords="offset points")
    ax.axhline(floor, linestyle="--", color="tab:red", linewidth=1)
    ax.annotate("accuracy floor", (0, floor), xycoords=("axes fraction", "data"), xytext=(4, -12),
                textcoords="offset points", color="tab:red")  # fmt: skip
    ax.margins(x=0.25, y=0.15)  # room for the labels of the largest and outermost markers
    ax.set_xlabel("p99 latency at batch 1, one thread (ms)")
    ax.set_ylabel("ROC AUC on held-out month")
    ax.set_title(f"Scorecard: winner {verdicts[0].name} (green); rejected in red; area = file size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def embedded_png(png: bytes) -> str:
    return f"![scorecard plot](data:image/png;base64,{base64.b64encode(png).decode()})"
