"""What `skyloc doctor` (benchmarks/gpu_check.py and gpu_check_onnx.py) shares: its options,
the report it fills, a device-synchronised timer and the output comparison."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.options import check_options, opt

DEVICES = ("cuda", "cpu")


@dataclass
class GpuCheckOptions:
    gpu: bool = opt(False, "time the models and build/run what the installed GPU stack allows "
                           "(without it: versions only)")
    device: str = opt("cuda", "torch device for the timings (cpu: tiny sizes, for tests)", choices=DEVICES)
    preset: str | None = opt(None, "MSBA model preset (None: msba on cuda, tiny on cpu); weights are random "
                                   "unless --checkpoint is given: timings do not depend on them")
    checkpoint: Path | None = opt(None, "a trained checkpoint instead of a random-init preset")
    batches: tuple[int, ...] = opt((1, 8), "batch sizes to time", ge=1, le=4096)
    iters: int = opt(30, "timed runs per measurement (after 3 warm-up runs)", ge=1, le=100_000)
    matcher_size: int = opt(512, "matcher input side in px (a multiple of 32)", ge=32, le=8192)
    onnx: bool = opt(True, "also export to ONNX and run ONNX Runtime / TensorRT")
    onnx_variants: tuple[str, ...] = opt(("full", "global"), "MSBA variants to export and run (full, global)")
    matcher_onnx: Path | None = opt(None, "an exported matcher (`skyloc export matcher`) instead of exporting one")
    budget_s: float = opt(330.0, "start no new step after this many seconds (one step, e.g. an engine "
                                  "build, may still run ~2 min: the whole check stays under 8 min)", gt=0, le=86_400)
    out: Path | None = opt(None, "markdown report (default: $OUT/gpu-check.md when $OUT is set)")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.batches:
            raise SkylocError("GpuCheckOptions.batches (--batches): give at least one batch size")
        if not self.onnx_variants or set(self.onnx_variants) - {"full", "global"}:
            raise SkylocError(f"--onnx-variants must name full and/or global, got {self.onnx_variants}")
        if self.matcher_size % 32:
            raise SkylocError(f"--matcher-size {self.matcher_size} must be a multiple of 32 (XFeat's stride)")


@dataclass
class Report:
    """What the check found: rows of timings, comparisons, and what it could not run."""

    started: float = field(default_factory=time.perf_counter)
    budget_s: float = 330.0
    versions: dict[str, str] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)  # model, runtime, precision, batch, ms, vs
    not_run: list[tuple[str, str]] = field(default_factory=list)  # (what, why)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, what: str, fn: Callable[[], None]) -> None:
        """Run one step; an exception becomes a "could not run" line (the check goes on)."""
        if self.elapsed() > self.budget_s:
            self.not_run.append((what, f"time budget of {self.budget_s:.0f} s spent"))
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 -- the report names every failure, the run goes on
            self.not_run.append((what, f"{type(exc).__name__}: {str(exc)[:400]}"))


def time_ms(fn: Callable[[], Any], sync: Callable[[], None], iters: int, warmup: int = 3) -> tuple[float, float]:
    """(median, 90th percentile) wall time of `fn` in ms, synchronised with the device."""
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        runs.append((time.perf_counter() - t) * 1e3)
    runs.sort()
    return statistics.median(runs), runs[min(len(runs) - 1, int(0.9 * len(runs)))]


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(1) / np.maximum(den, 1e-30)))
