"""One loaded model version: its ONNX Runtime session, signature, statistics and (optionally) batcher,
and the warm-up that checks it and estimates what a batch costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serving.batching import BatchResult, DynamicBatcher, run_direct
from serving.metrics import ServerStats
from serving.queue_budget import QueueBudget
from serving.signature import ModelSignature


@dataclass
class RepositoryConfig:
    max_batch_size: int = 256
    max_queue_delay_us: int = 0
    queue_capacity: int = 1024
    max_queued_bytes: int = 64 * 1024 * 1024  # request data queued over every model (0: no limit)
    batching: bool = True
    intra_op_threads: int = 1
    nan_policy: str = "reject"
    default_alias: str = "champion"
    # Batches expected to compute faster than this run inline on the event loop; slower ones on
    # the model's compute thread (a thread hand-off costs tens of microseconds).
    inline_budget_us: float = 500.0


def example_inputs(signature: ModelSignature, rows: int) -> dict[str, np.ndarray]:
    """Neutral inputs (zeros, empty strings) for warm-up: `rows` on the batch dimension, 1 elsewhere."""
    feeds = {}
    for spec in signature.inputs:
        shape = tuple(
            rows if (i == 0 and signature.batched) else (d if d >= 0 else 1) for i, d in enumerate(spec.shape)
        )
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill("")
        else:
            array = np.zeros(shape, dtype=spec.numpy_dtype)
        feeds[spec.name] = array
    return feeds


class LoadedModel:
    """One loaded version: its session, signature, statistics and (optionally) batcher."""

    def __init__(
        self,
        name: str,
        version: str,
        session,
        signature: ModelSignature,
        source: str,
        config: RepositoryConfig,
        stats: ServerStats,
        budget: QueueBudget | None = None,
    ):
        self.name = name
        self.version = version
        self.session = session
        self.signature = signature
        self.source = source
        self.nan_policy = config.nan_policy
        self.max_batch_size = config.max_batch_size if signature.batched else 0
        self.output_names = [o.name for o in signature.outputs]
        self.output_datatypes = [o.datatype for o in signature.outputs]
        self.stats = stats.model(name, version)
        self.batcher: DynamicBatcher | None = None
        self.cost_ns = (0.0, 0.0)  # (fixed, per row) compute time, measured by the warm-up
        self._config = config
        self._budget = budget

    def run(self, feeds: dict[str, np.ndarray]):
        return self.session.run(self.output_names, feeds)

    def start_batcher(self) -> None:
        if self._config.batching and self.max_batch_size > 0 and self.batcher is None:
            self.batcher = DynamicBatcher(
                self.run,
                max_batch_size=self.max_batch_size,
                max_queue_delay_us=self._config.max_queue_delay_us,
                capacity=self._config.queue_capacity,
                inline_budget_us=self._config.inline_budget_us,
                cost_ns=self.cost_ns,
                on_batch=self.stats.record_batch,
                thread_name=f"batch-{self.name}-{self.version}",
                budget=self._budget,
            )

    async def infer(self, feeds: dict[str, np.ndarray], rows: int) -> BatchResult:
        batcher = self.batcher
        if batcher is not None:
            return await batcher.submit(feeds, rows)
        result = run_direct(self.run, feeds, rows)
        self.stats.record_batch(rows, result.compute_ns)
        return result

    async def drain(self, timeout: float | None = None) -> bool:
        if self.batcher is not None:
            return await self.batcher.drain(timeout)
        return True

    def stalled_s(self) -> float:
        return self.batcher.stalled_s() if self.batcher is not None else 0.0

    def warm_up(self) -> None:
        """Run the model on neutral inputs (one row and a batch), check the output shapes, and
        time the second runs: the batcher's first estimate of a batch's cost."""
        sizes = [1] + ([min(self.max_batch_size, 64)] if self.max_batch_size > 1 else [])
        timings = {}
        for rows in sizes:
            feeds = example_inputs(self.signature, rows)
            for _ in range(2):
                start = time.perf_counter_ns()
                outputs = self.run(feeds)
                timings[rows] = time.perf_counter_ns() - start
            if self.signature.batched:
                for name, out in zip(self.output_names, outputs, strict=True):
                    if out.shape[:1] != (rows,):
                        raise ValueError(f"output '{name}' has shape {list(out.shape)} for {rows} input rows")
        if len(timings) == 2:
            (one, t1), (many, tn) = sorted(timings.items())
            per_row = max(0.0, (tn - t1) / (many - one))
            self.cost_ns = (max(0.0, t1 - per_row), per_row)
        else:
            self.cost_ns = (float(timings[1]), 0.0)
