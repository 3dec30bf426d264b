"""`skyloc train`: a thin layer over training.train.train (no torch import at module level).

    skyloc train --data DIR --preset NAME --out RUN_DIR [--epochs N --size PX --batch-size B ...]
    skyloc train --resume RUN_DIR [--epochs N] [--data DIR] [--device ...] [--workers N]
    torchrun --nproc_per_node 2 -m runtime.cli train ...   (one process per GPU; gloo on CPU)

Exit codes: 0 trained, 2 an error (the message says what to do), 128 + N stopped by signal N
(SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, ...: at a safe point, last.pt / best.pt whole, then
`--resume` continues; training/stop.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.core.options import add_options, check_options, opt
from skyloc.training.config import PRESETS, preset

# Option -> config key. The first group fixes the model / optimisation and cannot change on
# resume; the second may (e.g. extend a finished run with more --epochs).
_FIXED = {"size": "image_size", "batch_size": "batch_size", "lr": "lr", "backbone": "backbone",
          "pretrained": "pretrained", "seed": "seed", "amp": "amp", "drones_per_location": "drones_per_location",
          "ring_pooling": "ring_pooling", "selection": "selection", "val_locations": "val_locations",
          "lr_steps": "lr_step_epochs"}
_RESUMABLE = {"epochs": "epochs", "workers": "workers", "eval_every": "eval_every"}
_PRESET_HELP = (f"model + training preset: {', '.join(PRESETS)} (msba = the paper: resnet50, 256 px, batch 8, SGD "
                "nesterov, lr 1e-3 heads / 1e-4 backbone, x0.1 at epoch 80 of 140; tiny = resnet18 at 64 px for CPU "
                "tests)")


@dataclass
class TrainCliOptions:
    """`skyloc train` options (flags and the `[train]` table of a `--config` TOML). The overrides default
    to None, the preset's value; their ranges are checked by training.config's ModelConfig / TrainConfig."""

    data: Path | None = opt(None, "dataset root in University-1652 layout (DIR/train/{satellite,drone}; "
                                  "DIR/test is used by --eval-every)")
    preset: str = opt("msba", _PRESET_HELP, choices=tuple(PRESETS), metavar="NAME")
    out: Path | None = opt(None, "run directory (checkpoints, TensorBoard, config, metrics)")
    resume: Path | None = opt(None, "continue the run in RUN_DIR from its last.pt (configs are read from the run)",
                              metavar="RUN_DIR")
    # overrides of the preset (None = the preset's value)
    epochs: int | None = opt(None, "training epochs")
    size: int | None = opt(None, "input image size in pixels")
    batch_size: int | None = opt(None, "paired rows per batch, per process")
    lr: float | None = opt(None, "heads' learning rate (backbone: lr x backbone_lr_mult)")
    backbone: str | None = opt(None, "backbone", choices=("resnet18", "resnet34", "resnet50"))
    pretrained: Path | None = opt(None, "local ImageNet weights (torchvision ResNet state dict .pth or .safetensors)",
                                  metavar="FILE")
    seed: int | None = opt(None, "random seed (CPU runs are repeatable)")
    drones_per_location: int | None = opt(None, "paired rows per location per epoch")
    amp: bool | None = opt(None, "mixed precision on CUDA (never used on CPU)")
    lr_steps: tuple[int, ...] | None = opt(None, "epochs after which the lr is multiplied by 0.1 (paper: 80); "
                                                 "'' = never", metavar="E1,E2")
    ring_pooling: str | None = opt(None, "ring pooling: lpn = ring sum / enclosing square area, as LPN's code (the "
                                         "paper's); mean = true per-ring mean", choices=("lpn", "mean"))
    selection: str | None = opt(None, "best.pt: last = the last epoch (as LPN); val = best drone->satellite R@1 on "
                                      "--val-locations training locations held out from training (never the test "
                                      "split)", choices=("last", "val"))
    val_locations: int | None = opt(None, "training locations held out with --selection val", metavar="N")
    # the run
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    workers: int | None = opt(None, "DataLoader worker processes")
    eval_every: int | None = opt(None, "evaluate on DIR/test every N epochs (and at the end), for the log only (never "
                                       "selects best.pt); also the validation period with --selection val",
                                 metavar="N")
    progress: bool = opt(True, "progress bars (--no-progress for logs and batch jobs)")

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TrainCliOptions)


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    out = {}
    for flag, key in names.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = str(Path(value).resolve()) if key == "pretrained" else \
                list(value) if key == "lr_step_epochs" else value
    return out


def _resumed_configs(args: argparse.Namespace):
    from skyloc.training.config import ModelConfig, TrainConfig

    run = Path(args.resume)
    fixed = _overrides(args, _FIXED)
    if fixed or args.out is not None:
        flags = ", ".join("--" + f.replace("_", "-") for f in _FIXED if getattr(args, f) is not None)
        raise SkylocError(f"--resume {run} continues the run with its own settings; {flags or '--out'} cannot be "
                          "given (only --epochs, --workers, --eval-every, --data, --device)")
    cfg_file = run / "config.json"
    if cfg_file.is_file():
        saved = json.loads(cfg_file.read_text())
        model_d, train_d, data = saved["model"], saved["train"], saved.get("data_dir")
    elif (run / "last.pt").is_file():
        from skyloc.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(run / "last.pt")
        model_d, train_d, data = ckpt["model_config"], ckpt["train_config"], ckpt.get("data_dir")
    else:
        raise SkylocError(f"{run} has no config.json or last.pt: it is not a `skyloc train` run directory "
                          "(start one with --data DIR --preset NAME --out RUN_DIR)")
    train_d = {**train_d, **_overrides(args, _RESUMABLE)}
    data_dir = args.data or data
    if data_dir is None:
        raise SkylocError(f"{run} does not record its dataset; pass --data DIR")
    return Path(data_dir), run, ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import options_from_args
    from skyloc.training.stop import TrainingStopped
    from skyloc.training.train import train

    args = options_from_args(TrainCliOptions, args, section="train")

    if args.resume is not None:
        data_dir, out_dir, model_cfg, train_cfg = _resumed_configs(args)
    else:
        if args.data is None or args.out is None:
            raise SkylocError("give --data DIR and --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        model_cfg, train_cfg = preset(args.preset, **_overrides(args, _FIXED), **_overrides(args, _RESUMABLE))
        data_dir, out_dir = Path(args.data), Path(args.out)
    # Numbers were validated (finite, in range) by the config dataclasses themselves.
    try:
        best = train(data_dir, out_dir, model_cfg, train_cfg, resume=args.resume is not None,
                     progress=args.progress, device=args.device)
    except TrainingStopped as exc:  # a termination signal: exit 128 + its number (training/stop.py)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"skyloc train: {exc}", file=sys.stderr)
        return exc.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}\nlast checkpoint: {best.parent / 'last.pt'}")
    return 0
