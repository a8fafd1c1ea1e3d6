"""Predictive and operational figures of an ONNX model on labelled rows, measured with onnxruntime."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from mlops_assets.features_spec import TARGET
from mlops_assets.training.onnx_export import onnx_feeds
from serving.sessions import create_session, recorded_options


def session(onnx_bytes: bytes):
    """A session under the options recorded with the model: the ones the scorecard and the server use."""
    return create_session(onnx_bytes, recorded_options(onnx_bytes))


def predict(sess, frame: pd.DataFrame) -> np.ndarray:
    """P(late) per row from an open session; open it once when scoring several frames."""
    return sess.run(["probability"], onnx_feeds(frame))[0].reshape(-1)


def scores(onnx_bytes: bytes, frame: pd.DataFrame) -> np.ndarray:
    return predict(session(onnx_bytes), frame)


def predictive(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, roc_auc_score

    predicted = (probability >= 0.5).astype(int)
    return {
        "auc": float(roc_auc_score(labels, probability)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "brier": float(brier_score_loss(labels, probability)),
    }


def operational(onnx_bytes: bytes, frame: pd.DataFrame, latency_runs: int, throughput_batch: int) -> dict[str, float]:
    """p50/p99 latency of single-row calls and rows/s of full batches, after a warm-up."""
    sess = session(onnx_bytes)
    single = [onnx_feeds(frame.iloc[[i % len(frame)]]) for i in range(latency_runs)]
    batch = onnx_feeds(frame.head(throughput_batch))
    for feeds in single[:20]:
        sess.run(None, feeds)
    latencies = []
    for feeds in single:
        start = time.perf_counter()
        sess.run(None, feeds)
        latencies.append(time.perf_counter() - start)
    repeats = max(10, latency_runs // 10)
    start = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, batch)
    elapsed = time.perf_counter() - start
    return {
        "latency_p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "latency_p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "throughput_rows_per_s": float(repeats * len(batch[next(iter(batch))]) / elapsed),
        "size_bytes": len(onnx_bytes),
    }


def evaluate(onnx_bytes: bytes, frame: pd.DataFrame, latency_runs: int, throughput_batch: int) -> dict[str, float]:
    return {
        **predictive(frame[TARGET].to_numpy(), scores(onnx_bytes, frame)),
        **operational(onnx_bytes, frame, latency_runs, throughput_batch),
    }
