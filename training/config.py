"""Model and training configs as dataclasses; presets by name.

A checkpoint stores `ModelConfig` and `TrainConfig` as plain dicts, so eval and export need no
repeated flags. Every Table-3 ablation of the paper is a switch of `ModelConfig`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from skyloc.core.errors import SkylocError

BACKBONES = ("resnet18", "resnet34", "resnet50")
RING_POOLING = ("lpn", "mean")  # see training.blocks
SELECTIONS = ("last", "val")  # how best.pt is chosen (see TrainConfig.selection)
# Checkpoints written before `ring_pooling` existed were trained with the true per-ring mean.
LEGACY_RING_POOLING = "mean"


def _check_number(name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
                  integer: bool = False) -> None:
    """Refuse non-numbers, NaN/inf and values outside [lo, hi] (or (lo, hi] with lo_open)."""
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise SkylocError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or value < lo or (lo_open and value == lo) or value > hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo:g}"
        raise SkylocError(f"{name} must be a finite number {rng}, got {value!r}")


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    num_classes: int = 701  # University-1652 train locations; set from the data at train time
    image_size: int = 256
    num_rings: int = 4  # square rings of the local branch (LPN "block")
    multiscale: bool = True  # + two whole centre squares (rings 1-2, rings 1-3): N = 6 blocks
    global_branch: bool = True  # max-pool(layer3) ++ max-pool(layer4) -> its own head
    block_attention: bool = True  # X = softmax(Z over blocks) * Z
    kl_loss: bool = True  # mutual learning between paired drone / satellite logits
    reweight: bool = True  # inference weights: global 1.5, parts 1.0 (paper 3.2)
    global_weight: float = 1.5
    bottleneck: int = 512
    dropout: float = 0.75
    pretrained: str = ""  # local ImageNet weights file (torchvision state dict or safetensors)
    # "lpn": ring sum / enclosing-square area, as LPN's code (the paper's); "mean": true ring mean.
    # A config dict without this key (an old checkpoint) means "mean": see from_dict.
    ring_pooling: str = "lpn"

    def __post_init__(self) -> None:
        if self.ring_pooling not in RING_POOLING:
            raise SkylocError(f"ring_pooling {self.ring_pooling!r} is not one of {RING_POOLING}")
        _check_number("image_size", self.image_size, 16, integer=True)
        _check_number("num_classes", self.num_classes, 1, integer=True)
        _check_number("bottleneck", self.bottleneck, 1, integer=True)
        _check_number("dropout", self.dropout, 0.0, 0.99)
        _check_number("global_weight", self.global_weight, 0.0, lo_open=True)
        if self.backbone not in BACKBONES:
            raise SkylocError(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.num_rings < 1:
            raise SkylocError("num_rings must be >= 1")
        if self.multiscale and self.num_rings < 3:
            raise SkylocError("multiscale blocks (centre squares of rings 1-2 and 1-3) need num_rings >= 3")

    @property
    def num_blocks(self) -> int:
        return self.num_rings + (2 if self.multiscale else 0)

    @property
    def num_heads(self) -> int:
        return self.num_blocks + (1 if self.global_branch else 0)

    def head_weights(self) -> list[float]:
        """Inference weight of each head when reweighting is on (parts 1.0, then the global
        head's `global_weight`). Whether to apply them is the caller's switch (cfg.reweight, or
        an evaluation override), so a model trained without it can still be evaluated with it."""
        w = [1.0] * self.num_blocks
        if self.global_branch:
            w.append(self.global_weight)
        return w

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """From a saved dict; one without `ring_pooling` predates it and was trained with "mean"."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"ring_pooling": LEGACY_RING_POOLING, **{k: v for k, v in d.items() if k in known}})


@dataclass
class TrainConfig:
    epochs: int = 140
    batch_size: int = 8
    lr: float = 1e-3  # heads; backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_step_epochs: list[int] = field(default_factory=lambda: [80])
    lr_gamma: float = 0.1
    pad: int = 10
    sat_rotation: float = 90.0  # RandomAffine degrees for satellite images (LPN)
    drones_per_location: int = 1  # paired rows per location per epoch
    workers: int = 2
    amp: bool = True  # only on CUDA
    seed: int = 0
    eval_every: int = 0  # evaluate on DIR/test every N epochs: logged only, never used to pick best.pt
    # best.pt: "last" = the last epoch (as LPN: no model selection); "val" = the epoch with the best
    # drone->satellite R@1 on `val_locations` training locations held out from training.
    selection: str = "last"
    val_locations: int = 0

    def __post_init__(self) -> None:
        _check_number("epochs", self.epochs, 1, integer=True)
        _check_number("batch_size", self.batch_size, 1, integer=True)
        _check_number("lr", self.lr, 0.0, 10.0)  # 0 freezes the weights (used to check loading)
        _check_number("backbone_lr_mult", self.backbone_lr_mult, 0.0, 100.0)
        _check_number("momentum", self.momentum, 0.0, 0.999)
        _check_number("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_number("lr_gamma", self.lr_gamma, 0.0, 1.0, lo_open=True)
        _check_number("pad", self.pad, 0, 4096, integer=True)
        _check_number("sat_rotation", self.sat_rotation, 0.0, 180.0)
        _check_number("drones_per_location", self.drones_per_location, 1, integer=True)
        _check_number("workers", self.workers, 0, integer=True)
        _check_number("seed", self.seed, 0, 2**63 - 1, integer=True)
        _check_number("eval_every", self.eval_every, 0, integer=True)
        _check_number("val_locations", self.val_locations, 0, integer=True)
        for e in self.lr_step_epochs:
            _check_number("lr_step_epochs", e, 1, integer=True)
        if self.selection not in SELECTIONS:
            raise SkylocError(f"selection {self.selection!r} is not one of {SELECTIONS}")
        if self.selection == "val" and self.val_locations < 2:
            raise SkylocError("selection 'val' needs val_locations >= 2 training locations held out for validation")
        if self.selection == "last" and self.val_locations:
            raise SkylocError("val_locations is only used with selection 'val'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _ablation(**switches: Any) -> dict[str, Any]:
    return switches


# Paper Table 3, cumulative: LPN -> +multiscale -> +global -> +block attention -> +KL -> +reweights.
_TABLE3 = {
    "lpn": _ablation(multiscale=False, global_branch=False, block_attention=False, kl_loss=False, reweight=False),
    "lpn+ms": _ablation(multiscale=True, global_branch=False, block_attention=False, kl_loss=False, reweight=False),
    "lpn+ms+global": _ablation(multiscale=True, global_branch=True, block_attention=False, kl_loss=False, reweight=False),
    "lpn+ms+global+ba": _ablation(multiscale=True, global_branch=True, block_attention=True, kl_loss=False, reweight=False),
    "lpn+ms+global+ba+kl": _ablation(multiscale=True, global_branch=True, block_attention=True, kl_loss=True, reweight=False),
    "msba": _ablation(multiscale=True, global_branch=True, block_attention=True, kl_loss=True, reweight=True),
}
ABLATION_ORDER = list(_TABLE3)

PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    name: (dict(backbone="resnet50", image_size=256, **sw), {}) for name, sw in _TABLE3.items()
}
# Full MSBA at the paper's 384 px (Table 2, s384).
PRESETS["msba-384"] = (dict(backbone="resnet50", image_size=384, **_TABLE3["msba"]), {})
# Small model for laptops and the demo: still the full method.
# Its lr decays at 60 % of its epochs, as the paper's 80 of 140.
PRESETS["small"] = (dict(backbone="resnet18", image_size=128, **_TABLE3["msba"]),
                    dict(epochs=20, batch_size=16, lr=1e-2, lr_step_epochs=[12]))
# Tests and CPU smoke runs.
PRESETS["tiny"] = (
    dict(backbone="resnet18", image_size=64, dropout=0.5, **_TABLE3["msba"]),
    dict(epochs=2, batch_size=8, lr=1e-3, backbone_lr_mult=0.1, lr_step_epochs=[], workers=0, sat_rotation=0.0),
)


def preset(name: str, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """Named preset, with `overrides` applied to whichever config owns each key."""
    if name not in PRESETS:
        raise SkylocError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    m, t = PRESETS[name]
    m, t = dict(m), dict(t)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for k, v in overrides.items():
        if v is None:
            continue
        if k in model_keys:
            m[k] = v
        elif k in train_keys:
            t[k] = v
        else:
            raise SkylocError(f"unknown config key {k!r}")
    return ModelConfig(**m), TrainConfig(**t)
