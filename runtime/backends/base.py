"""One small interface in front of every inference runtime.

A backend turns a batch already in the model's input layout (see runtime.preprocess) into
L2-normalised float32 embeddings. Backends are a registry: a plugin module defines a subclass,
decorates it with `@register_backend("name")`, and `open_backend(..., backend="name")` finds it.
`auto` asks every registered backend that opens this kind of file whether it can run here and
takes the highest-priority one.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.metrics import l2_normalize  # re-exported by skyloc.runtime.backends
from skyloc.core.sidecar import InputContract, ModelSidecar

log = logging.getLogger(__name__)

BACKENDS: dict[str, type["Backend"]] = {}

_NP_DTYPES = {"uint8": np.uint8, "float32": np.float32, "float16": np.float16}


def register_backend(name: str) -> Callable[[type["Backend"]], type["Backend"]]:
    """Class decorator: make a Backend subclass available as `open_backend(..., backend=name)`."""

    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


class Backend(ABC):
    """An opened model. Subclasses set `sidecar`, `max_batch` and implement `_run`."""

    name: ClassVar[str] = "?"
    priority: ClassVar[int] = 0  # `auto` prefers higher
    suffixes: ClassVar[tuple[str, ...]] = ()  # model files this backend opens
    default_conf: ClassVar[dict[str, Any]] = {}

    sidecar: ModelSidecar
    model_path: Path
    max_batch: int | None = None  # None: any batch size
    fixed_batch: int | None = None  # the graph only takes exactly this many rows (pad the rest)

    def __init__(self, model_path: str | Path, conf: dict[str, Any] | None = None) -> None:
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise SkylocError(
                f"backend {self.name!r} does not know option(s) {sorted(unknown)}; "
                f"it takes: {sorted(self.default_conf)}"
            )
        self.conf = {**self.default_conf, **(conf or {})}
        self.model_path = Path(model_path)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(can run on this machine, why not) — cheap: must not load models or touch the GPU."""
        return True, ""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output (B, D) for a batch of at most max_batch rows."""

    @property
    def contract(self) -> InputContract:
        return self.sidecar.input

    @property
    def precision(self) -> str:
        return self.sidecar.precision

    @property
    def providers(self) -> str:
        """What actually executes the graph (e.g. execution providers)."""
        return self.name

    @property
    def description(self) -> str:
        s = self.sidecar
        return (f"{self.name} [{self.providers}] {self.model_path.name} "
                f"({s.variant}, {self.precision}, {s.embedding_dim}-d)")

    def _check_batch(self, batch: np.ndarray) -> None:
        c = self.contract
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise ValueError(f"{self.name}: expected a 4-D batch, got {getattr(batch, 'shape', type(batch))}")
        want = (c.height, c.width, 3) if c.layout.upper() == "NHWC" else (3, c.height, c.width)
        if tuple(batch.shape[1:]) != want:
            raise ValueError(
                f"{self.name}: batch shape {batch.shape[1:]} does not match the model input {want} "
                f"({c.layout}); build batches with runtime.preprocess.to_model_input"
            )
        dtype = _NP_DTYPES.get(c.dtype)
        if dtype is not None and batch.dtype != dtype:
            raise ValueError(f"{self.name}: batch dtype {batch.dtype} != model input dtype {c.dtype}")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) model input -> (B, D) float32, each row of unit length."""
        self._check_batch(batch)
        b = batch.shape[0]
        if b == 0:
            return np.zeros((0, self.sidecar.embedding_dim), np.float32)
        step = self.fixed_batch or self.max_batch or b
        outs = []
        for i in range(0, b, max(step, 1)):
            chunk = batch[i:i + step]
            n = chunk.shape[0]
            if self.fixed_batch and n < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - n,) + chunk.shape[1:], dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(np.asarray(self._run(np.ascontiguousarray(chunk)))[:n])
        out = np.concatenate(outs) if len(outs) > 1 else outs[0]
        out = out.reshape(b, -1)
        if out.shape[1] != self.sidecar.embedding_dim:
            raise SkylocError(
                f"{self.model_path} produced {out.shape[1]}-d embeddings but its sidecar says "
                f"{self.sidecar.embedding_dim}: re-export the model"
            )
        return l2_normalize(out)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the model once per batch size on a blank input, so that lazy work (TensorRT EP
        engine builds, CUDA kernel loading, allocator growth) happens now and not on the first
        flight frame. The loop owner calls it before the first frame."""
        c = self.contract
        dtype = _NP_DTYPES.get(c.dtype, np.float32)
        shape = (c.height, c.width, 3) if c.layout.upper() == "NHWC" else (3, c.height, c.width)
        for b in batch_sizes:
            if int(b) < 1:
                raise ValueError(f"{self.name}: warm-up batch size must be >= 1, got {b}")
            out = self.embed(np.zeros((int(b),) + shape, dtype=dtype))
            if not np.isfinite(out).all():
                raise SkylocError(f"{self.model_path} gives non-finite embeddings on a blank input with "
                                  f"{self.description}: the model or this runtime is broken")

    def close(self) -> None:
        """Free runtime resources (sessions, GPU buffers)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
