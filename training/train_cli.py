"""`skyloc train`: a thin layer over training.train.train (no torch import at module level).

    skyloc train --data DIR --preset NAME --out RUN_DIR [--epochs N --size PX --batch-size B ...]
    skyloc train --resume RUN_DIR [--epochs N] [--data DIR] [--device ...] [--workers N]
    torchrun --nproc_per_node 2 -m runtime.cli train ...   (one process per GPU; gloo on CPU)
"""
from __future__ import annotations

import argparse
import os
import json
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.training.config import PRESETS, preset

# CLI flag -> config key. The first group fixes the model / optimisation and cannot change on
# resume; the second may (e.g. extend a finished run with more --epochs).
_FIXED = {"size": "image_size", "batch_size": "batch_size", "lr": "lr", "backbone": "backbone",
          "pretrained": "pretrained", "seed": "seed", "amp": "amp", "drones_per_location": "drones_per_location",
          "ring_pooling": "ring_pooling", "selection": "selection", "val_locations": "val_locations",
          "lr_steps": "lr_step_epochs"}
_RESUMABLE = {"epochs": "epochs", "workers": "workers", "eval_every": "eval_every"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="dataset root in University-1652 layout (DIR/train/{satellite,drone}; "
                        "DIR/test is used by --eval-every)")
    parser.add_argument("--preset", default="msba", choices=list(PRESETS), metavar="NAME",
                        help=f"model + training preset: {', '.join(PRESETS)} (msba = the paper: resnet50, 256 px, "
                        "batch 8, SGD nesterov, lr 1e-3 heads / 1e-4 backbone, x0.1 at epoch 80 of 140; "
                        "tiny = resnet18 at 64 px for CPU tests)")
    parser.add_argument("--out", type=Path, help="run directory (checkpoints, TensorBoard, config, metrics)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last.pt (configs are read from the run)")
    g = parser.add_argument_group("overrides of the preset", "unset (None) = the preset's value")
    g.add_argument("--epochs", type=int)
    g.add_argument("--size", type=int, help="input image size in pixels")
    g.add_argument("--batch-size", type=int, help="paired rows per batch, per process")
    g.add_argument("--lr", type=float, help="heads' learning rate (backbone: lr x backbone_lr_mult)")
    g.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"])
    g.add_argument("--pretrained", type=Path, metavar="FILE",
                   help="local ImageNet weights (torchvision ResNet state dict .pth or .safetensors)")
    g.add_argument("--seed", type=int, help="random seed (CPU runs are repeatable)")
    g.add_argument("--drones-per-location", type=int, help="paired rows per location per epoch")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision on CUDA (never used on CPU)")
    g.add_argument("--lr-steps", type=_int_csv, metavar="E1,E2",
                   help="epochs after which the lr is multiplied by 0.1 (paper: 80); '' = never")
    g.add_argument("--ring-pooling", choices=["lpn", "mean"],
                   help="ring pooling: lpn = ring sum / enclosing square area, as LPN's code (the paper's); "
                        "mean = true per-ring mean")
    g.add_argument("--selection", choices=["last", "val"],
                   help="best.pt: last = the last epoch (as LPN); val = best drone->satellite R@1 on "
                        "--val-locations training locations held out from training. Never the test split")
    g.add_argument("--val-locations", type=int, metavar="N", help="training locations held out with --selection val")
    r = parser.add_argument_group("run")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--workers", type=int, help="DataLoader worker processes")
    r.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate on DIR/test every N epochs (and at the end), for the log only (never selects "
                        "best.pt); also the validation period with --selection val")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (logs / batch jobs)")


def _int_csv(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated epoch numbers, e.g. 80 or 40,70") from None


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    out = {}
    for flag, key in names.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = str(value.resolve()) if isinstance(value, Path) else value
    return out


def _resumed_configs(args: argparse.Namespace):
    from skyloc.training.config import ModelConfig, TrainConfig

    run = args.resume
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
    data_dir = args.data or (Path(data) if data else None)
    if data_dir is None:
        raise SkylocError(f"{run} does not record its dataset; pass --data DIR")
    return Path(data_dir), run, ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)


def main(args: argparse.Namespace) -> int:
    from skyloc.training.train import train

    if args.resume is not None:
        data_dir, out_dir, model_cfg, train_cfg = _resumed_configs(args)
    else:
        if args.data is None or args.out is None:
            raise SkylocError("give --data DIR and --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        model_cfg, train_cfg = preset(args.preset, **_overrides(args, _FIXED), **_overrides(args, _RESUMABLE))
        data_dir, out_dir = args.data, args.out
    # Numbers were validated (finite, in range) by the config dataclasses themselves.
    best = train(data_dir, out_dir, model_cfg, train_cfg, resume=args.resume is not None,
                 progress=not args.no_progress, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}\nlast checkpoint: {best.parent / 'last.pt'}")
    return 0
