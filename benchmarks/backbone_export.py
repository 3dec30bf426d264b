"""Export the bare backbone of a checkpoint (needs torch): the reference the MSBA heads' latency
overhead is measured against.

The graph is the checkpoint's own backbone (layer4 stride 1, as in MSBA) with the same edge
contract as `skyloc export` (uint8 RGB NHWC in, normalisation baked in) and the cheapest
possible retrieval head a plain ResNet would use: global average pool of layer4 + L2. Exported
with the same exporter path as the real models, so the two differ only by the heads.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import InputContract, ModelSidecar, sha256_file, write_model_sidecar

ROLE = "bare-backbone"


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike, size: int | None = None,
                    opset: int | None = None) -> Path:
    """checkpoint -> `out` (.onnx) + sidecar (variant "global", extra.benchmark_role =
    "bare-backbone"); `size` defaults to the checkpoint's image size. Returns `out`."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from skyloc.export.onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, _check_graph, _torch_export,
                                           check_finite_weights, edge_normalize)
    from skyloc.core.sidecar import IMAGENET_MEAN, IMAGENET_STD
    from skyloc.training.checkpoint import load_model

    out = Path(out)
    if out.suffix != ".onnx":
        raise SkylocError(f"backbone export target {out} must end in .onnx")
    model, cfg, ckpt = load_model(checkpoint)
    check_finite_weights(model, checkpoint)
    size = int(size or cfg.image_size)

    class BareBackbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = model.backbone
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0),
                                 persistent=False)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            _, f4 = self.backbone(edge_normalize(image, self.mean, self.inv_std))  # cast before permute
            return F.normalize(f4.mean(dim=(2, 3)), dim=1)

    wrapper = BareBackbone().eval()
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dim = int(wrapper(example).shape[1])
    opset = int(opset or DEFAULT_OPSET)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyloc-backbone-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        # The exporter path of `skyloc export` (torch.export + onnxscript optimizer: BN folded),
        # so the backbone graph is optimised exactly as the full model's is.
        _torch_export(wrapper, example, raw, opset)
        _check_graph(raw)
        os.replace(raw, out)
    model_id = str(ckpt.get("model_id", "unknown")) + "-backbone"
    write_model_sidecar(out, ModelSidecar(
        variant="global", embedding_dim=dim, precision="fp32", opset=opset, model_id=model_id,
        onnx_sha256=sha256_file(out), input=InputContract(name=INPUT_NAME, height=size, width=size),
        output_name=OUTPUT_NAME, backbone=cfg.backbone, checkpoint=Path(checkpoint).name,
        extra={"benchmark_role": ROLE, "head": "global average pool of layer4 + L2"},
    ))
    return out
