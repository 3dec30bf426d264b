"""`open_backend`: a model file opened with a named backend, or the best one available for it.

Importing the two built-in backend modules registers them; neither imports its runtime library
(onnxruntime, tensorrt, cuda-python) until a model is opened.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.runtime.backends.base import BACKENDS, Backend
from skyloc.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: F401  (registers "onnxruntime")
from skyloc.runtime.backends.tensorrt_backend import (
    engine_source_path,  # also registers "tensorrt"
)

log = logging.getLogger(__name__)


def _conf_for(cls: type[Backend], conf: dict[str, Any] | None) -> dict[str, Any]:
    # `auto` may land on any backend, so options meant for another one are dropped, not fatal.
    conf = conf or {}
    ignored = sorted(set(conf) - set(cls.default_conf))
    if ignored:
        log.warning("backend %s ignores option(s) %s", cls.name, ignored)
    return {k: v for k, v in conf.items() if k in cls.default_conf}


def open_backend(model_path: str | Path, backend: str = "auto", conf: dict[str, Any] | None = None) -> Backend:
    """Open a model file with a named backend, or the best one available for it (`auto`)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise SkylocError(f"model {model_path} not found: pass the exported .onnx or a built .engine")
    if backend != "auto":
        cls = BACKENDS.get(backend)
        if cls is None:
            raise SkylocError(f"unknown backend {backend!r}; choose from: auto, {', '.join(sorted(BACKENDS))}")
        ok, why = cls.available()
        if not ok:
            raise SkylocError(f"backend {backend!r} is not available here: {why}")
        b = cls(model_path, conf)
        log.info("backend: %s", b.description)
        return b

    suffix = model_path.suffix.lower()
    candidates = sorted((c for c in BACKENDS.values() if suffix in c.suffixes), key=lambda c: -c.priority)
    reasons = []
    for cls in candidates:
        ok, why = cls.available()
        if not ok:
            reasons.append(f"{cls.name}: {why}")
            continue
        try:
            b = cls(model_path, _conf_for(cls, conf))
        except SkylocError as exc:
            # e.g. TensorRT installed but no usable GPU, or an engine for another GPU: try the next one.
            reasons.append(f"{cls.name}: {exc}")
            continue
        log.info("backend auto -> %s", b.description)
        return b
    # An engine that cannot run here: the ONNX it was built from, found by the sha256 its sidecar
    # records (never by file name), runs with onnxruntime.
    if suffix != ".onnx" and "onnxruntime" in BACKENDS:
        hint = (conf or {}).get("onnx")
        try:
            source = engine_source_path(model_path, hint)
        except SkylocError as exc:
            reasons.append(str(exc))
            source = None
        if source is not None:
            log.warning("cannot run %s (%s); falling back to %s (the ONNX it was built from) with onnxruntime",
                        model_path.name, "; ".join(reasons), source)
            return open_backend(source, "onnxruntime", _conf_for(BACKENDS["onnxruntime"], conf))
    raise SkylocError(
        f"no backend can run {model_path} ({'; '.join(reasons) or 'unsupported file type ' + repr(suffix)}); "
        f"use the exported .onnx (onnxruntime runs it anywhere) or install the GPU extra"
    )
