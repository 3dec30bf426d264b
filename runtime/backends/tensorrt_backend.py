"""Native TensorRT backend (TensorRT 10/11 Python API; cuda-python or pycuda buffers).

An engine is only valid for the TensorRT version and GPU it was built on, so before
deserializing we compare the engine sidecar with this machine and refuse a mismatch with the
command that rebuilds it. The engine is paired with its ONNX by the sha256 its sidecar records,
never by a sibling file name (the README layout puts `model.engine` beside the FP32
`model.onnx` although it was built from `int8/model.int8-trt.onnx`).

This module is the one place that deserializes an engine and binds its tensors (the engine
builder's checks run through it too). `tensorrt` and the CUDA binding are imported only when an
engine is opened: the rest of the runtime works without them.

I/O uses the name-based tensor API (num_io_tensors / get_tensor_name / get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3). Device buffers are sized once for the
profile's largest batch and every output is bound (TensorRT refuses to run with an unbound one).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.backends.base import Backend, register_backend
from skyloc.runtime.backends.cuda_memory import CudaMemory, available_bindings, open_cuda
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import (EngineSidecar, InputContract, read_engine_sidecar, read_model_sidecar,
                                 sha256_file)

log = logging.getLogger(__name__)

REBUILD = "rebuild the engine on this device with `skyloc engine --onnx MODEL.onnx --out MODEL.engine`"
MIN_TRT_MAJOR = 10
# Version-compatible engines of one major version that a later major's runtime accepts
# (TensorRT support matrix: 10 -> 11; 8 -> 10 is below MIN_TRT_MAJOR).
CROSS_MAJOR_COMPATIBLE = {(10, 11)}
_TRT_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8,
           "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_trt_version(version: str) -> None:
    """TensorRT 10 or newer: strongly typed networks, the name-based tensor API and the Q/DQ
    import our INT8 model relies on. TensorRT 8.x (JetPack 5, JetPack 6.0) would fail later
    with a confusing parser error, so say it here."""
    v = version_tuple(version)
    if not v or v[0] < MIN_TRT_MAJOR:
        raise SkylocError(
            f"TensorRT {version} is too old: skyloc needs TensorRT {MIN_TRT_MAJOR} or newer (strongly typed "
            "networks, the name-based I/O API and explicit INT8 quantization as exported). On Jetson use "
            "JetPack 6.1 or newer (TensorRT 10.3); on a desktop `pip install -e '.[gpu]'`. Or run the .onnx "
            "with --backend onnxruntime"
        )


def import_tensorrt() -> Any:
    """The tensorrt module, version-checked; a SkylocError that says what to install otherwise."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise SkylocError(
            f"TensorRT is not available here ({exc}): install TensorRT on the machine with the target GPU "
            "(desktop: `pip install -e '.[gpu]'`; Jetson: it comes with JetPack) — engines are specific to "
            "the GPU and TensorRT version; without a GPU use the .onnx with --backend onnxruntime"
        ) from None
    check_trt_version(trt.__version__)
    return trt


def runtime_accepts(built: str, here: str, version_compatible: bool) -> bool:
    """Can a TensorRT `here` runtime deserialize an engine built by TensorRT `built`?"""
    b, h = version_tuple(built), version_tuple(here)
    if not b or not h:
        return False
    if not version_compatible:
        return b == h
    if h < b:
        return False
    return b[0] == h[0] or (b[0], h[0]) in CROSS_MAJOR_COMPATIBLE


def check_engine_sidecar(
    sidecar: EngineSidecar, trt_version: str, compute_capability: str,
    onnx_path: str | Path | None = None,
) -> None:
    """Refuse an engine built for another TensorRT, another GPU, or (when `onnx_path` is given)
    from another ONNX than that file."""
    if not runtime_accepts(sidecar.tensorrt_version, trt_version, sidecar.version_compatible):
        kind = "a version-compatible engine" if sidecar.version_compatible else "an engine"
        raise SkylocError(
            f"{kind} built with TensorRT {sidecar.tensorrt_version} does not run on this machine's "
            f"TensorRT {trt_version}: {REBUILD}"
        )
    if str(sidecar.compute_capability) != str(compute_capability):
        raise SkylocError(
            f"engine was built for GPU compute capability {sidecar.compute_capability} "
            f"({sidecar.gpu_name}) but this GPU is {compute_capability}: {REBUILD}"
        )
    if sidecar.onnx_sha256 != sidecar.model.onnx_sha256:
        raise SkylocError(f"engine sidecar is inconsistent (two different ONNX hashes): {REBUILD}")
    if onnx_path is not None:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise SkylocError(f"ONNX {onnx_path} (given as the engine's source) not found")
        actual = sha256_file(onnx_path)
        if actual != sidecar.onnx_sha256:
            raise SkylocError(
                f"engine was built from a different ONNX than {onnx_path} (sha256 "
                f"{sidecar.onnx_sha256[:12]}… != {actual[:12]}…): the model was re-exported; {REBUILD}"
            )


def find_source_onnx(engine_path: str | Path, sidecar: EngineSidecar,
                     hint: str | Path | None = None) -> Path | None:
    """The ONNX an engine was built from, found by the sha256 its sidecar records: `hint`, then
    the .onnx files beside the engine and one folder down (README layout). None if absent."""
    engine_path = Path(engine_path)
    folder = engine_path.parent
    candidates = ([Path(hint)] if hint else []) + sorted(folder.glob("*.onnx")) + sorted(folder.glob("*/*.onnx"))
    seen: set[Path] = set()
    for c in candidates:
        if c in seen or not c.is_file():
            continue
        seen.add(c)
        try:  # the sidecar's recorded hash first: cheap, and skips unrelated models
            if read_model_sidecar(c, verify=False).onnx_sha256 != sidecar.onnx_sha256:
                continue
        except SkylocError:
            continue
        if sha256_file(c) == sidecar.onnx_sha256:
            return c
    return None


def check_engine_input(engine_path: str | Path, contract: InputContract, dtype: Any,
                       shape: tuple[int, ...]) -> None:
    """Refuse an engine whose input is not what the sidecar (and so the preprocessing) feeds:
    dtype, layout and size (a -1 batch is the dynamic profile). Batches are copied into the
    engine's input buffer as they are, so a float engine fed uint8 bytes would compute garbage."""
    if np.dtype(dtype) != np.dtype(contract.dtype):
        raise SkylocError(f"engine {engine_path} takes {np.dtype(dtype)} input but its sidecar says {contract.dtype} "
                          f"(built with another I/O format, e.g. trtexec --inputIOFormats): {REBUILD}")
    want = (contract.height, contract.width, 3) if contract.layout.upper() == "NHWC" else \
        (3, contract.height, contract.width)
    if len(shape) != 4 or tuple(shape[1:]) != want or not (shape[0] == -1 or shape[0] >= 1):
        raise SkylocError(f"engine {engine_path} input shape {tuple(shape)} is not (batch, {', '.join(map(str, want))}) "
                          f"as its sidecar says ({contract.layout}): {REBUILD}")


def tensor_io(engine: Any, trt: Any) -> tuple[list[str], list[str]]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return inputs, outputs


def np_dtype(trt: Any, dt: Any) -> Any:
    try:
        return np.dtype(trt.nptype(dt)).type
    except (TypeError, AttributeError):
        return _TRT_NP[str(dt).split(".")[-1]]


@register_backend("tensorrt")
class TensorRTBackend(Backend):
    priority = 100
    suffixes = (".engine", ".plan", ".trt")
    default_conf = {
        "device_id": 0,
        "onnx": None,  # optional: an ONNX the engine must have been built from (sha256-checked)
        "cuda": None,  # None = cuda-python if installed, else pycuda; or "cuda-python" / "pycuda"
    }

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("tensorrt") is None:
            return False, "python package 'tensorrt' is not installed"
        if not available_bindings():
            return False, "neither cuda-python nor pycuda is installed (pip install cuda-python)"
        return True, ""

    def __init__(self, model_path: str | Path, conf: dict[str, Any] | None = None) -> None:
        super().__init__(model_path, conf)
        self._cuda: CudaMemory | None = None
        self.engine_sidecar = read_engine_sidecar(self.model_path)
        self.sidecar = self.engine_sidecar.model
        trt = import_tensorrt()
        # Raises SkylocError when no GPU is usable, so `auto` can fall back to ONNX Runtime.
        self._cuda = open_cuda(int(self.conf["device_id"]), self.conf["cuda"])
        try:
            with self._cuda.current():
                check_engine_sidecar(self.engine_sidecar, trt.__version__, self._cuda.compute_capability,
                                     self.conf["onnx"])
                self._setup(trt)
        except BaseException:
            self.close()
            raise
        self._gpu = f"{self._cuda.device_name} sm_{self._cuda.compute_capability}"

    def _setup(self, trt: Any) -> None:
        cuda = self._cuda
        self._buffers: list[Any] = []
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.engine_sidecar.version_compatible:
            self._runtime.engine_host_code_allowed = True  # version-compatible plans embed the lean runtime
        self.engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise SkylocError(f"TensorRT could not deserialize {self.model_path} (see the TensorRT log): {REBUILD}")
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT returns None (and logs why) e.g. when device memory runs out
            raise SkylocError(f"TensorRT could not create an execution context for {self.model_path} "
                              "(see the TensorRT log; out of GPU memory?)")
        inputs, outputs = tensor_io(self.engine, trt)
        c = self.sidecar.input
        if inputs != [c.name] or self.sidecar.output_name not in outputs:
            raise SkylocError(
                f"engine {self.model_path} I/O {inputs} -> {outputs} does not match its sidecar "
                f"({c.name!r} -> {self.sidecar.output_name!r}): {REBUILD}"
            )
        self._in, self._out = c.name, self.sidecar.output_name
        self._in_dtype = np_dtype(trt, self.engine.get_tensor_dtype(self._in))
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self._in))
        check_engine_input(self.model_path, c, self._in_dtype, shape)
        if shape[0] == -1:  # dynamic batch: the profile bounds it
            _, _, max_shape = self.engine.get_tensor_profile_shape(self._in, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.fixed_batch = self.max_batch = int(shape[0])
        sample = (self.max_batch,) + shape[1:]
        if not self.context.set_input_shape(self._in, sample):
            raise SkylocError(f"engine {self.model_path} rejects its own largest input shape {sample}: {REBUILD}")
        self._h_in = cuda.pinned_empty(sample, self._in_dtype)
        self._d_in = cuda.device_alloc(self._h_in.nbytes)
        self.context.set_tensor_address(self._in, self._d_in)
        # Every output gets a device buffer sized for the largest batch; only the embedding is
        # copied back. TensorRT refuses to execute with an unbound output.
        self._h_out: dict[str, np.ndarray] = {}
        self._d_out: dict[str, int] = {}
        for name in outputs:
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise SkylocError(f"engine {self.model_path} output {name!r} has an unresolved shape {out_shape}: {REBUILD}")
            dtype = np_dtype(trt, self.engine.get_tensor_dtype(name))
            nbytes = int(np.prod(out_shape)) * np.dtype(dtype).itemsize
            self._d_out[name] = cuda.device_alloc(max(nbytes, 1))
            self.context.set_tensor_address(name, self._d_out[name])
            if name == self._out:
                self._h_out[name] = cuda.pinned_empty(out_shape, dtype)
        self._stream = cuda.stream()

    @property
    def precision(self) -> str:
        return self.engine_sidecar.precision

    @property
    def providers(self) -> str:
        return f"TensorRT {self.engine_sidecar.tensorrt_version} on {self._gpu}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        n = batch.shape[0]
        with cuda.current():
            if not self.context.set_input_shape(self._in, tuple(batch.shape)):
                raise SkylocError(f"engine {self.model_path} rejected input shape {batch.shape} "
                                  f"(profile batch 1..{self.max_batch})")
            self._h_in[:n] = batch
            h_out = self._h_out[self._out]
            cuda.htod_async(self._d_in, self._h_in[:n], self._stream)
            if not self.context.execute_async_v3(cuda.stream_handle(self._stream)):
                raise SkylocError(f"TensorRT execution failed for {self.model_path}")
            cuda.dtoh_async(h_out[:n], self._d_out[self._out], self._stream)
            cuda.synchronize(self._stream)
            return h_out[:n].astype(np.float32)

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        try:
            with cuda.current():
                # Context and engine first (they reference device memory), then every buffer,
                # pinned host memory included, while the CUDA context is still current.
                for attr in ("context", "engine", "_runtime"):
                    setattr(self, attr, None)
                for attr in ("_h_in", "_d_in", "_stream"):
                    obj = getattr(self, attr, None)
                    if obj is not None:
                        cuda.free(obj)
                    setattr(self, attr, None)
                for d in (getattr(self, "_h_out", {}) or {}).values():
                    cuda.free(d)
                for d in (getattr(self, "_d_out", {}) or {}).values():
                    cuda.free(d)
                self._h_out, self._d_out = {}, {}
        finally:
            cuda.release()
            self._cuda = None


def engine_source_path(engine_path: str | os.PathLike, hint: str | os.PathLike | None = None) -> Path | None:
    """`find_source_onnx` for an engine file (reads its sidecar)."""
    return find_source_onnx(engine_path, read_engine_sidecar(engine_path), hint)
