"""`skyloc export onnx|fp16`: checkpoint -> ONNX with its sidecar; FP32 ONNX -> FP16 ONNX."""
from __future__ import annotations

import argparse
from pathlib import Path

from skyloc.core.options import HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    onnx = sub.add_parser("onnx", help="checkpoint -> ONNX (uint8 NHWC in, embedding out) + JSON sidecar",
                          formatter_class=HelpFormatter)
    onnx.add_argument("--checkpoint", type=Path, required=True, help="checkpoint .pt from `skyloc train`")
    onnx.add_argument("--variant", choices=("full", "global"), default="full",
                      help="full = all heads (paper's embedding); global = the global head alone (512-d, cheaper)")
    onnx.add_argument("--out", type=Path, required=True, help="output .onnx (sidecar written beside as .json)")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or newer)")
    onnx.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                      help="fp16 converts the export for TensorRT strongly typed builds (float I/O unchanged)")
    fp16 = sub.add_parser("fp16", help="FP32 ONNX -> FP16 ONNX (for TensorRT strongly typed engines)",
                          formatter_class=HelpFormatter)
    fp16.add_argument("--model", type=Path, required=True, help="FP32 ONNX written by `skyloc export onnx`")
    fp16.add_argument("--out", type=Path, help="output .onnx (default: MODEL.fp16.onnx beside the input)")


def main(args: argparse.Namespace) -> int:
    if args.what == "onnx":
        from skyloc.export.onnx_export import export_onnx

        out = export_onnx(args.checkpoint, args.out, variant=args.variant, opset=args.opset, precision=args.precision)
    else:
        from skyloc.export.fp16 import to_fp16

        out = to_fp16(args.model, args.out or args.model.with_name(f"{args.model.stem}.fp16.onnx"))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
