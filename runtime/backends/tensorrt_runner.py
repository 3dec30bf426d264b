"""TensorRT engines of the learned matcher's dense net (`skyloc engine` on a matcher ONNX).

Unlike the embedding engines (TensorRTBackend: one output, a batch profile), this one takes a
single uint8 image whose H and W vary within the engine's profile and returns every output by
name (heatmap, descriptors, reliability), as ONNX Runtime's session does for the extractor.
The sidecar (`ENGINE.json`, format MATCHER_ENGINE_FORMAT) holds the matcher's own sidecar, the
ONNX sha256 and the TensorRT version / GPU it was built for; a mismatch is refused before the
engine is deserialized. Buffers grow to the largest image seen, within the profile.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import model_sidecar_path
from skyloc.runtime.backends.cuda_memory import CudaMemory, open_cuda
from skyloc.runtime.backends.tensorrt_backend import import_tensorrt, np_dtype, runtime_accepts, tensor_io

MATCHER_ENGINE_FORMAT = "skyloc-matcher-engine/1"
REBUILD = ("rebuild it on this device: `skyloc engine --onnx MATCHER.onnx --out MATCHER.engine "
           "--image-shapes HxW`")


def read_matcher_engine_sidecar(engine_path: str | Path) -> dict[str, Any]:
    side = model_sidecar_path(engine_path)
    try:
        meta = json.loads(Path(side).read_text())
    except FileNotFoundError:
        raise SkylocError(f"matcher engine {engine_path}: its sidecar {side} is missing; {REBUILD}") from None
    except (OSError, ValueError) as exc:
        raise SkylocError(f"matcher engine sidecar {side} is unreadable ({exc}); {REBUILD}") from None
    if not isinstance(meta, dict) or meta.get("format") != MATCHER_ENGINE_FORMAT:
        raise SkylocError(f"{side} is not a matcher engine sidecar (format {MATCHER_ENGINE_FORMAT!r}); {REBUILD}")
    for key in ("matcher", "tensorrt_version", "compute_capability", "onnx_sha256", "profile"):
        if key not in meta:
            raise SkylocError(f"{side} has no {key!r}; {REBUILD}")
    return meta


class TensorRTRunner:
    """One matcher engine on one GPU: `run(image) -> {output name: array}`."""

    def __init__(self, engine_path: str | Path, device: int = 0, cuda: str | None = None) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = read_matcher_engine_sidecar(self.engine_path)
        trt = import_tensorrt()
        self._cuda: CudaMemory | None = open_cuda(device, cuda)
        self._buffers: dict[str, tuple[int, np.ndarray, int]] = {}  # name -> (device ptr, pinned bytes, capacity)
        try:
            with self._cuda.current():
                self._setup(trt)
        except BaseException:
            self.close()
            raise

    def _setup(self, trt: Any) -> None:
        s, cuda = self.sidecar, self._cuda
        if not runtime_accepts(s["tensorrt_version"], trt.__version__, bool(s.get("version_compatible"))):
            raise SkylocError(f"matcher engine {self.engine_path} was built with TensorRT {s['tensorrt_version']}, "
                              f"this is {trt.__version__}; {REBUILD}")
        if str(s["compute_capability"]) != cuda.compute_capability:
            raise SkylocError(f"matcher engine {self.engine_path} was built for compute capability "
                              f"{s['compute_capability']}, this GPU is {cuda.compute_capability}; {REBUILD}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if s.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise SkylocError(f"TensorRT could not deserialize {self.engine_path}; {REBUILD}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SkylocError(f"TensorRT could not create an execution context for {self.engine_path} "
                              "(see the TensorRT log; out of GPU memory?)")
        inputs, self.outputs = tensor_io(self.engine, trt)
        want_in, want_out = s["matcher"]["input"]["name"], list(s["matcher"]["outputs"])
        if inputs != [want_in] or sorted(self.outputs) != sorted(want_out):
            raise SkylocError(f"matcher engine {self.engine_path} I/O {inputs} -> {self.outputs} is not "
                              f"{[want_in]} -> {want_out} from its sidecar; {REBUILD}")
        self.outputs = want_out
        self.input_name = want_in
        if np.dtype(np_dtype(trt, self.engine.get_tensor_dtype(want_in))) != np.uint8:
            raise SkylocError(f"matcher engine {self.engine_path} does not take uint8 input; {REBUILD}")
        lo, _, hi = (tuple(int(d) for d in v) for v in self.engine.get_tensor_profile_shape(want_in, 0))
        self.min_shape, self.max_shape = lo, hi
        self._dtypes = {n: np_dtype(trt, self.engine.get_tensor_dtype(n)) for n in [want_in, *want_out]}
        self._stream = cuda.stream()

    def _buffer(self, name: str, nbytes: int) -> tuple[int, np.ndarray]:
        """Device pointer and pinned host bytes of at least `nbytes` for tensor `name`."""
        cuda = self._cuda
        have = self._buffers.get(name)
        if have is None or have[2] < nbytes:
            if have is not None:
                cuda.free(have[0])
                cuda.free(have[1])
            size = max(int(nbytes), 1)
            have = (cuda.device_alloc(size), cuda.pinned_empty((size,), np.uint8), size)
            self._buffers[name] = have
        return have[0], have[1]

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """(1, H, W, 3) uint8 RGB within the engine's profile -> every output, float32."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 4:
            raise ValueError(f"matcher engine input must be a (1, H, W, 3) uint8 array, got "
                             f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        shape = tuple(int(d) for d in image.shape)
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, self.min_shape, self.max_shape)):
            raise SkylocError(f"image shape {shape} is outside matcher engine {self.engine_path.name}'s profile "
                              f"{self.min_shape} .. {self.max_shape}; {REBUILD} covering it")
        cuda = self._cuda
        with cuda.current():
            if not self.context.set_input_shape(self.input_name, shape):
                raise SkylocError(f"matcher engine {self.engine_path} rejected input shape {shape}")
            d_in, h_in = self._buffer(self.input_name, image.nbytes)
            host_in = h_in[: image.nbytes]
            host_in[:] = np.ascontiguousarray(image).reshape(-1).view(np.uint8)
            self.context.set_tensor_address(self.input_name, d_in)
            views = {}
            for name in self.outputs:
                out_shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                if any(d < 0 for d in out_shape):
                    raise SkylocError(f"matcher engine output {name!r} has an unresolved shape {out_shape}")
                dtype = np.dtype(self._dtypes[name])
                nbytes = int(np.prod(out_shape)) * dtype.itemsize
                d_out, h_out = self._buffer(name, nbytes)
                self.context.set_tensor_address(name, d_out)
                views[name] = (d_out, h_out[:nbytes].view(dtype).reshape(out_shape))
            cuda.htod_async(d_in, host_in, self._stream)
            if not self.context.execute_async_v3(cuda.stream_handle(self._stream)):
                raise SkylocError(f"TensorRT execution failed for {self.engine_path}")
            for d_out, view in views.values():
                cuda.dtoh_async(view, d_out, self._stream)
            cuda.synchronize(self._stream)
            return {name: view.astype(np.float32) for name, (_, view) in views.items()}

    def close(self) -> None:
        cuda = self._cuda
        if cuda is None:
            return
        try:
            with cuda.current():
                for attr in ("context", "engine", "_runtime"):
                    setattr(self, attr, None)
                for d_ptr, pinned, _ in self._buffers.values():
                    cuda.free(d_ptr)
                    cuda.free(pinned)
                self._buffers = {}
                if getattr(self, "_stream", None) is not None:
                    cuda.free(self._stream)
                    self._stream = None
        finally:
            cuda.release()
            self._cuda = None

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
