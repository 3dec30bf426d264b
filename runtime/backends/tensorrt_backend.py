"""Native TensorRT backend (TensorRT 10/11 Python API, pycuda buffers).

An engine is only valid for the TensorRT version and GPU it was built on, so before
deserializing we compare the engine sidecar with this machine and refuse a mismatch with the
command that rebuilds it. `tensorrt` and `pycuda` are imported only when an engine is opened:
the rest of the runtime works without them.

I/O uses the name-based tensor API (num_io_tensors / get_tensor_name / get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3). Device buffers are sized once for the
profile's largest batch, and their addresses are bound once.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.backends.base import Backend, register_backend
from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sidecar import EngineSidecar, read_engine_sidecar, sha256_file

log = logging.getLogger("skyloc.backends")

REBUILD = "rebuild the engine on this device with `skyloc engine --onnx MODEL.onnx --out MODEL.engine`"
_TRT_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8,
           "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def _import_trt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise SkylocError(
            f"the tensorrt backend needs the TensorRT Python package ({exc}); on Jetson it comes with "
            f"JetPack, on a desktop `pip install skyloc[gpu]` — or run the .onnx with --backend onnxruntime"
        ) from None
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise SkylocError(f"the tensorrt backend needs pycuda ({exc}): `pip install pycuda`") from None
    return trt, cuda


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_engine_sidecar(
    sidecar: EngineSidecar, trt_version: str, compute_capability: str,
    onnx_path: str | Path | None = None,
) -> None:
    """Refuse an engine built for another TensorRT, another GPU, or from another ONNX."""
    built, here = _version_tuple(sidecar.tensorrt_version), _version_tuple(trt_version)
    if sidecar.version_compatible:
        # version-compatible engines run on later releases of the same major version
        ok = bool(built) and bool(here) and built[0] == here[0] and here >= built
    else:
        ok = built == here
    if not ok:
        raise SkylocError(
            f"engine was built with TensorRT {sidecar.tensorrt_version} but this machine has "
            f"TensorRT {trt_version}: {REBUILD}"
        )
    if str(sidecar.compute_capability) != str(compute_capability):
        raise SkylocError(
            f"engine was built for GPU compute capability {sidecar.compute_capability} "
            f"({sidecar.gpu_name}) but this GPU is {compute_capability}: {REBUILD}"
        )
    if sidecar.onnx_sha256 != sidecar.model.onnx_sha256:
        raise SkylocError(f"engine sidecar is inconsistent (two different ONNX hashes): {REBUILD}")
    if onnx_path is not None and Path(onnx_path).is_file():
        actual = sha256_file(onnx_path)
        if actual != sidecar.onnx_sha256:
            raise SkylocError(
                f"engine was built from a different ONNX than {onnx_path} (sha256 "
                f"{sidecar.onnx_sha256[:12]}… != {actual[:12]}…): the model was re-exported; {REBUILD}"
            )


@register_backend("tensorrt")
class TensorRTBackend(Backend):
    priority = 100
    suffixes = (".engine", ".plan", ".trt")
    default_conf = {
        "device_id": 0,
        "onnx": None,  # ONNX the engine must have been built from; None = <engine stem>.onnx if present
    }

    @classmethod
    def available(cls) -> tuple[bool, str]:
        for mod in ("tensorrt", "pycuda"):
            if importlib.util.find_spec(mod) is None:
                return False, f"python package {mod!r} is not installed"
        return True, ""

    def __init__(self, model_path: str | Path, conf: dict[str, Any] | None = None) -> None:
        super().__init__(model_path, conf)
        trt, cuda = _import_trt()
        self._cuda = cuda
        self.engine_sidecar = read_engine_sidecar(self.model_path)
        self.sidecar = self.engine_sidecar.model
        cuda.init()
        device = cuda.Device(int(self.conf["device_id"]))
        # The primary context is shared with anything else in the process (ORT, other engines),
        # and pushing it around each call makes embed() safe from any thread.
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        try:
            cc = "%d.%d" % device.compute_capability()
            onnx = self.conf["onnx"] or self.model_path.with_suffix(".onnx")
            check_engine_sidecar(self.engine_sidecar, trt.__version__, cc, onnx)
            self._setup(trt, cuda)
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        self._ctx.pop()
        self._gpu = f"{device.name()} sm_{cc}"

    def _setup(self, trt: Any, cuda: Any) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.engine_sidecar.version_compatible:
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise SkylocError(f"TensorRT could not deserialize {self.model_path}: {REBUILD}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        c = self.sidecar.input
        if inputs != [c.name] or self.sidecar.output_name not in outputs:
            raise SkylocError(
                f"engine {self.model_path} I/O {inputs} -> {outputs} does not match its sidecar "
                f"({c.name!r} -> {self.sidecar.output_name!r}): {REBUILD}"
            )
        self._in, self._out = c.name, self.sidecar.output_name
        self._in_dtype = self._np_dtype(trt, self.engine.get_tensor_dtype(self._in))
        self._out_dtype = self._np_dtype(trt, self.engine.get_tensor_dtype(self._out))
        shape = tuple(self.engine.get_tensor_shape(self._in))
        if shape[0] == -1:  # dynamic batch: the profile bounds it
            _, _, max_shape = self.engine.get_tensor_profile_shape(self._in, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.fixed_batch = self.max_batch = int(shape[0])
        sample = (self.max_batch,) + shape[1:]
        in_bytes = int(np.prod(sample)) * np.dtype(self._in_dtype).itemsize
        dim = self.sidecar.embedding_dim
        self._h_in = cuda.pagelocked_empty(sample, self._in_dtype)
        self._h_out = cuda.pagelocked_empty((self.max_batch, dim), self._out_dtype)
        self._d_in = cuda.mem_alloc(in_bytes)
        self._d_out = cuda.mem_alloc(self._h_out.nbytes)
        self._stream = cuda.Stream()
        self.context.set_tensor_address(self._in, int(self._d_in))
        self.context.set_tensor_address(self._out, int(self._d_out))

    @staticmethod
    def _np_dtype(trt: Any, dt: Any) -> Any:
        try:
            return np.dtype(trt.nptype(dt)).type
        except (TypeError, AttributeError):
            return _TRT_NP[str(dt).split(".")[-1]]

    @property
    def precision(self) -> str:
        return self.engine_sidecar.precision

    @property
    def providers(self) -> str:
        return f"TensorRT {self.engine_sidecar.tensorrt_version} on {self._gpu}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        n = batch.shape[0]
        self._ctx.push()
        try:
            self._h_in[:n] = batch
            if not self.context.set_input_shape(self._in, tuple(batch.shape)):
                raise SkylocError(f"engine {self.model_path} rejected input shape {batch.shape}")
            cuda.memcpy_htod_async(self._d_in, self._h_in[:n], self._stream)
            if not self.context.execute_async_v3(self._stream.handle):
                raise SkylocError(f"TensorRT execution failed for {self.model_path}")
            cuda.memcpy_dtoh_async(self._h_out[:n], self._d_out, self._stream)
            self._stream.synchronize()
            return self._h_out[:n].astype(np.float32)
        finally:
            self._ctx.pop()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for attr in ("context", "engine", "_d_in", "_d_out", "_stream"):
                setattr(self, attr, None)
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
