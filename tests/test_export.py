"""Export: ONNX Runtime output equals the PyTorch embedding (full and global variants, dynamic
batch), the FP16 conversion stays close, sidecars round-trip and refuse a changed ONNX, every
artifact passes the TensorRT lint (uint8 only at the input: cast before the layout change), and
a checkpoint with non-finite weights is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export_helpers import cosine, make_tiny_checkpoint, normalise_reference, structured_images
from skyloc.cli import main as skyloc
from skyloc.calibration.trt_lint import lint_model
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import (
    EngineSidecar,
    ModelSidecar,
    read_engine_sidecar,
    read_model_sidecar,
    sha256_file,
    write_engine_sidecar,
)
from skyloc.training.checkpoint import load_model, model_id


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("export")
    ckpt = make_tiny_checkpoint(d / "tiny.pt")
    from skyloc.export.onnx_export import export_onnx

    full = export_onnx(ckpt, d / "full.onnx", variant="full")
    # The global variant goes through the CLI, which also covers `skyloc export onnx`.
    assert skyloc(["export", "onnx", "--checkpoint", str(ckpt), "--variant", "global",
                   "--out", str(d / "global.onnx")]) == 0
    return {"ckpt": ckpt, "full": full, "global": d / "global.onnx", "dir": d}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant", ["full", "global"])
def test_onnx_equals_pytorch_embedding(exported, variant: str) -> None:
    model, cfg, ckpt = load_model(exported["ckpt"])
    parts = None if variant == "full" else [model.global_index]
    sess = _session(exported[variant])
    for batch in (1, 3):  # dynamic batch axis
        x = structured_images(batch, cfg.image_size, seed=7 + batch)
        got = sess.run(None, {"image": x})[0]
        with torch.no_grad():
            ref = model.embed(normalise_reference(x), flip=False, parts=parts).numpy()
        assert got.shape == (batch, 512 * (cfg.num_heads if variant == "full" else 1))
        assert got.dtype == np.float32
        assert cosine(got, ref).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # final L2 in the graph


@pytest.mark.parametrize("variant", ["full", "global"])
def test_graph_contract_and_sidecar(exported, variant: str) -> None:
    path = exported[variant]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("image", "embedding")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]  # NHWC, batch symbolic
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops  # folded by the exporter's optimiser
    if variant == "global":  # the local branch (block pooling MatMul, attention Softmax) is gone
        assert not ops & {"MatMul", "Softmax"}

    # uint8 only as the network input (TensorRT's rule): what reads "image" is the Cast alone
    # (NVIDIA/TensorRT#3985: a Shape on it fails the build), and no node produces a uint8 tensor.
    readers = [n.op_type for n in proto.graph.node if "image" in n.input]
    assert readers == ["Cast"], readers
    inferred = onnx.shape_inference.infer_shapes(proto)
    assert not [v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    assert lint_model(path) == []

    side = read_model_sidecar(path)
    ckpt = torch.load(exported["ckpt"], weights_only=True)
    _, cfg, _ = load_model(exported["ckpt"])
    assert side.variant == variant and side.precision == "fp32" and side.opset >= 17
    assert side.model_id == ckpt["model_id"] == model_id(ckpt["model"], cfg)
    assert side.onnx_sha256 == sha256_file(path)
    assert side.embedding_dim == out.type.tensor_type.shape.dim[1].dim_value == (3584 if variant == "full" else 512)
    assert (side.input.layout, side.input.dtype, side.input.color, side.input.normalization) == \
        ("NHWC", "uint8", "RGB", "baked")
    assert (side.input.height, side.input.width) == (64, 64)
    assert side.backbone == "resnet18" and side.checkpoint == "tiny.pt"


def test_fp16_model(exported, tmp_path: Path) -> None:
    src = exported["full"]
    out = tmp_path / "full.fp16.onnx"
    assert skyloc(["export", "fp16", "--model", str(src), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # contract unchanged
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    types = {t.name: t.data_type for t in proto.graph.initializer}
    assert conv_w and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_w)
    side, side32 = read_model_sidecar(out), read_model_sidecar(src)
    assert side.precision == "fp16" and side.model_id == side32.model_id and side.onnx_sha256 == sha256_file(out)

    model, cfg, _ = load_model(exported["ckpt"])
    x = structured_images(3, cfg.image_size, seed=21)
    with torch.no_grad():
        ref = model.embed(normalise_reference(x)).numpy()
    got = _session(out).run(None, {"image": x})[0]
    assert got.dtype == np.float32
    assert cosine(got, ref).min() >= 0.999
    assert lint_model(out) == []  # the FP16 model is for TensorRT strongly typed builds


def test_sidecar_round_trip_and_sha_refusal(exported, tmp_path: Path) -> None:
    src = exported["full"]
    side = read_model_sidecar(src)
    again = ModelSidecar(**json.loads(src.with_suffix(".json").read_text()))
    assert again == side and again.to_dict() == side.to_dict()

    eng = tmp_path / "m.engine"
    es = EngineSidecar(model=side, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                       precision=side.precision, onnx_sha256=side.onnx_sha256, max_batch=8, opt_batch=4)
    write_engine_sidecar(eng, es)
    assert read_engine_sidecar(eng) == es

    copy = tmp_path / "model.onnx"
    proto = onnx.load(str(src))
    proto.doc_string += " (edited)"
    onnx.save(proto, str(copy))
    copy.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    with pytest.raises(SkylocError, match="does not match its sidecar"):
        read_model_sidecar(copy)
    from skyloc.export.fp16 import to_fp16

    with pytest.raises(SkylocError, match="does not match its sidecar"):
        to_fp16(copy, tmp_path / "x.onnx")


def test_export_refuses_bad_requests(tmp_path: Path) -> None:
    from skyloc.export.onnx_export import export_onnx

    no_global = make_tiny_checkpoint(tmp_path / "lpn.pt", bn_batches=0, global_branch=False)
    with pytest.raises(SkylocError, match="no global branch"):
        export_onnx(no_global, tmp_path / "g.onnx", variant="global")
    with pytest.raises(SkylocError, match=r"\.onnx"):
        export_onnx(no_global, tmp_path / "g.bin")
    with pytest.raises(SkylocError, match="opset"):
        export_onnx(no_global, tmp_path / "g.onnx", opset=13)
    with pytest.raises(SkylocError, match="not found"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "g.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_export_refuses_non_finite_weights(tmp_path: Path) -> None:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    cfg, tcfg = preset("tiny", num_classes=5)
    model = build_model(cfg).eval()
    name, param = next((n, p) for n, p in model.named_parameters() if p.ndim == 4)
    with torch.no_grad():
        param[0, 0, 0, 0] = float("nan")
    ckpt = save_checkpoint(tmp_path / "nan.pt", model, cfg, tcfg)
    (tmp_path / "out").mkdir()
    with pytest.raises(SkylocError, match=f"non-finite.*{name}"):
        export_onnx(ckpt, tmp_path / "out" / "m.onnx")
    assert not list((tmp_path / "out").iterdir())
