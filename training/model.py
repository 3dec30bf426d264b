"""The MSBA network (DESIGN.md section 2): shared ResNet backbone, square-ring + multiscale
local branch with block attention, max-pooled layer3 ++ layer4 global branch, one ClassBlock per
head. Drone and satellite views run through the same module."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from skyloc.core.errors import SkylocError
from skyloc.training.blocks import block_attention, pool_blocks
from skyloc.training.config import ModelConfig

_CHANNELS = {"resnet18": (256, 512), "resnet34": (256, 512), "resnet50": (1024, 2048)}


def _init_kaiming(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm1d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ClassBlock(nn.Module):
    """Linear -> BatchNorm1d -> Dropout -> Linear; no ReLU (as LPN). The BN output is the
    bottleneck feature used for retrieval."""

    def __init__(self, in_dim: int, num_classes: int, bottleneck: int = 512, dropout: float = 0.75):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(in_dim, bottleneck), nn.BatchNorm1d(bottleneck))
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(bottleneck, num_classes)
        self.bottleneck.apply(_init_kaiming)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bottleneck(x)))


class Backbone(nn.Module):
    """torchvision ResNet without avgpool/fc; layer4's first block has stride 1 so layer3 and
    layer4 maps have the same size (16x16 at 256 px)."""

    def __init__(self, name: str):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        first = net.layer4[0]
        # BasicBlock strides in conv1, Bottleneck in conv2; the downsample conv strides too.
        for conv in (first.conv1, getattr(first, "conv2", None), first.downsample[0]):
            if conv is not None and conv.stride != (1, 1):
                conv.stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = _CHANNELS[name]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        f3 = self.layer3(x)
        return f3, self.layer4(f3)

    def load_imagenet(self, path: str | Path) -> None:
        """Load a torchvision ResNet state dict (.pth/.pt, or .safetensors) from a local file."""
        state = _read_state_dict(Path(path))
        rename = {"conv1.": "stem.0.", "bn1.": "stem.1."}
        mapped = {}
        for k, v in state.items():
            if k.startswith("fc."):
                continue
            for old, new in rename.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            mapped[k] = v
        own = self.state_dict()
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        bad_shape = [k for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad_shape:
            detail = (missing[:3] and f"missing {missing[:3]}") or (unexpected[:3] and f"unexpected {unexpected[:3]}") \
                or f"shape mismatch at {bad_shape[:3]}"
            raise SkylocError(
                f"{path} is not a torchvision {type(self).__name__} state dict for this backbone ({detail}); "
                "pass the ImageNet weights file of the same ResNet depth as --backbone"
            )
        self.load_state_dict(mapped)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SkylocError(f"pretrained weights file {path} not found: give a local torchvision ResNet "
                          "state dict (.pth) or .safetensors file; nothing is downloaded")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, not a tensor file, unsafe pickle...
        raise SkylocError(f"cannot read pretrained weights {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkylocError(f"{path} does not hold a state dict of tensors")
    return state


class MSBA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone)
        if cfg.pretrained:
            self.backbone.load_imagenet(cfg.pretrained)
        c3, c4 = self.backbone.channels
        heads = [ClassBlock(c4, cfg.num_classes, cfg.bottleneck, cfg.dropout) for _ in range(cfg.num_blocks)]
        if cfg.global_branch:
            heads.append(ClassBlock(c3 + c4, cfg.num_classes, cfg.bottleneck, cfg.dropout))
        self.heads = nn.ModuleList(heads)

    @property
    def global_index(self) -> int | None:
        return self.cfg.num_blocks if self.cfg.global_branch else None

    def _pooled(self, x: torch.Tensor, heads: list[int]) -> list[torch.Tensor]:
        """Pooled input vector of each requested head."""
        f3, f4 = self.backbone(x)
        out: dict[int, torch.Tensor] = {}
        if any(h < self.cfg.num_blocks for h in heads):
            z = pool_blocks(f4, self.cfg.num_rings, self.cfg.multiscale, self.cfg.ring_pooling)
            if self.cfg.block_attention:
                z = block_attention(z)
            for i in range(self.cfg.num_blocks):
                out[i] = z[:, :, i]
        if self.global_index is not None and self.global_index in heads:
            out[self.global_index] = torch.cat([torch.amax(f3, dim=(2, 3)), torch.amax(f4, dim=(2, 3))], dim=1)
        return [out[h] for h in heads]

    def _check_heads(self, heads: list[int] | None) -> list[int]:
        n = len(self.heads)
        heads = list(range(n)) if heads is None else list(heads)
        if not heads or any(not 0 <= h < n for h in heads):
            raise SkylocError(f"head indices {heads} out of range 0..{n - 1}")
        return heads

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Training: logits of every head, parts first, then global."""
        heads = list(range(len(self.heads)))
        return [self.heads[h](p) for h, p in zip(heads, self._pooled(x, heads))]

    def head_features(self, x: torch.Tensor, heads: list[int] | None = None) -> list[torch.Tensor]:
        """Raw 512-d bottleneck outputs (after BN) of the requested heads."""
        heads = self._check_heads(heads)
        return [self.heads[h].features(p) for h, p in zip(heads, self._pooled(x, heads))]

    def embed(self, x: torch.Tensor, flip: bool = False, parts: list[int] | None = None,
              reweight: bool | None = None) -> torch.Tensor:
        """Retrieval embedding: per-head L2, times the head weight, concatenated, L2 again.

        `flip` sums each head's raw output over the image and its mirror first (University-1652
        test protocol). `parts` picks heads (default all); `reweight` overrides cfg.reweight."""
        heads = self._check_heads(parts)
        feats = self.head_features(x, heads)
        if flip:
            feats = [a + b for a, b in zip(feats, self.head_features(torch.flip(x, dims=[3]), heads))]
        use_rw = self.cfg.reweight if reweight is None else reweight
        weights = self.cfg.head_weights() if use_rw else [1.0] * len(self.heads)
        parts_out = [F.normalize(f, dim=1) * weights[h] for h, f in zip(heads, feats)]
        return F.normalize(torch.cat(parts_out, dim=1), dim=1)


def build_model(cfg: ModelConfig) -> MSBA:
    return MSBA(cfg)
