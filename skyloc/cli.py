"""The `skyloc` console command.

Each subcommand lives in the package that owns it and is imported only when chosen, so
`skyloc --help` and `skyloc run` never load torch. A command module exposes
`add_arguments(parser)` and `main(args) -> int`, and must not import torch at module level.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from skyloc.runtime.errors import SkylocError

# name -> (module, one-line help). Modules are named as strings so this file stays torch-free.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("skyloc.runtime.synth.cli", "make synthetic cross-view datasets and simulated flights from a map"),
    "train": ("skyloc.training.train_cli", "train an MSBA model (resumable, TensorBoard, torchrun)"),
    "eval": ("skyloc.training.eval_cli", "University-1652 evaluation: R@K and AP in both directions"),
    "export": ("skyloc.export.cli", "checkpoint -> ONNX (full / global) with its JSON sidecar"),
    "calibrate": ("skyloc.calibration.cli", "INT8 post-training quantization (QDQ ONNX for ORT and TensorRT)"),
    "engine": ("skyloc.export.engine_cli", "ONNX -> TensorRT engine (needs TensorRT and a GPU)"),
    "tiles": ("skyloc.runtime.tiles_cli", "embed a map into a tile set (sharded, mergeable)"),
    "run": ("skyloc.runtime.run_cli", "localize frames from a camera, video or folder against a tile set"),
    "bench": ("skyloc.benchmarks.cli", "latency, search-scaling, accuracy and runtime benchmarks"),
    "demo": ("skyloc.pipelines.demo", "the whole pipeline on a procedural world, in one command"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="skyloc",
        description="GPS-free drone geolocalization (MSBA cross-view retrieval).",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun `skyloc COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] not in COMMANDS:
        top.error(f"unknown command {argv[0]!r}; choose from: {', '.join(COMMANDS)}")
    name = argv[0]
    module_name, help_ = COMMANDS[name]
    # OpenMP threads that spin while waiting collapse (10-20x slower) as soon as another process
    # wants the same cores, as on a drone computer or a busy laptop; waiting passively costs little.
    # Must be set before torch / OpenMP load; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"skyloc {name}", description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except SkylocError as exc:
        print(f"skyloc {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
