"""Model selection during training: the validation locations held out of the training split and the scores an epoch is judged by."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from skyloc.core.errors import SkylocError
from skyloc.training.config import ModelConfig, TrainConfig
from skyloc.training.model import MSBA


def validation_locations(data_dir: Path, cfg: TrainConfig) -> list[str]:
    """The training locations held out for model selection ("val"): `val_locations` of them,
    drawn with the run's seed; [] for selection "last"."""
    if cfg.selection != "val":
        return []
    import numpy as np

    from skyloc.training.data import U1652Folder, view_dir

    sat = view_dir(data_dir, "satellite")
    classes = U1652Folder(sat.parent, sat.name).classes
    if cfg.val_locations > len(classes) - 2:
        raise SkylocError(f"--val-locations {cfg.val_locations} leaves fewer than 2 of the {len(classes)} training "
                          f"locations in {sat} to train on: hold out fewer")
    pick = np.random.default_rng(cfg.seed).choice(len(classes), cfg.val_locations, replace=False)
    return [classes[i] for i in sorted(pick)]


def selection_note(cfg: TrainConfig) -> str:
    if cfg.selection == "val":
        return (f"best.pt = the epoch with the best drone->satellite R@1 on {cfg.val_locations} training locations "
                "held out from training (validation_locations); the test split is never used for selection")
    return "best.pt = the last epoch (no model selection, as LPN); the test split is never used for selection"


def _validate(model: MSBA, data_dir: Path, locations: list[str], model_cfg: ModelConfig, progress: bool) -> dict[str, Any]:
    """Drone -> satellite on the held-out training locations (their drone images as queries,
    their satellite images as the gallery), University-1652 metrics with flip."""
    from skyloc.core import metrics
    from skyloc.training.data import U1652Folder, eval_transform, view_dir
    from skyloc.training.evaluate import extract_features

    tf = eval_transform(model_cfg.image_size)
    feats = {}
    for view in ("drone", "satellite"):
        d = view_dir(data_dir, view)
        folder = U1652Folder(d.parent, d.name, tf, locations=locations)
        feats[view] = extract_features(model, folder, progress=False)
    model.eval()
    res = metrics.evaluate_retrieval(feats["drone"][0], feats["drone"][1], feats["satellite"][0], feats["satellite"][1])
    return {k: v if v is None or isinstance(v, (int, str)) else float(v) for k, v in res.items()}


def _evaluate(model: MSBA, data_dir: Path, model_cfg: ModelConfig, progress: bool) -> dict[str, Any]:
    from skyloc.training.evaluate import (
        evaluate,  # written by the data/eval area; only needed when evaluating
    )

    model.eval()
    with torch.no_grad():
        res = evaluate(model, data_dir, image_size=model_cfg.image_size, progress=progress)
    # builtins only: the record goes to JSON and into the checkpoint (weights_only-loadable)
    return {direction: {k: v if v is None or isinstance(v, (int, str)) else float(v) for k, v in m.items()}
            for direction, m in res.items()}
