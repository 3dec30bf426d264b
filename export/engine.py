"""ONNX -> TensorRT engine, built on the GPU that will run it (TensorRT 10/11 Python API).

The network is strongly typed: every layer runs in the type the ONNX gives it (FP32, the FP16
export, or the S8S8 QDQ model), so no precision builder flags are set — TensorRT 10.1
deprecated implicit INT8 calibration and TensorRT 11 removed the FP16/INT8 flags; in 11 strong
typing is always on and the creation flag is ignored. The batch dimension gets an optimisation
profile (1 .. max, tuned for `opt`). A timing cache makes rebuilds fast; version-compatible
engines run on later TensorRT releases of the same major version, and TensorRT 10 ones on
TensorRT 11 (a bit slower).

The engine sidecar records what the runtime checks before deserialising: TensorRT version,
GPU and compute capability, precision, batch profile, and the ONNX (hash and full sidecar) —
the hash is how an engine is paired with its ONNX. Engine and sidecar are committed together,
after the new engine has been deserialized and run once through the runtime's TensorRT backend.
`adopt_engine` writes the sidecar for an engine built elsewhere (trtexec).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from skyloc.core.atomic import scratch_path
from skyloc.export.trt_build import build_plan, parse_failure_message, save_timing_cache  # noqa: F401
from skyloc.runtime.backends.tensorrt_backend import check_engine_input, import_tensorrt, np_dtype, tensor_io
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import (EngineSidecar, ModelSidecar, model_sidecar_path, read_model_sidecar,
                                 write_engine_sidecar)

log = logging.getLogger(__name__)
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8-trt")


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the CUDA device the engine is built on."""
    from skyloc.runtime.backends.cuda_memory import open_cuda

    cuda = open_cuda(device)
    try:
        return cuda.device_name, cuda.compute_capability
    finally:
        cuda.release()


def _check_source(onnx_path: Path) -> ModelSidecar:
    side = read_model_sidecar(onnx_path)  # refuses an ONNX that changed after export
    if side.precision not in TENSORRT_PRECISIONS:
        raise SkylocError(f"{onnx_path} is the {side.precision} model (ONNX Runtime's U8S8 format); build the "
                          "engine from the *.int8-trt.onnx, the FP16 or the FP32 export")
    return side


def commit_pair(out: Path, plan: bytes, write_sidecar: Callable[[Path], Any],
                verify: Callable[[Path], None] | None) -> None:
    """Write engine + sidecar under temporary names, run the engine once through the runtime
    (`verify`, when given), then move both into place. The old sidecar is removed before the old
    engine is replaced, so an interrupted commit never leaves a sidecar describing an engine it
    does not belong to."""
    tmp = scratch_path(out)
    tmp_side = model_sidecar_path(tmp)
    try:
        tmp.write_bytes(plan)
        write_sidecar(tmp)
        if verify is not None:
            verify(tmp)
        model_sidecar_path(out).unlink(missing_ok=True)
        os.replace(tmp, out)
        os.replace(tmp_side, model_sidecar_path(out))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)


def _verify_engine(engine: Path) -> None:
    from skyloc.runtime.backends.cuda_memory import available_bindings
    from skyloc.runtime.backends.tensorrt_backend import TensorRTBackend

    if not available_bindings():
        log.warning("cuda-python / pycuda not installed: %s was not test-run before writing", engine.name)
        return
    be = TensorRTBackend(engine)
    try:
        be.warm_up((1, be.max_batch or 1))
    finally:
        be.close()


def build_engine(onnx_path: str | os.PathLike, out: str | os.PathLike, max_batch: int = 8,
                 opt_batch: int | None = None, timing_cache: str | os.PathLike | None = None,
                 version_compatible: bool = False, workspace_mb: int | None = None,
                 verbose: bool = False, verify: bool = True) -> Path:
    """Build a serialized engine at `out` (+ `out.json` sidecar) from an exported ONNX."""
    onnx_path, out = Path(onnx_path), Path(out)
    side = _check_source(onnx_path)
    if max_batch < 1:
        raise SkylocError(f"--max-batch must be >= 1, got {max_batch}")
    opt = opt_batch or max(1, max_batch // 2)
    if not 1 <= opt <= max_batch:
        raise SkylocError(f"--opt-batch {opt} must lie in 1..{max_batch}")
    trt = import_tensorrt()
    gpu_name, cc = gpu_info()

    def batch_profile(shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        if len(shape) != 4:
            raise SkylocError(f"{onnx_path} input has shape {shape}; a skyloc embedding model takes (batch, H, W, 3)")
        _, h, w, c = shape
        return (1, h, w, c), (opt, h, w, c), (max_batch, h, w, c)

    plan, config = build_plan(trt, onnx_path, batch_profile, cc, timing_cache=timing_cache,
                              version_compatible=version_compatible, workspace_mb=workspace_mb, verbose=verbose)
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = EngineSidecar(
        model=side, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc,
        precision=side.precision, onnx_sha256=side.onnx_sha256, max_batch=max_batch,
        version_compatible=version_compatible, opt_batch=opt, min_batch=1,
    )
    commit_pair(out, plan, lambda p: write_engine_sidecar(p, sidecar), _verify_engine if verify else None)
    save_timing_cache(trt, config, timing_cache, gpu_name, cc)  # after the engine: the engine is the product
    return out


def _deserialize(trt: Any, engine_path: Path, version_compatible: bool) -> Any:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise SkylocError(f"TensorRT {trt.__version__} cannot deserialize {engine_path}: build it with the same "
                          "TensorRT on this GPU (trtexec --versionCompatible needs --version-compatible here)")
    return engine, runtime


def adopt_engine(engine_path: str | os.PathLike, onnx_path: str | os.PathLike,
                 version_compatible: bool = False, verify: bool = True) -> Path:
    """Write the sidecar for an engine built outside skyloc (e.g. `trtexec --onnx=M.onnx
    --saveEngine=M.engine --stronglyTyped --minShapes/--optShapes/--maxShapes`): the engine is
    deserialized here, its I/O checked against the ONNX's sidecar, its batch profile read back,
    and it is run once. Returns the sidecar path."""
    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    if not engine_path.is_file():
        raise SkylocError(f"engine {engine_path} not found")
    side = _check_source(onnx_path)
    trt = import_tensorrt()
    gpu_name, cc = gpu_info()
    engine, _runtime = _deserialize(trt, engine_path, version_compatible)
    inputs, outputs = tensor_io(engine, trt)
    if inputs != [side.input.name] or side.output_name not in outputs:
        raise SkylocError(f"engine {engine_path} I/O {inputs} -> {outputs} is not that of {onnx_path} "
                          f"({side.input.name!r} -> {side.output_name!r}): it was built from another model")
    shape = tuple(int(d) for d in engine.get_tensor_shape(side.input.name))
    check_engine_input(engine_path, side.input, np_dtype(trt, engine.get_tensor_dtype(side.input.name)), shape)
    if shape[0] == -1:
        lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(side.input.name, 0))
        min_b, opt_b, max_b = int(lo[0]), int(opt[0]), int(hi[0])
    else:
        min_b = opt_b = max_b = int(shape[0])
    del engine
    sidecar = EngineSidecar(
        model=side, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc,
        precision=side.precision, onnx_sha256=side.onnx_sha256, max_batch=max_b,
        version_compatible=version_compatible, opt_batch=opt_b, min_batch=min_b,
    )
    if verify:  # run it under a temporary sidecar before claiming anything about it
        tmp_engine = scratch_path(engine_path)
        try:
            os.link(engine_path, tmp_engine)
        except OSError:
            tmp_engine.write_bytes(engine_path.read_bytes())
        try:
            write_engine_sidecar(tmp_engine, sidecar)
            _verify_engine(tmp_engine)
        finally:
            tmp_engine.unlink(missing_ok=True)
            model_sidecar_path(tmp_engine).unlink(missing_ok=True)
    return write_engine_sidecar(engine_path, sidecar)  # atomic: the old sidecar stays until the new one is whole
