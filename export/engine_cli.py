"""`skyloc engine`: ONNX -> TensorRT engine on this machine's GPU (precision from the ONNX)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True,
                        help="exported ONNX (FP32, FP16 or *.int8-trt.onnx) with its sidecar")
    parser.add_argument("--out", type=Path, required=True, help="engine file (sidecar written as OUT.json)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch size to tune for (default max/2)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache file: read if present, written after the build")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine also runs on later TensorRT releases of the same major version")
    parser.add_argument("--workspace-mb", type=int, default=None, help="builder workspace limit in MiB")
    parser.add_argument("--verbose", action="store_true", help="TensorRT verbose log")


def main(args: argparse.Namespace) -> int:
    from skyloc.export.engine import build_engine
    from skyloc.runtime.sidecar import model_sidecar_path

    out = build_engine(args.onnx, args.out, max_batch=args.max_batch, opt_batch=args.opt_batch,
                       timing_cache=args.timing_cache, version_compatible=args.version_compatible,
                       workspace_mb=args.workspace_mb, verbose=args.verbose)
    print(f"wrote {out} and {model_sidecar_path(out)}")
    return 0
