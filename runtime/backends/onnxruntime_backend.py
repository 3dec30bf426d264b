"""ONNX Runtime backend: TensorRT EP > CUDA EP > CPU EP, whichever this onnxruntime build has.

Execution providers are tried in that order and ONNX Runtime falls back down the list per node,
so one code path serves a Jetson (onnxruntime-gpu with TensorRT), a desktop GPU and a laptop.
`conf["providers"]` forces a list (full names or short ones: tensorrt, cuda, cpu).

TensorRT EP rules: it gets only the TensorRT artifacts (fp32, fp16, int8-trt); the
U8S8 int8-ort model's uint8 Q/DQ would split it into many small engines, so that model runs on
CUDA/CPU. No precision flags: every artifact is typed in the ONNX (FP16 export, S8S8 Q/DQ), and
trt_fp16_enable/trt_int8_enable would let TensorRT lower the FP32 L2-norm head too. The engine
cache folder is keyed by the model's sha256 (ORT's own cache key is names and versions, so a
retrained model re-exported to the same path would silently load the old engine), and the batch
gets an explicit optimisation profile so a batch-size change never rebuilds the engine.

`cpu_session` is the one place the export / calibration tools open a plain CPU session.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.backends.base import Backend, register_backend
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import ModelSidecar, check_onnx_model_id, read_model_sidecar

log = logging.getLogger(__name__)

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
         "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}
# The artifacts TensorRT parses whole: U8S8 is for CPU.
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8-trt")
TRT_PROFILE_MAX_BATCH = 32  # the tiles command's largest batch; `run` uses 1 .. a few rotations
TRT_CACHE_DIRNAME = ".trt-cache"


def cpu_session(path: str | os.PathLike, threads: int = 0, optimize: bool = True) -> Any:
    """A CPU-only InferenceSession on `path` (export parity checks, calibration reports)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's per-session warnings (e.g. "consider pre-processing") are noise here
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads > 0:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _wanted_providers(forced: Any, available: list[str], precision: str) -> list[str]:
    if forced is None:
        wanted = [p for p in PREFERENCE if p in available] or list(available)
        if precision not in TENSORRT_PRECISIONS:
            wanted = [p for p in wanted if p != "TensorrtExecutionProvider"]
        return wanted
    names = forced.split(",") if isinstance(forced, str) else list(forced)
    out = []
    for n in names:
        full = SHORT.get(n.strip().lower(), n.strip())
        if full not in available:
            raise SkylocError(
                f"onnxruntime execution provider {n!r} is not available in this build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT"
            )
        if full == "TensorrtExecutionProvider" and precision not in TENSORRT_PRECISIONS:
            raise SkylocError(
                f"the {precision} model is ONNX Runtime's U8S8 format (uint8 Q/DQ), which TensorRT cannot "
                "take whole: give the TensorRT provider the *.int8-trt.onnx (or fp32/fp16) model instead"
            )
        out.append(full)
    return out


def _shape(name: str, batch: int, sidecar: ModelSidecar) -> str:
    c = sidecar.input
    dims = (batch, c.height, c.width, 3) if c.layout.upper() == "NHWC" else (batch, 3, c.height, c.width)
    return f"{name}:" + "x".join(str(d) for d in dims)


def tensorrt_ep_options(model_path: str | os.PathLike, sidecar: ModelSidecar, device_id: int = 0,
                        cache_root: str | os.PathLike | None = None, max_batch: int = TRT_PROFILE_MAX_BATCH,
                        opt_batch: int = 1) -> dict[str, Any]:
    """ONNX Runtime TensorRT EP options for one TensorRT artifact (what the backend passes)."""
    if sidecar.precision not in TENSORRT_PRECISIONS:
        raise SkylocError(f"{model_path} is {sidecar.precision}: the TensorRT provider takes only "
                          f"{', '.join(TENSORRT_PRECISIONS)} models")
    if not 1 <= opt_batch <= max_batch:
        raise SkylocError(f"TensorRT profile: opt batch {opt_batch} must lie in 1..{max_batch}")
    root = Path(cache_root) if cache_root else Path(model_path).parent / TRT_CACHE_DIRNAME
    cache = root / sidecar.onnx_sha256[:16]  # the weights' identity, not the file name
    name = sidecar.input.name
    return {
        "device_id": int(device_id),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(root),
        "trt_profile_min_shapes": _shape(name, 1, sidecar),
        "trt_profile_opt_shapes": _shape(name, opt_batch, sidecar),
        "trt_profile_max_shapes": _shape(name, max_batch, sidecar),
    }


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    priority = 10
    suffixes = (".onnx",)
    default_conf = {
        "providers": None,  # None = best available; or "cuda,cpu" / ["CPUExecutionProvider"]
        "device_id": 0,
        "intra_op_threads": 0,  # 0 = onnxruntime's default (all cores)
        "trt_cache_dir": None,  # None = <model dir>/.trt-cache (one sub-folder per model sha256)
        "trt_max_batch": TRT_PROFILE_MAX_BATCH,  # TensorRT EP profile: batches 1 .. this
        "trt_opt_batch": 1,  # the batch the TensorRT EP engine is tuned for (`run` embeds one frame)
        "verify": True,  # check the ONNX sha256 against the sidecar
    }

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        return True, ""

    def __init__(self, model_path: str | Path, conf: dict[str, Any] | None = None) -> None:
        super().__init__(model_path, conf)
        import onnxruntime as ort

        if self.model_path.suffix.lower() != ".onnx":
            raise SkylocError(f"onnxruntime runs .onnx models, not {self.model_path}; use --backend tensorrt for engines")
        self.sidecar = read_model_sidecar(self.model_path, verify=bool(self.conf["verify"]))
        wanted = _wanted_providers(self.conf["providers"], ort.get_available_providers(), self.sidecar.precision)
        self.provider_options = self.build_provider_options(wanted)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if int(self.conf["intra_op_threads"]) > 0:
            so.intra_op_num_threads = int(self.conf["intra_op_threads"])
        for _, opts in self.provider_options:
            if "trt_engine_cache_path" in opts:
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=so, providers=[p for p, _ in self.provider_options],
                provider_options=[o for _, o in self.provider_options])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SkylocError(f"onnxruntime cannot load {self.model_path}: {exc}; re-export the model") from None
        self._check_io()
        check_onnx_model_id(self.model_path, self.sidecar, self.session.get_modelmeta().custom_metadata_map)
        if "TensorrtExecutionProvider" in self.session.get_providers() and not self.fixed_batch:
            self.max_batch = int(self.conf["trt_max_batch"])  # stay inside the engine's profile

    def build_provider_options(self, providers: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """(provider, options) in priority order, exactly as the session gets them."""
        out: list[tuple[str, dict[str, Any]]] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                out.append((p, tensorrt_ep_options(
                    self.model_path, self.sidecar, device_id=int(self.conf["device_id"]),
                    cache_root=self.conf["trt_cache_dir"], max_batch=int(self.conf["trt_max_batch"]),
                    opt_batch=int(self.conf["trt_opt_batch"]))))
            elif p == "CUDAExecutionProvider":
                out.append((p, {"device_id": int(self.conf["device_id"])}))
            else:
                out.append((p, {}))
        return out

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        c = self.sidecar.input
        if len(inputs) != 1 or inputs[0].name != c.name:
            raise SkylocError(
                f"{self.model_path} inputs {[i.name for i in inputs]} do not match its sidecar "
                f"input {c.name!r}: re-export the model"
            )
        got = _ORT_TYPES.get(inputs[0].type, inputs[0].type)
        if got != c.dtype:
            raise SkylocError(f"{self.model_path} input type {got} != sidecar dtype {c.dtype}: re-export the model")
        shape = list(inputs[0].shape)
        hw = (shape[1:3] if str(c.layout).upper() == "NHWC" else shape[2:4]) if len(shape) == 4 else []
        if any(isinstance(d, int) and d > 0 and d != want for d, want in zip(hw, (c.height, c.width))):
            raise SkylocError(f"{self.model_path} takes {hw[0]}x{hw[1]} images but its sidecar says {c.height}x"
                              f"{c.width} ({c.layout}): the sidecar was edited or belongs to another export; "
                              "re-export the model (its sidecar is written with it)")
        outs = [o.name for o in self.session.get_outputs()]
        if self.sidecar.output_name not in outs:
            raise SkylocError(f"{self.model_path} has no output {self.sidecar.output_name!r} (has {outs})")
        b0 = inputs[0].shape[0]
        if isinstance(b0, int) and b0 > 0:
            self.fixed_batch = b0  # exported with a static batch: embed() pads to it
        self._input_name = c.name
        self._output_names = [self.sidecar.output_name]

    @property
    def providers(self) -> str:
        return ", ".join(self.session.get_providers())

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._output_names, {self._input_name: batch})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
