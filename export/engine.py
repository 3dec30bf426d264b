"""ONNX -> TensorRT engine, built on the GPU that will run it (TensorRT 10/11 Python API).

The network is strongly typed: every layer runs in the type the ONNX gives it (FP32, the FP16
export, or the S8S8 QDQ model), so no precision builder flags are set — TensorRT 10.1
deprecated implicit INT8 calibration and TensorRT 11 removed the FP16/INT8 flags; in 11 strong
typing is always on and the creation flag is ignored. The batch dimension gets an optimisation
profile (1 .. max, tuned for `opt`). A timing cache makes rebuilds fast; version-compatible
engines run on later TensorRT releases of the same major version (a bit slower).

The engine sidecar records what the runtime checks before deserialising: TensorRT version,
GPU and compute capability, precision, batch profile, and the ONNX (hash and full sidecar).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sidecar import EngineSidecar, read_engine_sidecar, read_model_sidecar, write_engine_sidecar

INSTALL_HINT = ("install TensorRT on the machine with the target GPU (desktop: `pip install -e '.[gpu]'`; "
                "Jetson: it comes with JetPack) and build the engine there — engines are specific to the GPU "
                "and TensorRT version; without a GPU use the .onnx with ONNX Runtime")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise SkylocError(f"TensorRT is not available here ({exc}): {INSTALL_HINT}") from None
    return trt


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the CUDA device the engine is built on."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    try:  # Jetson images often have pycuda but no CUDA torch
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        return dev.name(), "%d.%d" % dev.compute_capability()
    except Exception:
        pass
    raise SkylocError(f"no NVIDIA GPU is visible (CUDA device {device}): {INSTALL_HINT}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(onnx_path: str | os.PathLike, out: str | os.PathLike, max_batch: int = 8,
                 opt_batch: int | None = None, timing_cache: str | os.PathLike | None = None,
                 version_compatible: bool = False, workspace_mb: int | None = None,
                 verbose: bool = False) -> Path:
    """Build a serialized engine at `out` (+ `out.json` sidecar) from an exported ONNX."""
    onnx_path, out = Path(onnx_path), Path(out)
    side = read_model_sidecar(onnx_path)  # refuses an ONNX that changed after export
    if max_batch < 1:
        raise SkylocError(f"--max-batch must be >= 1, got {max_batch}")
    opt = opt_batch or max(1, max_batch // 2)
    if not 1 <= opt <= max_batch:
        raise SkylocError(f"--opt-batch {opt} must lie in 1..{max_batch}")
    trt = import_tensorrt()
    gpu_name, cc = gpu_info()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkylocError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    inp = network.get_input(0)
    _, h, w, c = tuple(inp.shape)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, h, w, c), (opt, h, w, c), (max_batch, h, w, c))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SkylocError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above); "
                          "try --workspace-mb with more memory or a smaller --max-batch")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, bytes(plan))
    if cache_path:
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    write_engine_sidecar(out, EngineSidecar(
        model=side, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc,
        precision=side.precision, onnx_sha256=side.onnx_sha256, max_batch=max_batch,
        version_compatible=version_compatible, opt_batch=opt, min_batch=1,
    ))
    return out


def run_engine(engine_path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run a built engine once on a uint8 NHWC batch (torch CUDA buffers; for tests and
    checks on the build machine — the drone uses runtime.backends.tensorrt_backend)."""
    import torch

    trt = import_tensorrt()
    engine_path = Path(engine_path)
    side = read_engine_sidecar(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if side.version_compatible:
        runtime.engine_host_code_allowed = True  # version-compatible plans embed the lean runtime
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise SkylocError(f"TensorRT cannot deserialize {engine_path}: rebuild it with `skyloc engine`")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    ctx = engine.create_execution_context()
    x = torch.from_numpy(np.ascontiguousarray(images)).cuda()
    ctx.set_input_shape(inputs[0], tuple(x.shape))
    ctx.set_tensor_address(inputs[0], x.data_ptr())
    y = torch.empty(tuple(ctx.get_tensor_shape(outputs[0])), dtype=torch.float32, device="cuda")
    ctx.set_tensor_address(outputs[0], y.data_ptr())
    stream = torch.cuda.Stream()
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"TensorRT execution of {engine_path} failed")
    stream.synchronize()
    return y.cpu().numpy()
