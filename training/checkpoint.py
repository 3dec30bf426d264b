"""Checkpoints: weights + model config + training config (+ optimizer state when training),
plain tensors and builtins only, so `torch.load(weights_only=True)` reads them. Written
atomically: a crash mid-write never replaces a good checkpoint. Each carries `checksum`, a
sha256 over its whole content (every tensor's dtype, shape and bytes, every builtin), checked on
load: torch's zip container has no checksum of its own, so a bit flipped on disk would otherwise
load, export and fly."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from skyloc.core.atomic import atomic_open
from skyloc.core.errors import SkylocError
from skyloc.training.config import LEGACY_RING_POOLING, ModelConfig, TrainConfig
from skyloc.training.model import MSBA, build_model

CHECKPOINT_FORMAT = "skyloc-checkpoint/1"


def model_id(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> str:
    """Fingerprint of the weights and the architecture; tile sets and engines carry it."""
    h = hashlib.sha256()
    arch = {k: v for k, v in cfg.to_dict().items() if k != "pretrained"}
    if arch.get("ring_pooling") == LEGACY_RING_POOLING:
        del arch["ring_pooling"]  # a checkpoint from before the switch keeps the id it was given
    h.update(json.dumps(arch, sort_keys=True).encode())
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def content_checksum(obj: Any) -> str:
    """sha256 over a checkpoint's content in a canonical order (dict keys sorted)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                if k != "checksum":
                    h.update(repr(k).encode())
                    walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, model_cfg: ModelConfig,
                    train_cfg: TrainConfig | None = None, **state: Any) -> Path:
    """Atomic write (temp file in the same folder, fsync, rename). `state` adds optimizer,
    scheduler, epoch, RNG state, metrics... (tensors and builtins only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": weights,
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict() if train_cfg else {},
        "model_id": model_id(weights, model_cfg),
        **state,
    }
    ckpt["checksum"] = content_checksum(ckpt)
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and (path / "last.pt").is_file():
        path = path / "last.pt"
    if not path.is_file():
        raise SkylocError(f"checkpoint {path} not found: pass a .pt file written by `skyloc train` "
                          "(RUN_DIR/best.pt or RUN_DIR/last.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SkylocError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                          "it may be truncated or not a skyloc checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SkylocError(f"{path} is not a skyloc checkpoint (format {CHECKPOINT_FORMAT})")
    lacking = [k for k in ("model", "model_config") if not isinstance(ckpt.get(k), dict)]
    if lacking:
        raise SkylocError(f"checkpoint {path} has the skyloc format tag but no {' / '.join(lacking)} (no weights "
                          f"or config): it is truncated or was not written by `skyloc train`")
    want = ckpt.get("checksum")
    if want is not None and content_checksum(ckpt) != want:
        raise SkylocError(f"checkpoint {path} is damaged: its content no longer matches the checksum written "
                          "with it (a changed byte on disk or in a copy); use another copy or retrain")
    return ckpt


def load_model(path: str | os.PathLike) -> tuple[MSBA, ModelConfig, dict[str, Any]]:
    """Model in eval mode, its config and the checkpoint dict. Pretrained-file paths are not
    re-read: the checkpoint already holds the trained weights."""
    ckpt = load_checkpoint(path)
    cfg = ModelConfig.from_dict({**ckpt["model_config"], "pretrained": ""})
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt
