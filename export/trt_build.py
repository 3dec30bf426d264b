"""One TensorRT build (TensorRT 10/11 Python API), shared by the embedding engines
(export/engine.py) and the matcher engines (export/matcher_engine.py): strongly typed network
from the ONNX, one optimisation profile over the single input, the timing cache checked against
its record (export/timing_cache.py) before anything runs.

Nothing here imports a training package: `onnx` (for the lint shown after a parse failure) is
optional, since the engine-building and onboard installs do not have it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from skyloc.core.errors import SkylocError
from skyloc.export.timing_cache import read_timing_cache, write_timing_cache

log = logging.getLogger(__name__)
Shape = tuple[int, ...]


def parse_failure_message(trt_version: str, onnx_path: Path, parser_errors: list[str]) -> str:
    """TensorRT's own parser messages, then what `skyloc check` finds when the `onnx` package is
    here. It is a training package, not in the onboard or engine-building installs: without it
    the parser's messages must still reach the user (never a ModuleNotFoundError instead)."""
    msg = f"TensorRT {trt_version} cannot parse {onnx_path}: {'; '.join(parser_errors) or 'no parser message'}."
    try:
        from skyloc.calibration.trt_lint import lint_model
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("onnx", "onnxscript"):
            raise
        return msg + (f" (`skyloc check {onnx_path}` names the offending nodes; it needs the onnx package, "
                      "not installed here: run it where the model was exported)")
    lint = [str(f) for f in lint_model(onnx_path) if f.severity == "error"]
    return msg + (f" `skyloc check` finds: {'; '.join(lint[:5])}" if lint else "")


def build_plan(trt: Any, onnx_path: Path, profile: Callable[[Shape], tuple[Shape, Shape, Shape]],
               compute_capability: str, timing_cache: str | os.PathLike | None = None,
               version_compatible: bool = False, workspace_mb: int | None = None,
               verbose: bool = False) -> tuple[bytes, Any]:
    """(serialized engine, builder config) for the one-input ONNX at `onnx_path`; `profile` maps
    the input's declared shape (-1 for dynamic dims) to its (min, opt, max) shapes."""
    cache_path = Path(timing_cache) if timing_cache else None
    # TensorRT only warns about a cache from another version and builds on (then this run would
    # overwrite it), so the version and GPU are checked here, before the long build.
    cache_bytes = read_timing_cache(cache_path, trt.__version__, compute_capability) if cache_path else b""
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SkylocError(parse_failure_message(trt.__version__, onnx_path, errors))
    if network.num_inputs != 1:
        raise SkylocError(f"{onnx_path} has {network.num_inputs} inputs; a skyloc model has one")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    inp = network.get_input(0)
    lo, opt, hi = profile(tuple(int(d) for d in inp.shape))
    prof = builder.create_optimization_profile()
    prof.set_shape(inp.name, lo, opt, hi)
    config.add_optimization_profile(prof)
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, False):
        raise SkylocError(f"TensorRT {trt.__version__} could not use the timing cache "
                          f"{cache_path or '(new, in memory)'}: delete it or pass another --timing-cache "
                          "(nothing was written)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SkylocError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above); "
                          "try --workspace-mb with more memory or a smaller profile")
    return bytes(plan), config


def save_timing_cache(trt: Any, config: Any, timing_cache: str | os.PathLike | None, gpu_name: str,
                      compute_capability: str) -> None:
    """Write the build's timing cache (and its record) to `timing_cache`, if one was given."""
    if not timing_cache:
        return
    built = config.get_timing_cache()
    if built is None:
        log.warning("TensorRT returned no timing cache: %s was not updated", timing_cache)
        return
    write_timing_cache(Path(timing_cache), bytes(built.serialize()), trt.__version__, gpu_name, compute_capability)
