"""`skyloc check MODEL.onnx ...`: lint ONNX models against TensorRT's ONNX-parser constraints
(no TensorRT or GPU needed). Exit 0 when every model passes, 1 when one has errors."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from skyloc.core.options import add_options, check_options, opt


@dataclass
class CheckCliOptions:
    """`skyloc check` options (flags and the `[check]` table of a `--config` TOML)."""

    models: tuple[str, ...] = opt((), "ONNX files to check", flag="models", nargs="+", metavar="MODEL.onnx")
    strict: bool = opt(False, "warnings (e.g. Q/DQ that block fusion) fail too")

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CheckCliOptions)


def main(args: argparse.Namespace) -> int:
    from skyloc.calibration.trt_lint import errors, format_report, lint_model
    from skyloc.core.config import options_from_args
    from skyloc.export.matcher_engine import is_matcher_onnx

    o = options_from_args(CheckCliOptions, args, section="check")
    failed = False
    for path in map(Path, o.models):
        # A learned matcher's H and W are dynamic on purpose: `skyloc engine --image-shapes` gives
        # the engine a profile over them (an embedding model's engine profiles the batch only).
        matcher = is_matcher_onnx(path)
        findings = lint_model(path, profile_dims=(1, 2) if matcher else ())
        print(format_report(path, findings) + (" [learned matcher: H and W come from --image-shapes]"
                                               if matcher and not errors(findings) else ""))
        failed |= bool(findings if o.strict else errors(findings))
    return 1 if failed else 0
