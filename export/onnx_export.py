"""Checkpoint -> ONNX with the edge input contract baked in (DESIGN.md section 4).

The graph takes uint8 RGB NHWC frames named "image" (B, H, W, 3) and returns the L2-normalised
retrieval embedding named "embedding" (B, D): cast, ImageNet normalisation and the NHWC -> NCHW
permute live in the graph, so the drone only crops, resizes and feeds bytes. The inference head
(per-head L2, head weights, concat, final L2) is `MSBA.embed` without flip; the global variant is
`embed(parts=[global_index])`, which never computes the local branch.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from skyloc.core.atomic import atomic_path
from skyloc.core.errors import SkylocError
from skyloc.core.metrics import cosine_rows
from skyloc.export.uint8_input import cast_only_uint8_inputs
from skyloc.core.sidecar import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputContract,
    ModelSidecar,
    sha256_file,
    write_model_sidecar,
)
from skyloc.training.checkpoint import load_model, model_id as compute_model_id
from skyloc.training.model import MSBA

DEFAULT_OPSET = 18
# torch.export's ONNX translator starts at opset 18; asking it for 17 silently yields 18 (its
# down-converter cannot move the Reduce* axes back to attributes), so 18 is the floor.
MIN_OPSET = 18
PARITY_MIN_COSINE = 0.9999
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


class EdgeEmbedder(nn.Module):
    """uint8 NHWC RGB -> retrieval embedding, i.e. the model as the edge sees it."""

    def __init__(self, model: MSBA, parts: list[int] | None = None):
        super().__init__()
        self.model = model
        self.parts = parts
        # (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std)): one Sub and one Mul.
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_inv_std", inv_std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.embed(edge_normalize(image, self.pixel_mean, self.pixel_inv_std),
                                flip=False, parts=self.parts)


def edge_normalize(image: torch.Tensor, mean255: torch.Tensor, inv_std255: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, as the exported graphs compute it.

    Cast first: TensorRT allows UINT8 only as a network input or output, so a uint8 Transpose
    (cheaper on bytes, but an intermediate uint8 tensor) makes every graph unparseable. The
    exporter's optimizer still moves shape reads onto the uint8 input; `_check_graph` moves
    them back (export.uint8_input)."""
    x = image.to(torch.float32).permute(0, 3, 1, 2)
    return (x - mean255) * inv_std255


def check_finite_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights or buffers hold NaN/Inf: it would export a graph whose
    embeddings are NaN, and the parity check compares NaN with NaN."""
    bad = [name for name, t in model.state_dict().items()
           if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]
    if bad:
        raise SkylocError(f"checkpoint {checkpoint} has non-finite values (NaN/Inf) in {len(bad)} tensor(s), "
                          f"e.g. {', '.join(bad[:3])}: training diverged; export an earlier checkpoint")


def heads_for_variant(model: MSBA, variant: str) -> list[int] | None:
    if variant == "full":
        return None
    if variant == "global":
        if model.global_index is None:
            raise SkylocError("the checkpoint's model has no global branch (global_branch=False); "
                              "export --variant full instead")
        return [model.global_index]
    raise SkylocError(f"variant {variant!r} is not one of: full, global")


def _example_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)


def _torch_export(wrapper: EdgeEmbedder, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.export-based exporter: it folds BatchNorm into the convs and Gemms and runs the
    onnxscript optimizer (constant folding, dead-code removal), giving a much cleaner graph than
    the TorchScript exporter (which leaves the block-mask construction as ScatterND chains)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=True, dynamic_shapes={"image": {0: batch}},
            optimize=True, external_data=False, verbose=False,
        )
    proto = program.model_proto
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _check_graph(path: Path) -> onnx.ModelProto:
    """Checker + strict shape inference; the inferred shapes are kept in the file (value_info),
    which ORT's quantizer and TensorRT's parser both use."""
    proto = onnx.load(str(path))
    cast_only_uint8_inputs(proto)  # the optimizer's Shape(image) -> Shape(Cast(image))
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    if inp.name != INPUT_NAME or out.name != OUTPUT_NAME:
        raise RuntimeError(f"exported graph has I/O {inp.name}/{out.name}, expected {INPUT_NAME}/{OUTPUT_NAME}")
    for v in (inp, out):
        d0 = v.type.tensor_type.shape.dim[0]
        if not d0.dim_param:
            raise RuntimeError(f"exported graph's {v.name} has a fixed batch dim {d0.dim_value}; expected dynamic")
    if inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise RuntimeError("exported graph input is not uint8")
    return proto


def _warn_trt_lint(proto: onnx.ModelProto, out: Path) -> None:
    """The export still serves ONNX Runtime when TensorRT could not parse it, so this warns;
    `skyloc check` and the tests treat the same findings as errors."""
    from skyloc.calibration.trt_lint import errors, lint_model

    problems = errors(lint_model(proto))
    if problems:
        logging.getLogger(__name__).warning(
            "%s will not build as a TensorRT engine (%d finding(s), e.g. %s); run `skyloc check %s`",
            out, len(problems), problems[0], out)


def _verify_parity(path: Path, wrapper: EdgeEmbedder, size: int) -> float:
    """ORT vs PyTorch on two batch sizes (exercises the dynamic batch axis)."""
    from skyloc.runtime.backends.onnxruntime_backend import cpu_session

    sess = cpu_session(path)
    worst = 1.0
    for batch in (1, 3):
        x = _example_images(batch, size, seed=batch)
        with torch.no_grad():
            ref = wrapper(x).numpy()
        got = sess.run(None, {INPUT_NAME: x.numpy()})[0]
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            raise SkylocError(f"the exported model {path} produces non-finite embeddings (NaN/Inf) on random "
                              "images: the checkpoint is unusable; export an earlier one")
        cos = float(cosine_rows(ref, got).min())
        worst = cos if not cos >= worst else worst  # a NaN cosine must win, never be skipped by min()
    if not worst >= PARITY_MIN_COSINE:
        raise SkylocError(f"ONNX Runtime output of {path} differs from PyTorch (min cosine {worst:.6f}); "
                          "the exporter mistranslated the model — try another --opset")
    return worst


def _atomic_save(proto: onnx.ModelProto, out: Path) -> None:
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, variant: str = "full",
                opset: int = DEFAULT_OPSET, precision: str = "fp32") -> Path:
    """Export a checkpoint to `out` (.onnx) and write its sidecar `out.json`.

    `precision` "fp16" exports FP32 to a temporary file first and converts it with
    `export.fp16.to_fp16`, so `out` is the FP16 model (same model_id). Returns the ONNX path."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise SkylocError(f"--out {out} must end in .onnx (the sidecar goes beside it as .json)")
    if opset < MIN_OPSET:
        raise SkylocError(f"opset {opset} is too old: use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    if precision not in ("fp32", "fp16"):
        raise SkylocError(f"precision {precision!r}: export writes fp32 or fp16; INT8 comes from `skyloc calibrate`")
    model, cfg, ckpt = load_model(checkpoint)
    check_finite_weights(model, checkpoint)
    parts = heads_for_variant(model, variant)
    wrapper = EdgeEmbedder(model, parts).eval()
    size = cfg.image_size
    example = _example_images(2, size)
    with torch.no_grad():
        dim = int(wrapper(example).shape[1])  # the sidecar's embedding size
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyloc-export-", dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(wrapper, example, raw, opset)
        proto = _check_graph(raw)
        _warn_trt_lint(proto, out)
        meta = {"skyloc.model_id": ckpt.get("model_id") or compute_model_id(ckpt["model"], cfg),
                "skyloc.variant": variant}
        onnx.helper.set_model_props(proto, meta)
        proto.doc_string = f"skyloc MSBA {cfg.backbone} {variant} embedding; uint8 RGB NHWC in, L2-normalised out"
        actual_opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if actual_opset != opset:
            raise SkylocError(f"the exporter wrote opset {actual_opset} instead of {opset}; use --opset {actual_opset}")
        fp32_path = Path(tmp) / "model.onnx"
        _atomic_save(proto, fp32_path)
        _verify_parity(fp32_path, wrapper, size)
        sidecar = ModelSidecar(
            variant=variant, embedding_dim=dim, precision="fp32", opset=actual_opset,
            model_id=meta["skyloc.model_id"], onnx_sha256=sha256_file(fp32_path),
            input=InputContract(name=INPUT_NAME, height=size, width=size),
            output_name=OUTPUT_NAME, backbone=cfg.backbone, checkpoint=Path(checkpoint).name,
            extra={"heads": parts if parts is not None else list(range(len(model.heads))),
                   "reweight": cfg.reweight, "exporter": f"torch.onnx (torch.export) {torch.__version__}"},
        )
        if precision == "fp32":
            os.replace(fp32_path, out)
            sidecar.onnx_sha256 = sha256_file(out)
            write_model_sidecar(out, sidecar)
            return out
        write_model_sidecar(fp32_path, sidecar)
        from skyloc.export.fp16 import to_fp16

        return to_fp16(fp32_path, out)
