"""`skyloc engine`: ONNX -> TensorRT engine on this machine's GPU (precision from the ONNX), or
`--adopt ENGINE`: write the sidecar for an engine built with trtexec from that ONNX."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True,
                        help="exported ONNX (FP32, FP16 or *.int8-trt.onnx) with its sidecar")
    parser.add_argument("--out", type=Path, help="engine file to build (sidecar written as OUT.json)")
    parser.add_argument("--adopt", type=Path, metavar="ENGINE",
                        help="instead of building: check an engine built from --onnx by trtexec on this GPU "
                             "(deserialize, compare I/O, read its batch profile, run it once) and write its sidecar")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch size to tune for (default max/2)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache file: read if present, written after the build")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine also runs on later TensorRT releases (same major; TensorRT 10 -> 11); "
                             "with --adopt: the engine was built with trtexec --versionCompatible")
    parser.add_argument("--workspace-mb", type=int, default=None, help="builder workspace limit in MiB")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not test-run the new engine before writing it (needs cuda-python or pycuda)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT verbose log")


def main(args: argparse.Namespace) -> int:
    from skyloc.core.errors import SkylocError
    from skyloc.core.sidecar import model_sidecar_path

    if (args.out is None) == (args.adopt is None):
        raise SkylocError("give exactly one of --out ENGINE (build) or --adopt ENGINE (write the sidecar of a "
                          "trtexec-built engine)")
    if args.adopt is not None:
        from skyloc.export.engine import adopt_engine

        side = adopt_engine(args.adopt, args.onnx, version_compatible=args.version_compatible,
                            verify=not args.no_verify)
        print(f"wrote {side} for {args.adopt}")
        return 0
    from skyloc.export.engine import build_engine

    out = build_engine(args.onnx, args.out, max_batch=args.max_batch, opt_batch=args.opt_batch,
                       timing_cache=args.timing_cache, version_compatible=args.version_compatible,
                       workspace_mb=args.workspace_mb, verbose=args.verbose, verify=not args.no_verify)
    print(f"wrote {out} and {model_sidecar_path(out)}")
    return 0
