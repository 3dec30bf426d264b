"""The ONNX half of `skyloc doctor --gpu` (benchmarks/gpu_check.py): export MSBA (full and
global; FP32, FP16 and, when TensorRT is here, the S8S8 INT8 model) and the learned matcher,
take ONNX Runtime on the CPU as the reference, and run every GPU runtime that is installed —
ORT's CUDA and TensorRT providers, native TensorRT engines — against it, timed.

Each step is one `Report.step`: a failure is a "could not run" line, and the rest goes on.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.benchmarks.gpu_check_base import GpuCheckOptions, Report, cosine_min, time_ms
from skyloc.core.errors import SkylocError

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CALIBRATION_IMAGES = 32
CPU_TIMED_RUNS = 3  # the CPU reference is timed only roughly: it is the slow one


def _have_tensorrt() -> str | None:
    """None when native TensorRT engines can be built and run here, else why not."""
    from skyloc.runtime.backends.cuda_memory import available_bindings

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT (python package `tensorrt`) is not installed"
    if not available_bindings():
        return "TensorRT is installed but neither cuda-python nor pycuda"
    return None


def _checkpoint(opts: GpuCheckOptions, folder: Path) -> Path:
    if opts.checkpoint is not None:
        return opts.checkpoint
    import torch

    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    cfg, tcfg = preset(opts.preset or ("msba" if opts.device == "cuda" else "tiny"))
    torch.manual_seed(0)
    return save_checkpoint(folder / "random-init.pt", build_model(cfg).eval(), cfg, tcfg)


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random images (blurred noise): image-like value ranges for calibration and checks."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), max(1.0, size / 16))
        img = (img - img.min()) / (img.max() - img.min() + 1e-6)
        out.append((img * 235 + 10).astype(np.uint8))
    return np.stack(out)


def onnx_checks(opts: GpuCheckOptions, rep: Report) -> None:
    import onnxruntime as ort

    from skyloc.core.sidecar import read_model_sidecar

    providers = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
    if not providers:
        rep.not_run.append(("ONNX Runtime on the GPU", f"this onnxruntime {ort.__version__} has only "
                            f"{', '.join(ort.get_available_providers())} (onnxruntime-gpu is not installed)"))
    no_trt = _have_tensorrt()
    if no_trt:
        rep.not_run.append(("native TensorRT engines (FP16, INT8)", no_trt))
    with tempfile.TemporaryDirectory(prefix="skyloc-gpu-check-") as tmp:
        folder = Path(tmp)
        ckpt = _checkpoint(opts, folder)
        models: dict[str, Path] = {}
        for variant in opts.onnx_variants:
            rep.step(f"export MSBA {variant} (fp32, fp16)", lambda v=variant: _export(ckpt, folder, v, models))
        # Most telling first, so a spent budget cuts the least: FP32 / FP16 runs, the matcher, then INT8.
        refs: dict[str, np.ndarray] = {}  # variant -> FP32 output on ORT CPU, the reference for all
        first = next((models[f"{v}-fp32"] for v in opts.onnx_variants if f"{v}-fp32" in models), None)
        size = read_model_sidecar(first).input.height if first is not None else 0
        x = _images(max(opts.batches), size, seed=7) if size else None
        for name in sorted(models, key=lambda n: not n.endswith("fp32")):
            rep.step(f"run MSBA {name}", lambda n=name: _run_msba(opts, rep, n, models[n], x, refs, providers, no_trt))
        rep.step("matcher ONNX", lambda: _matcher(opts, rep, folder, providers, no_trt))
        if not size:
            return
        if no_trt and "TensorrtExecutionProvider" not in providers:
            rep.not_run.append(("INT8 (S8S8) model", "no TensorRT here (native or ORT provider) to run it"))
            return
        for variant in opts.onnx_variants:
            rep.step(f"calibrate MSBA {variant} (int8-trt)", lambda v=variant: _int8(models, folder, v, size))
            if f"{variant}-int8-trt" in models:
                name = f"{variant}-int8-trt"
                rep.step(f"run MSBA {name}", lambda n=name: _run_msba(opts, rep, n, models[n], x, refs, providers, no_trt))


def _export(ckpt: Path, folder: Path, variant: str, models: dict[str, Path]) -> None:
    from skyloc.export.fp16 import to_fp16
    from skyloc.export.onnx_export import export_onnx

    models[f"{variant}-fp32"] = export_onnx(ckpt, folder / f"{variant}.onnx", variant=variant)
    models[f"{variant}-fp16"] = to_fp16(models[f"{variant}-fp32"], folder / f"{variant}.fp16.onnx")


def _int8(models: dict[str, Path], folder: Path, variant: str, size: int) -> None:
    from skyloc.calibration.quantize import quantize_pair

    if f"{variant}-fp32" not in models:
        raise SkylocError(f"the {variant} FP32 export is missing (see above)")
    paths = quantize_pair(models[f"{variant}-fp32"], _images(CALIBRATION_IMAGES, size, seed=3),
                          folder / "int8", progress=False)
    models[f"{variant}-int8-trt"] = paths["int8-trt"]


def _run_msba(opts: GpuCheckOptions, rep: Report, name: str, path: Path, x: np.ndarray,
              refs: dict[str, np.ndarray], providers: list[str], no_trt: str | None) -> None:
    from skyloc.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    variant, precision = name.split("-", 1)
    label = f"MSBA {variant} {x.shape[1]}px"
    with OnnxRuntimeBackend(path, {"providers": ["CPUExecutionProvider"]}) as cpu:
        out = cpu.embed(x)
        med, p90 = time_ms(lambda: cpu.embed(x[:1]), lambda: None, CPU_TIMED_RUNS, warmup=1)
    if precision == "fp32":
        refs[variant] = out
    if variant not in refs:
        raise SkylocError(f"no FP32 reference for the {variant} variant (its run failed above)")
    ref = refs[variant]
    rep.timings.append(dict(model=label, runtime="ORT CPU", precision=precision, batch=1, ms=med, p90=p90,
                            vs="reference" if precision == "fp32" else
                            f"min cosine {cosine_min(out, ref):.6f} vs ORT CPU fp32"))
    for prov in providers:
        if prov == "TensorrtExecutionProvider" and precision not in ("fp32", "fp16", "int8-trt"):
            continue
        rep.step(f"{label} {precision} on ORT {prov}", lambda p=prov: _time_backend(
            opts, rep, label, precision, f"ORT {p.replace('ExecutionProvider', '')}", x, ref,
            lambda: OnnxRuntimeBackend(path, {"providers": [p], "trt_max_batch": max(opts.batches)})))
    if no_trt is None:
        rep.step(f"{label} {precision} native TensorRT", lambda: _time_backend(
            opts, rep, label, precision, "TensorRT", x, ref, lambda: _engine(path, max(opts.batches))))


def _engine(onnx_path: Path, max_batch: int) -> Any:
    from skyloc.export.engine import build_engine
    from skyloc.runtime.backends.tensorrt_backend import TensorRTBackend

    engine = build_engine(onnx_path, onnx_path.with_suffix(".engine"), max_batch=max_batch)
    return TensorRTBackend(engine)


def _time_backend(opts: GpuCheckOptions, rep: Report, label: str, precision: str, runtime: str,
                  x: np.ndarray, ref: np.ndarray, opener: Any) -> None:
    backend = opener()
    try:
        got = backend.embed(x)
        vs = f"min cosine {cosine_min(got, ref):.6f} vs ORT CPU fp32"
        for b in opts.batches:
            med, p90 = time_ms(lambda: backend.embed(x[:b]), lambda: None, opts.iters)
            rep.timings.append(dict(model=label, runtime=f"{runtime} ({backend.providers})", precision=precision,
                                    batch=b, ms=med, p90=p90, vs=vs))
    finally:
        backend.close()


def _matcher(opts: GpuCheckOptions, rep: Report, folder: Path, providers: list[str], no_trt: str | None) -> None:
    import onnxruntime as ort

    if opts.matcher_onnx is not None:
        path = opts.matcher_onnx
    elif importlib.util.find_spec("skyloc.export.matcher") is None:
        raise SkylocError("export/matcher.py (the learned matcher's exporter) is not in this checkout")
    else:
        from skyloc.export.matcher import export_matcher

        path = export_matcher("xfeat", folder / "xfeat.onnx")
    s = opts.matcher_size if opts.device == "cuda" else min(opts.matcher_size, 64)
    image = _images(1, s, seed=5)
    label = f"XFeat dense {s}x{s}"

    def session(prov: str) -> Any:
        return ort.InferenceSession(str(path), providers=[prov] if prov == "CPUExecutionProvider"
                                    else [prov, "CPUExecutionProvider"])

    cpu = session("CPUExecutionProvider")
    names = [o.name for o in cpu.get_outputs()]
    ref = dict(zip(names, cpu.run(None, {"image": image})))
    med, p90 = time_ms(lambda: cpu.run(None, {"image": image}), lambda: None, CPU_TIMED_RUNS, warmup=1)
    rep.timings.append(dict(model=label, runtime="ORT CPU", precision="fp32", batch=1, ms=med, p90=p90,
                            vs="reference"))
    for prov in providers:
        def run(p: str = prov) -> None:
            sess = session(p)
            got = dict(zip(names, sess.run(None, {"image": image})))
            med, p90 = time_ms(lambda: sess.run(None, {"image": image}), lambda: None, opts.iters)
            rep.timings.append(dict(model=label, runtime=f"ORT {', '.join(sess.get_providers())}", precision="fp32",
                                    batch=1, ms=med, p90=p90,
                                    vs=_descriptor_check(got, ref)))
        rep.step(f"{label} on ORT {prov}", run)
    if no_trt is None:
        def native() -> None:
            from skyloc.export.matcher_engine import build_matcher_engine
            from skyloc.runtime.backends.tensorrt_runner import TensorRTRunner

            engine = build_matcher_engine(path, folder / "xfeat.engine", f"{s}x{s}")
            with TensorRTRunner(engine) as runner:
                got = runner.run(image)
                med, p90 = time_ms(lambda: runner.run(image), lambda: None, opts.iters)
            rep.timings.append(dict(model=label, runtime="TensorRT", precision="fp32", batch=1, ms=med, p90=p90,
                                    vs=_descriptor_check(got, ref)))
        rep.step(f"{label} native TensorRT", native)


def _rows(desc: np.ndarray) -> np.ndarray:
    """(1, D, h, w) descriptor map -> (h * w, D): one row per cell."""
    return np.asarray(desc)[0].reshape(desc.shape[1], -1).T


def _descriptor_check(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    return f"descriptor min cosine {cosine_min(_rows(got['descriptors']), _rows(ref['descriptors'])):.6f} vs ORT CPU"
