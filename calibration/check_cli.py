"""`skyloc check MODEL.onnx ...`: lint ONNX models against TensorRT's ONNX-parser constraints
(no TensorRT or GPU needed). Exit 0 when every model passes, 1 when one has errors."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL.onnx", help="ONNX files to check")
    parser.add_argument("--strict", action="store_true", help="warnings (e.g. Q/DQ that block fusion) fail too")


def main(args: argparse.Namespace) -> int:
    from skyloc.calibration.trt_lint import errors, format_report, lint_model

    failed = False
    for path in args.models:
        findings = lint_model(path)
        print(format_report(path, findings))
        failed |= bool(findings if args.strict else errors(findings))
    return 1 if failed else 0
