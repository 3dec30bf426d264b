"""`skyloc calibrate`: INT8 post-training quantization (`--check-trt M.onnx` is `skyloc check M.onnx`)."""
from __future__ import annotations

import argparse
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from skyloc.core.config import config_path_beside, options_from_args, write_resolved_config
from skyloc.core.errors import SkylocError
from skyloc.core.options import add_options, check_options, opt


@dataclass
class CalibrateCliOptions:
    """`skyloc calibrate` options (flags and the `[calibrate]` table of a `--config` TOML)."""

    model: Path | None = opt(None, "FP32 ONNX written by `skyloc export onnx` (sidecar beside it)")
    images: tuple[str, ...] = opt((), "calibration image folders, searched recursively (e.g. satellite tiles and "
                                      "drone frames)", nargs="+", metavar="DIR")
    out: Path | None = opt(None, "output folder (QDQ models, sidecars, manifest, report; options as "
                                 "OUT.config.json beside it)")
    method: str = opt("minmax", "activation range calibration method", choices=("minmax", "entropy", "percentile"))
    num_images: int = opt(256, "calibration set size (stratified by folder)", ge=1, le=1_000_000)
    eval_data: Path | None = opt(None, "University-1652-layout dataset: R@K/AP of each artifact vs FP32 on its test "
                                       "split", metavar="DIR")
    held_out: Path | None = opt(None, "images for the embedding-cosine comparison (default: the calibration "
                                      "images)", metavar="DIR")
    compare: tuple[str, ...] = opt((), "more artifacts of the same model to include in the report (e.g. the FP16 "
                                       "ONNX)", nargs="*", metavar="ONNX")
    check_trt: Path | None = opt(None, "only lint an ONNX against TensorRT's parser constraints (same as "
                                       "`skyloc check`); exit 1 on errors", metavar="ONNX")
    progress: bool = opt(True, "progress bars")

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CalibrateCliOptions)


def main(args: argparse.Namespace) -> int:
    args = options_from_args(CalibrateCliOptions, args, section="calibrate")
    if args.check_trt is not None:
        from skyloc.calibration.trt_lint import errors, format_report, lint_model

        findings = lint_model(args.check_trt)
        print(format_report(args.check_trt, findings))
        return 1 if errors(findings) else 0
    missing = [flag for flag, v in (("--model", args.model), ("--images", args.images), ("--out", args.out)) if not v]
    if missing:
        raise SkylocError(f"missing {', '.join(missing)}: calibration needs --model M.onnx --images DIR... --out DIR "
                          "(or use --check-trt M.onnx)")
    from skyloc.calibration.quantize import calibrate

    # SIGTERM / SIGHUP unwind like an exception, so this process's scratch files (tens of MB of
    # half-written models) go now, not at the next run; the previous models and manifest stay.
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        paths = calibrate(args.model, args.images, args.out, method=args.method, num_images=args.num_images,
                          eval_data=args.eval_data, held_out=args.held_out, compare=args.compare,
                          progress=args.progress)
    except BaseException:
        _remove_own_scratch(Path(args.out))
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    paths["config"] = write_resolved_config(args, config_path_beside(args.out))
    for key, path in paths.items():
        print(f"{key:12s} {path}")
    print(Path(paths["report_md"]).read_text())
    return 0


def _remove_own_scratch(folder: Path) -> None:
    """This process's scratch files (core.atomic.scratch_path names: .NAME.tmpPID-XXXX)."""
    if not folder.is_dir():
        return
    for p in folder.glob(f".*.tmp{os.getpid()}-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
