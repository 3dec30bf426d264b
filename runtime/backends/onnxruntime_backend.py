"""ONNX Runtime backend: TensorRT EP > CUDA EP > CPU EP, whichever this onnxruntime build has.

Execution providers are tried in that order and ONNX Runtime falls back down the list per node,
so one code path serves a Jetson (onnxruntime-gpu with TensorRT), a desktop GPU and a laptop.
`conf["providers"]` forces a list (full names or short ones: tensorrt, cuda, cpu).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.backends.base import Backend, register_backend
from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sidecar import read_model_sidecar

log = logging.getLogger("skyloc.backends")

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
         "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


def _wanted_providers(forced: Any, available: list[str]) -> list[str]:
    if forced is None:
        return [p for p in PREFERENCE if p in available] or list(available)
    names = forced.split(",") if isinstance(forced, str) else list(forced)
    out = []
    for n in names:
        full = SHORT.get(n.strip().lower(), n.strip())
        if full not in available:
            raise SkylocError(
                f"onnxruntime execution provider {n!r} is not available in this build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT"
            )
        out.append(full)
    return out


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    priority = 10
    suffixes = (".onnx",)
    default_conf = {
        "providers": None,  # None = best available; or "cuda,cpu" / ["CPUExecutionProvider"]
        "device_id": 0,
        "intra_op_threads": 0,  # 0 = onnxruntime's default (all cores)
        "trt_fp16": None,  # None = follow the sidecar precision
        "trt_cache_dir": None,  # None = <model dir>/.trt-cache
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
        wanted = _wanted_providers(self.conf["providers"], ort.get_available_providers())
        providers: list[Any] = []
        for p in wanted:
            if p == "TensorrtExecutionProvider":
                fp16 = self.conf["trt_fp16"]
                if fp16 is None:
                    fp16 = self.sidecar.precision == "fp16"
                cache = Path(self.conf["trt_cache_dir"] or self.model_path.parent / ".trt-cache")
                cache.mkdir(parents=True, exist_ok=True)
                providers.append((p, {
                    "device_id": int(self.conf["device_id"]),
                    "trt_fp16_enable": bool(fp16),
                    # QDQ graphs carry their own scales; TensorRT needs INT8 enabled to honour them
                    "trt_int8_enable": self.sidecar.precision.startswith("int8"),
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                }))
            elif p == "CUDAExecutionProvider":
                providers.append((p, {"device_id": int(self.conf["device_id"])}))
            else:
                providers.append(p)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if int(self.conf["intra_op_threads"]) > 0:
            so.intra_op_num_threads = int(self.conf["intra_op_threads"])
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SkylocError(f"onnxruntime cannot load {self.model_path}: {exc}; re-export the model") from None
        self._check_io()

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
