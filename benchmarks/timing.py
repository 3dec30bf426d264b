"""Timing helpers shared by the benchmarks: fixed random inputs, interleaved timed calls."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from skyloc.benchmarks.report import percentiles_ms


def make_input(contract: Any, batch: int, seed: int = 0) -> np.ndarray:
    """A fixed random batch in the model's input layout (uint8 frames, or float if declared)."""
    rng = np.random.default_rng(seed)
    c = contract
    shape = (batch, c.height, c.width, 3) if c.layout.upper() == "NHWC" else (batch, 3, c.height, c.width)
    return rng.integers(0, 256, shape, dtype=np.uint8) if c.dtype == "uint8" else rng.random(shape, dtype=np.float32)


def interleaved_times(calls: Sequence[Callable[[], Any]], runs: int, warmup: int, seed: int = 0) -> list[list[int]]:
    """Durations (ns) of `runs` calls of each callable, taken round-robin in a shuffled order per
    round, so load changes on a shared machine hit every candidate alike and ratios stay fair."""
    for call in calls:
        for _ in range(warmup):
            call()
    rng = np.random.default_rng(seed)
    times: list[list[int]] = [[] for _ in calls]
    for _ in range(runs):
        for i in rng.permutation(len(calls)):
            t0 = time.perf_counter_ns()
            calls[i]()
            times[i].append(time.perf_counter_ns() - t0)
    return times


def time_backend(backend: Any, batch: int, runs: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """p50/p90/p99/mean (ms) and throughput (images/s) of backend.embed on a random batch."""
    x = make_input(backend.contract, batch, seed)
    (times,) = interleaved_times([lambda: backend.embed(x)], runs, warmup)
    stats = percentiles_ms(times)
    stats["throughput_ips"] = batch * 1000.0 / stats["mean_ms"]
    return stats
