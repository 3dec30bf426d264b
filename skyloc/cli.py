"""The `skyloc` console command.

Each subcommand lives in the package that owns it and is imported only when chosen, so
`skyloc --help` and `skyloc run` never load torch. A command module exposes
`add_arguments(parser)` and `main(args) -> int`, and must not import torch at module level.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter

# name -> (module, one-line help). Modules are named as strings so this file stays torch-free.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("skyloc.synth.cli", "make synthetic cross-view datasets and simulated flights from a map"),
    "train": ("skyloc.training.train_cli", "train an MSBA model (resumable, TensorBoard, torchrun)"),
    "eval": ("skyloc.training.eval_cli", "University-1652 evaluation: R@K and AP in both directions"),
    "export": ("skyloc.export.cli", "checkpoint -> ONNX (full / global) with its JSON sidecar"),
    "calibrate": ("skyloc.calibration.cli", "INT8 post-training quantization (QDQ ONNX for ORT and TensorRT)"),
    "engine": ("skyloc.export.engine_cli", "ONNX -> TensorRT engine (needs TensorRT and a GPU)"),
    "check": ("skyloc.calibration.check_cli", "lint an ONNX model against TensorRT's parser constraints"),
    "doctor": ("skyloc.benchmarks.gpu_check", "versions; with --gpu one timed check of the NVIDIA path, one markdown file"),
    "tiles": ("skyloc.runtime.maps.tiles_cli", "embed a map into a tile set (sharded, mergeable)"),
    "run": ("skyloc.runtime.run.cli", "localize frames from a camera, video or folder against a tile set"),
    "bench": ("skyloc.benchmarks.cli", "latency, search-scaling, accuracy and runtime benchmarks"),
    "report": ("skyloc.runtime.report.build", "plots and GeoJSON / GPX / KML tracks from a run's fixes"),
    "demo": ("skyloc.pipelines.demo", "the whole pipeline on a procedural world, in one command"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# A command whose module needs a package this install lacks says what to install (README, "Install variants").
MISSING_HINTS = {
    "torch": 'this command needs the training install: pip install -e ".[train]"',
    "torchvision": 'this command needs the training install: pip install -e ".[train]"',
    "onnx": 'this command needs the training install: pip install -e ".[train]"',
    "cv2": "install OpenCV: pip install opencv-python-headless (on Jetson use JetPack's OpenCV, README \"Jetson\")",
    "onnxruntime": "install ONNX Runtime: pip install onnxruntime (on Jetson NVIDIA's onnxruntime-gpu, README \"Jetson\")",
    "faiss": "install faiss: pip install faiss-cpu",
    "rasterio": 'GeoTIFF maps need the maps extra: pip install -e ".[maps]"',
    "psutil": 'benchmarks need the bench extra: pip install -e ".[bench]"',
    "tensorrt": "the TensorRT backend needs TensorRT (desktop: the gpu extra; Jetson: JetPack)",
}


def _add_logging(p: Any) -> None:
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                   help="messages shown on stderr (and written to --log-file); default: the command's own")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="also append every message at --log-level, with timestamps, to this file")


def configure_logging(level: str, log_file: str | None) -> None:
    """Handlers for the `skyloc` command (the application): stderr, and a file when asked.

    Only this entry point configures logging; library calls only log to `skyloc.*` loggers.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_skyloc_cli", False):
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if log_file:
        path = Path(log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise SkylocError(f"--log-file {path}: cannot open it for writing ({exc}); choose a writable path") \
                from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    for h in handlers:
        h._skyloc_cli = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(getattr(logging, level))


def restore_logging(level: int) -> None:
    """Remove the handlers configure_logging added and put the root level back."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_skyloc_cli", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _top_parser() -> argparse.ArgumentParser:
    from skyloc import __version__

    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    p = argparse.ArgumentParser(
        prog="skyloc",
        description="GPS-free drone geolocalization (MSBA cross-view retrieval).",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun `skyloc COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"skyloc {__version__}")
    _add_logging(p)
    p.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND")
    return p


def _missing_package(command: str, exc: ModuleNotFoundError) -> int:
    """An optional package the command needs is not installed: say which extra brings it (exit 2);
    anything else missing is a bug and re-raised."""
    top_name = (exc.name or "").split(".")[0]
    if top_name not in MISSING_HINTS:
        raise exc
    print(f"skyloc {command}: error: {top_name} is not installed; {MISSING_HINTS[top_name]}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    # Top-level options come before the command; everything after it is the command's.
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help", "--version") else 2
    if i < len(argv) and argv[i] not in COMMANDS:
        top.error(f"unknown command {argv[i]!r}; choose from: {', '.join(COMMANDS)}")
    top_args = top.parse_args(argv[:i + 1] if i < len(argv) else argv)
    if top_args.command is None:
        top.print_help()
        return 0
    name = top_args.command
    rest = argv[i + 1:]
    module_name, help_ = COMMANDS[name]
    # OpenMP threads that spin while waiting collapse (10-20x slower) as soon as another process
    # wants the same cores, as on a drone computer or a busy laptop; waiting passively costs little.
    # Must be set before torch / OpenMP load; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if name == "run" or (name == "bench" and rest[:1] in (["flight"], ["flight-latency"])):
        # The onboard loop's tile search is one small matmul per frame; OpenBLAS threads fighting
        # ONNX Runtime's for the same cores made it 45 ms instead of 1 ms (bench flight-latency).
        # The benches that drive the loop in-process measure it as `skyloc run` runs it.
        # Must be set before numpy loads OpenBLAS; the user's own setting wins.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        return _missing_package(name, exc)
    parser = argparse.ArgumentParser(prog=f"skyloc {name}", description=help_, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    # --log-level / --log-file also after the command, unless the command defines its own
    have = {o for a in parser._actions for o in a.option_strings}
    if "--log-level" not in have and "--log-file" not in have:
        _add_logging(parser.add_argument_group("logging"))
    elif "--log-file" not in have:
        parser.add_argument("--log-file", default=None, metavar="PATH",
                            help="also append every message, with timestamps, to this file")
    args = parser.parse_args(rest)
    level = top_args.log_level or getattr(args, "log_level", None) or getattr(module, "LOG_LEVEL", "WARNING")
    saved_level = logging.getLogger().level
    try:
        configure_logging(str(level).upper() if str(level).upper() in LOG_LEVELS else "WARNING",
                          getattr(args, "log_file", None) or top_args.log_file)
        return int(module.main(args) or 0)
    except SkylocError as exc:
        print(f"skyloc {name}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_package(name, exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # main() called in-process (tests, harnesses) leaves the root logger as it found it
        restore_logging(saved_level)


if __name__ == "__main__":
    sys.exit(main())
