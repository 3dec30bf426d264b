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
    from skyloc.export.matcher_engine import sidecar_format
    from skyloc.runtime.register.extractor import MATCHER_FORMAT
    from skyloc.runtime.register.glue import GLUE_FORMAT

    # Dimensions besides the batch that are dynamic on purpose, and what gives them their profile:
    # a learned matcher's H and W (`skyloc engine --image-shapes`), a glue's keypoint counts N0, N1
    # (an embedding model's engine profiles the batch only).
    profiled = {MATCHER_FORMAT: ((1, 2), "learned matcher: H and W come from --image-shapes"),
                GLUE_FORMAT: ((1,), "glue: N0 and N1 need an optimisation profile over them")}
    o = options_from_args(CheckCliOptions, args, section="check")
    failed = False
    for path in map(Path, o.models):
        dims, note = profiled.get(sidecar_format(path), ((), ""))
        findings = lint_model(path, profile_dims=dims)
        print(format_report(path, findings) + (f" [{note}]" if note and not errors(findings) else ""))
        failed |= bool(findings if o.strict else errors(findings))
    return 1 if failed else 0
