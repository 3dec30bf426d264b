"""CUDA device, stream and buffer handling for the TensorRT backend, over either binding.

cuda-python (NVIDIA's binding, used by the TensorRT samples; has wheels) is tried first, then
pycuda (compiles against a CUDA toolkit; often already on Jetson images). Both expose the
same small interface here, so the backend has one code path. Every call's status is checked:
a failing CUDA call raises SkylocError instead of being swallowed.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
from typing import Any, Iterator

import numpy as np

from skyloc.core.errors import SkylocError

NO_GPU = ("no usable NVIDIA GPU / CUDA driver here ({why}); run the .onnx with --backend onnxruntime "
          "(`auto` falls back to it)")


class _NoGpu(SkylocError):
    """The binding loaded but cannot use a GPU here; `why` is the binding's own reason."""

    def __init__(self, why: str) -> None:
        super().__init__(NO_GPU.format(why=why))
        self.why = why


class CudaMemory:
    """One CUDA device: its name and compute capability, pinned host / device buffers, streams."""

    binding = "?"
    device_name: str
    compute_capability: str  # "major.minor"

    def current(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def device_alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def free(self, obj: Any) -> None:
        """Free a pinned array, a device pointer or a stream this object made."""
        raise NotImplementedError

    def release(self) -> None:
        """Give the device context back (after every free)."""


class _CudaPython(CudaMemory):
    binding = "cuda-python"

    def __init__(self, device: int) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        self._rt = cudart
        self._device = device
        self._pinned: dict[int, int] = {}
        count = self._call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", no_gpu=True)
        if count <= device:
            raise _NoGpu(f"CUDA device {device} requested, {count} visible")
        self._call(cudart.cudaSetDevice(device), "cudaSetDevice", no_gpu=True)
        props = self._call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        self.device_name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split("\0")[0]
        self.compute_capability = f"{props.major}.{props.minor}"

    def _call(self, result: Any, what: str, no_gpu: bool = False) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            msg = self._rt.cudaGetErrorString(err)[1]
            msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
            if no_gpu:
                raise _NoGpu(f"{what}: {msg}")
            raise SkylocError(f"CUDA {what} failed: {msg}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._call(self._rt.cudaSetDevice(self._device), "cudaSetDevice")  # per-thread current device
        yield

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8)[: int(np.prod(shape)) * np.dtype(dtype).itemsize]
        arr = arr.view(dtype).reshape(shape)
        self._pinned[id(arr)] = ptr
        return arr

    def device_alloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(int(nbytes)), "cudaMalloc"))

    def stream(self) -> Any:
        return self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync H2D")

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync D2H")

    def synchronize(self, stream: Any) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def free(self, obj: Any) -> None:
        if isinstance(obj, np.ndarray):
            ptr = self._pinned.pop(id(obj), None)
            if ptr is not None:
                self._call(self._rt.cudaFreeHost(ptr), "cudaFreeHost")
        elif isinstance(obj, int):
            self._call(self._rt.cudaFree(obj), "cudaFree")
        else:
            self._call(self._rt.cudaStreamDestroy(obj), "cudaStreamDestroy")


class _PyCuda(CudaMemory):
    binding = "pycuda"

    def __init__(self, device: int) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        try:
            cuda.init()
            count = cuda.Device.count()
            if count <= device:
                raise _NoGpu(f"CUDA device {device} requested, {count} visible")
            dev = cuda.Device(device)
            # The primary context is shared with anything else in the process (ORT, other engines);
            # pushing it around each call makes the backend usable from any thread.
            self._ctx = dev.retain_primary_context()
        except SkylocError:
            raise
        except Exception as exc:  # pycuda raises its own error types for a missing driver/device
            raise _NoGpu(f"pycuda: {exc}") from None
        self.device_name = dev.name()
        self.compute_capability = "%d.%d" % dev.compute_capability()
        self._pinned: dict[int, Any] = {}
        self._device: dict[int, Any] = {}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        arr = self._cuda.pagelocked_empty(shape, dtype)
        self._pinned[id(arr)] = arr.base  # the HostAllocation: freed explicitly in free()
        return arr

    def device_alloc(self, nbytes: int) -> int:
        alloc = self._cuda.mem_alloc(int(nbytes))
        self._device[int(alloc)] = alloc
        return int(alloc)

    def stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._cuda.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._cuda.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def free(self, obj: Any) -> None:
        if isinstance(obj, np.ndarray):
            alloc = self._pinned.pop(id(obj), None)
            if alloc is not None and hasattr(alloc, "free"):
                alloc.free()
        elif isinstance(obj, int):
            alloc = self._device.pop(obj, None)
            if alloc is not None:
                alloc.free()
        # a pycuda Stream is destroyed with its last reference

    def release(self) -> None:
        self._ctx.detach()


# The module each binding's runtime API lives in (cuda-python >= 12.6 / older cuda-python):
# a bare `cuda` package is not enough, since other wheels (cuda-pathfinder, cuda-core) share it.
_BINDING_MODULES = {"cuda-python": ("cuda.bindings.runtime", "cuda.cudart"), "pycuda": ("pycuda.driver",)}
_OPENERS = {"cuda-python": lambda device: _CudaPython(device), "pycuda": lambda device: _PyCuda(device)}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # the parent package is missing or broken
        return False


def available_bindings() -> list[str]:
    """Installed CUDA bindings, in the order `open_cuda` tries them."""
    return [b for b, mods in _BINDING_MODULES.items() if any(_has_module(m) for m in mods)]


def open_cuda(device: int = 0, binding: str | None = None) -> CudaMemory:
    """The CUDA device through `binding` ("cuda-python" / "pycuda"; None = every installed one
    in turn, so pycuda still serves when cuda-python is installed (torch brings cuda-bindings)
    but cannot drive this GPU, e.g. a CUDA 13 binding on a Jetson's CUDA 12 driver).
    SkylocError, with each binding's reason, when none is installed or no GPU is usable."""
    if binding is not None and binding not in _OPENERS:
        raise SkylocError(f"CUDA binding {binding!r} is not one of: {', '.join(_OPENERS)}")
    have = available_bindings()
    wanted = [binding] if binding else have
    if not wanted or (binding and binding not in have):
        raise SkylocError(f"the TensorRT backend needs cuda-python or pycuda for its buffers "
                          f"({binding or 'neither'} is installed): `pip install cuda-python`")
    reasons = []
    for name in wanted:
        try:
            return _OPENERS[name](device)
        except _NoGpu as exc:
            reasons.append(exc.why if exc.why.startswith(name) else f"{name}: {exc.why}")
        except Exception as exc:  # e.g. it cannot load libcuda, or a CUDA call failed: try the next one
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
    raise SkylocError(NO_GPU.format(why="; ".join(reasons)))
