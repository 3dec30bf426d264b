"""`skyloc calibrate`: INT8 post-training quantization (`--check-trt M.onnx` is `skyloc check M.onnx`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from skyloc.core.errors import SkylocError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="FP32 ONNX written by `skyloc export onnx` (sidecar beside it)")
    parser.add_argument("--images", type=Path, nargs="+", metavar="DIR",
                        help="calibration image folders, searched recursively (e.g. satellite tiles and drone frames)")
    parser.add_argument("--out", type=Path, help="output folder (QDQ models, sidecars, manifest, report)")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="activation range calibration method")
    parser.add_argument("--num-images", type=int, default=256, help="calibration set size (stratified by folder)")
    parser.add_argument("--eval-data", type=Path, metavar="DIR",
                        help="University-1652-layout dataset: R@K/AP of each artifact vs FP32 on its test split")
    parser.add_argument("--held-out", type=Path, metavar="DIR",
                        help="images for the embedding-cosine comparison (default: the calibration images)")
    parser.add_argument("--compare", type=Path, nargs="*", default=[], metavar="ONNX",
                        help="more artifacts of the same model to include in the report (e.g. the FP16 ONNX)")
    parser.add_argument("--check-trt", type=Path, metavar="ONNX",
                        help="only lint an ONNX against TensorRT's parser constraints (same as `skyloc check`); "
                             "exit 1 on errors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
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

    paths = calibrate(args.model, args.images, args.out, method=args.method, num_images=args.num_images,
                      eval_data=args.eval_data, held_out=args.held_out, compare=args.compare,
                      progress=not args.no_progress)
    for key, path in paths.items():
        print(f"{key:12s} {path}")
    print(Path(paths["report_md"]).read_text())
    return 0
