"""`skyloc engine`: ONNX -> TensorRT engine on this machine's GPU (precision from the ONNX), or
`--adopt ENGINE`: write the sidecar for an engine built with trtexec from that ONNX. A learned
matcher's ONNX (`skyloc export matcher`) gets an engine over `--image-shapes` instead of a batch."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from skyloc.core.options import add_options, check_options, opt


@dataclass
class EngineCliOptions:
    """`skyloc engine` options (flags and the `[engine]` table of a `--config` TOML)."""

    onnx: Path | None = opt(None, "exported ONNX (FP32, FP16 or *.int8-trt.onnx) with its sidecar (required)")
    out: Path | None = opt(None, "engine file to build (sidecar written as OUT.json, options as OUT.config.json)")
    adopt: Path | None = opt(None, "instead of building: check an engine built from --onnx by trtexec on this GPU "
                                   "(deserialize, compare I/O, read its batch profile, run it once) and write its "
                                   "sidecar", metavar="ENGINE")
    image_shapes: str | None = opt(None, "learned matcher ONNX only (`skyloc export matcher`): the image sizes the "
                                         "engine takes, HxW or min,opt,max (multiples of the matcher's stride)",
                                   metavar="HxW[,HxW,HxW]")
    max_batch: int = opt(8, "largest batch the engine accepts", ge=1, le=4096)
    opt_batch: int | None = opt(None, "batch size to tune for (default max/2)", ge=1, le=4096)
    timing_cache: Path | None = opt(None, "timing cache file: read if present, written after the build")
    version_compatible: bool = opt(False, "engine also runs on later TensorRT releases (same major; TensorRT 10 -> "
                                          "11); with --adopt: the engine was built with trtexec --versionCompatible")
    workspace_mb: int | None = opt(None, "builder workspace limit in MiB", ge=1)
    verify: bool = opt(True, "test-run the new engine before writing it (needs cuda-python or pycuda)")
    verbose: bool = opt(False, "TensorRT verbose log")

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, EngineCliOptions)


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import config_path_beside, options_from_args, write_resolved_config
    from skyloc.core.errors import SkylocError
    from skyloc.core.sidecar import model_sidecar_path

    o = options_from_args(EngineCliOptions, args, section="engine")
    if o.onnx is None:
        raise SkylocError("give --onnx MODEL.onnx (an exported ONNX with its sidecar)")
    if (o.out is None) == (o.adopt is None):
        raise SkylocError("give exactly one of --out ENGINE (build) or --adopt ENGINE (write the sidecar of a "
                          "trtexec-built engine)")
    onnx = Path(o.onnx)
    cache = Path(o.timing_cache) if o.timing_cache else None
    from skyloc.export.matcher_engine import is_matcher_onnx, sidecar_format
    from skyloc.runtime.register.glue import GLUE_FORMAT

    if sidecar_format(onnx) == GLUE_FORMAT:
        raise SkylocError(f"{onnx} is a glue (`skyloc export glue`): `skyloc engine` builds no TensorRT engine for "
                          "it; run it through ONNX Runtime (`--xfeat-providers CUDAExecutionProvider,"
                          "CPUExecutionProvider` on an NVIDIA GPU)")
    if is_matcher_onnx(onnx):
        from skyloc.export.matcher_engine import build_matcher_engine

        if o.adopt is not None or not o.image_shapes:
            raise SkylocError(f"{onnx} is a learned matcher: build its engine with --out ENGINE and "
                              "--image-shapes HxW (or min,opt,max), the image sizes it will take")
        out = build_matcher_engine(onnx, Path(o.out), o.image_shapes, timing_cache=cache,
                                   version_compatible=o.version_compatible, workspace_mb=o.workspace_mb,
                                   verbose=o.verbose, verify=o.verify)
        cfg = write_resolved_config(o, config_path_beside(out))
        print(f"wrote {out}, {model_sidecar_path(out)} and {cfg}")
        return 0
    if o.image_shapes:
        raise SkylocError("--image-shapes is for a learned matcher ONNX; an embedding model's engine takes "
                          "--max-batch / --opt-batch")
    if o.adopt is not None:
        from skyloc.export.engine import adopt_engine

        engine = Path(o.adopt)
        side = adopt_engine(engine, onnx, version_compatible=o.version_compatible, verify=o.verify)
        cfg = write_resolved_config(o, config_path_beside(engine))
        print(f"wrote {side} and {cfg} for {engine}")
        return 0
    from skyloc.export.engine import build_engine

    out = build_engine(onnx, Path(o.out), max_batch=o.max_batch, opt_batch=o.opt_batch, timing_cache=cache,
                       version_compatible=o.version_compatible, workspace_mb=o.workspace_mb, verbose=o.verbose,
                       verify=o.verify)
    cfg = write_resolved_config(o, config_path_beside(out))
    print(f"wrote {out}, {model_sidecar_path(out)} and {cfg}")
    return 0
