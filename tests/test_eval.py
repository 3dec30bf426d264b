"""`skyloc eval` end to end on a tiny University-1652 tree with a random-init `tiny` checkpoint,
checked against a naive metric reference recomputed from the saved features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from naive_retrieval import naive_metrics
from skyloc.cli import main as skyloc
from skyloc.training.checkpoint import load_model, save_checkpoint
from skyloc.training.config import preset
from skyloc.training.data import U1652Folder, eval_transform
from skyloc.training.evaluate import combine_heads, evaluate, extract_features, extract_head_features
from skyloc.training.model import build_model
from skyloc.training.visualize import BORDER, GREEN, RED, cell_box, pick_queries

DIRS = {"drone->satellite": ("query_drone", "gallery_satellite"), "satellite->drone": ("query_satellite", "gallery_drone")}
KEYS = ("R@1", "R@5", "R@10", "R@top1%", "AP")
TEST_LOCS = ["0101", "0102", "0103"]
DISTRACTORS = ["0950", "0951"]
DRONES = 3  # spiral thirds of one image each


def naive_top(qf_row, gf, n):
    s = [float(np.dot(qf_row, g) / np.linalg.norm(g)) for g in gf]
    return sorted(range(len(gf)), key=lambda j: -s[j])[:n]


def _img(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path, quality=90)


def make_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for view in ("drone", "satellite", "street", "google"):
        for loc in ("0001", "0002", "0003"):
            for i in range(1 if view == "satellite" else 2):
                _img(root / "train" / view / loc / f"image-{i + 1:02d}.jpg", rng)
    for loc in TEST_LOCS:
        for i in range(DRONES):
            _img(root / "test" / "query_drone" / loc / f"image-{i + 1:02d}.jpeg", rng)
            _img(root / "test" / "gallery_drone" / loc / f"image-{i + 1:02d}.png", rng)
        _img(root / "test" / "query_satellite" / loc / f"{loc}.jpg", rng)
    for loc in TEST_LOCS + DISTRACTORS:
        _img(root / "test" / "gallery_satellite" / loc / f"{loc}.png", rng)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Scoped to this module and restored after it: with the 2 cores shared by parallel test runs,
    tiny batches on 2 intra-op threads ran ~20x slower (thread oversubscription) than on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    data = make_tree(base / "u1652")
    torch.manual_seed(0)
    mcfg, tcfg = preset("tiny", num_classes=3)
    model = build_model(mcfg)
    # Random BN running stats so heads differ from each other more than at init.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = save_checkpoint(base / "tiny.pt", model, mcfg, tcfg)
    return base, data, ckpt


@pytest.fixture(scope="module")
def cli_run(setup):
    base, data, ckpt = setup
    out = base / "report.json"
    npz = base / "feats.npz"
    vis = base / "vis"
    rc = skyloc(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--json", str(out),
                 "--parts", "table7;0,6", "--shift", "0,10", "--groups", "--test-size", "64,48",
                 "--save-features", str(npz), "--visualize", str(vis), "--vis-queries", "3",
                 "--workers", "0", "--batch-size", "16", "--quiet"])
    assert rc == 0
    return json.loads(out.read_text()), npz, vis


def test_report_has_both_directions_and_model_id(setup, cli_run):
    _, _, ckpt = setup
    report, _, _ = cli_run
    ck = torch.load(ckpt, weights_only=True)
    assert report["model_id"] == ck["model_id"]
    assert report["options"]["image_size"] == 64 and report["options"]["flip"] is True
    for d in DIRS:
        res = report["results"][d]
        assert all(0.0 <= res[k] <= 100.0 for k in KEYS)
        assert res["R@1"] <= res["R@5"] <= res["R@10"]
    assert report["results"]["drone->satellite"]["num_queries"] == len(TEST_LOCS) * DRONES
    assert report["results"]["drone->satellite"]["num_gallery"] == len(TEST_LOCS) + len(DISTRACTORS)
    assert report["results"]["satellite->drone"]["num_gallery"] == len(TEST_LOCS) * DRONES


def test_saved_features_recompute_the_reported_metrics(cli_run):
    report, npz, _ = cli_run
    z = np.load(npz, allow_pickle=False)
    for d, (qv, gv) in DIRS.items():
        assert z[f"{qv}_labels"].dtype.kind == "U" and z[f"{qv}_paths"].dtype.kind == "U"
        assert z[f"{qv}_feats"].shape[1] == 7 * 512
        ref = naive_metrics(z[f"{qv}_feats"], list(z[f"{qv}_labels"]), z[f"{gv}_feats"], list(z[f"{gv}_labels"]))
        for k in KEYS:
            assert report["results"][d][k] == pytest.approx(ref[k], abs=1e-6), (d, k)
    assert sorted(set(z["gallery_satellite_labels"])) == TEST_LOCS + DISTRACTORS
    assert all(p.startswith("query_drone/") for p in z["query_drone_paths"])
    assert json.loads(str(z["meta"]))["model_id"] == report["model_id"]


def test_groups_rows_match_spiral_thirds(cli_run):
    report, npz, _ = cli_run
    z = np.load(npz, allow_pickle=False)
    rows = {r["name"]: r["drone->satellite"] for r in report["tables"]["groups"]}
    assert list(rows) == ["all", "short", "middle", "long"]
    # Reference split from the file names: of 3 spiral images, image-01 is long, 02 middle, 03 short.
    num = np.array([int(Path(p).stem.split("-")[1]) for p in z["query_drone_paths"]])
    expect = {"long": num == 1, "middle": num == 2, "short": num == 3}
    qf, ql = z["query_drone_feats"], z["query_drone_labels"]
    gf, gl = z["gallery_satellite_feats"], list(z["gallery_satellite_labels"])
    for name, mask in expect.items():
        ref = naive_metrics(qf[mask], list(ql[mask]), gf, gl)
        assert rows[name]["num_queries"] == int(mask.sum()) == len(TEST_LOCS)
        for k in KEYS:
            assert rows[name][k] == pytest.approx(ref[k], abs=1e-6), (name, k)
    assert rows["all"] == report["results"]["drone->satellite"]


def test_table_rows(cli_run):
    report, _, _ = cli_run
    t = report["tables"]
    assert [r["name"] for r in t["parts"]] == [f"P{i}" for i in range(1, 7)] + ["Global", "All", "All+RW", "P1+Global"]
    assert t["parts"][0]["parts"] == [0] and t["parts"][6]["parts"] == [6] and t["parts"][-1]["parts"] == [0, 6]
    assert [r["reweight"] for r in t["parts"][7:9]] == [False, True]
    main = report["results"]
    allrw = t["parts"][8]  # the tiny preset reweights, so All+RW is the main row
    for d in DIRS:
        assert allrw[d] == main[d]
    assert [r["shift_px"] for r in t["shift"]] == [0, 10]
    assert [r["image_size"] for r in t["size"]] == [64, 48]
    for d in DIRS:
        assert t["shift"][0][d] == main[d] and t["size"][0][d] == main[d]
        for r in t["parts"] + t["shift"] + t["size"]:
            assert all(0.0 <= r[d][k] <= 100.0 for k in KEYS)


def test_visualize_frames_follow_the_naive_ranking(cli_run):
    _, npz, vis = cli_run
    z = np.load(npz, allow_pickle=False)
    for d, (qv, gv) in DIRS.items():
        png = vis / (d.replace("->", "_to_") + "_top5.png")
        im = np.asarray(Image.open(png).convert("RGB"))
        ql, gl = z[f"{qv}_labels"], z[f"{gv}_labels"]
        for row, qi in enumerate(pick_queries(len(ql), 3)):
            top = naive_top(z[f"{qv}_feats"][qi], z[f"{gv}_feats"], 5)
            for col, j in enumerate(top, start=1):
                x0, y0, _, _ = cell_box(row, col)
                colour = tuple(int(c) for c in im[y0 + BORDER // 2, x0 + BORDER // 2])
                assert colour == (GREEN if gl[j] == ql[qi] else RED), (d, row, col)


def test_combined_heads_equal_model_embed(setup):
    _, data, ckpt = setup
    model, cfg, _ = load_model(ckpt)
    folder = U1652Folder(data / "test", "gallery_satellite", eval_transform(64))
    raw, labels, paths = extract_head_features(model, folder, batch_size=4, flip=True, progress=False)
    assert raw.shape == (5, 7, 512)
    for parts, rw in ((None, False), ([6], None), ([0, 6], True)):
        ref, ref_labels, _ = extract_features(model, folder, batch_size=4, flip=True, parts=parts, reweight=rw,
                                              progress=False)
        w = cfg.head_weights() if (cfg.reweight if rw is None else rw) else [1.0] * cfg.num_heads
        assert np.allclose(combine_heads(raw, w, parts), ref, atol=1e-5)
        assert ref_labels == labels


def test_evaluate_stage_global_only_no_flip_other_size(setup):
    # The stage function with non-default options, against model.embed + the naive reference.
    _, data, ckpt = setup
    model, _, _ = load_model(ckpt)
    res = evaluate(model, data, image_size=48, parts=[6], flip=False, batch_size=16, progress=False)
    assert set(res) == set(DIRS)
    for d, (qv, gv) in DIRS.items():
        q = extract_features(model, U1652Folder(data / "test", qv, eval_transform(48)), 16, flip=False, parts=[6],
                             progress=False)
        g = extract_features(model, U1652Folder(data / "test", gv, eval_transform(48)), 16, flip=False, parts=[6],
                             progress=False)
        assert q[0].shape[1] == 512
        ref = naive_metrics(q[0], q[1], g[0], g[1])
        for k in KEYS:
            assert res[d][k] == pytest.approx(ref[k], abs=1e-6), (d, k)


def test_unreadable_image_is_one_clean_error(setup, tmp_path, capsys):
    _, data, ckpt = setup
    root = make_tree(tmp_path / "u")
    bad = root / "test" / "query_drone" / "0101" / "image-00.png"  # the first image read
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    # One worker process: the error crosses the DataLoader boundary and must still be one line.
    rc = skyloc(["eval", "--data", str(root), "--checkpoint", str(ckpt), "--json", str(tmp_path / "r.json"),
                 "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_test_folder_and_bad_options(setup, tmp_path, capsys):
    _, _, ckpt = setup
    rc = skyloc(["eval", "--data", str(tmp_path), "--checkpoint", str(ckpt), "--json", str(tmp_path / "r.json"),
                 "--quiet", "--workers", "0"])
    assert rc == 2 and "University-1652 layout" in capsys.readouterr().err
    _, data, _ = setup
    rc = skyloc(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--json", str(tmp_path / "r.json"),
                 "--parts", "9", "--quiet", "--workers", "0"])
    assert rc == 2 and "out of range" in capsys.readouterr().err


def test_eval_path_equals_the_runtime_onnx_path(tmp_path):
    """One preprocessing: an image scored by `skyloc eval` (PIL-free decode, centre square,
    INTER_AREA, torch model) gives the embedding the runtime gets for it (its frame reader,
    runtime.preprocess.to_model_input, ONNX Runtime on the exported model)."""
    import cv2

    from export_helpers import make_tiny_checkpoint, structured_image
    from skyloc.export.onnx_export import export_onnx
    from skyloc.runtime.backends import open_backend
    from skyloc.core.preprocess import to_model_input
    from skyloc.runtime.sources.files import ImageFolderSource

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    onnx_path = export_onnx(ckpt, tmp_path / "model.onnx")
    model, cfg, _ = load_model(ckpt)
    folder_dir = tmp_path / "test" / "query_drone" / "0001"
    folder_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    # Landscape, portrait, exact size, and a large frame shrunk ~3x; JPEG and PNG.
    for i, (h, w, ext) in enumerate([(70, 90, ".jpg"), (90, 70, ".png"), (64, 64, ".png"), (150, 200, ".jpg")]):
        cv2.imwrite(str(folder_dir / f"image-{i + 1:02d}{ext}"), structured_image(rng, h, w)[:, :, ::-1])
    folder = U1652Folder(tmp_path / "test", "query_drone", eval_transform(cfg.image_size))
    eval_feats, _, paths = extract_features(model, folder, batch_size=4, flip=False, progress=False)

    be = open_backend(onnx_path, "onnxruntime")
    assert be.contract.resize == "center-crop-square+area" and be.contract.height == cfg.image_size
    frames = list(ImageFolderSource(folder_dir, fps=1.0))
    assert [f.meta["path"] for f in frames] == paths
    batch = to_model_input([f.image for f in frames], be.contract)  # BGR camera-style frames
    # The bytes both paths feed the network are identical, not merely close.
    prepare = folder.transform.transforms[0]
    from skyloc.core.preprocess import read_image

    eval_bytes = np.stack([prepare(read_image(p)) for p in paths])
    np.testing.assert_array_equal(eval_bytes, batch)
    ort_feats = be.embed(batch)
    assert eval_feats.shape == ort_feats.shape
    np.testing.assert_allclose(eval_feats, ort_feats, atol=2e-5)
    # Sanity of the comparison: the old eval path (PIL bicubic squash) fed different pixels.
    old = np.asarray(Image.open(paths[0]).convert("RGB").resize((cfg.image_size,) * 2, Image.Resampling.BICUBIC))
    assert np.abs(old.astype(int) - batch[0].astype(int)).mean() > 5


def test_size_is_a_deprecated_alias_of_test_size(setup, tmp_path, capsys):
    _, data, ckpt = setup
    rc = skyloc(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--json", str(tmp_path / "r.json"),
                 "--size", "8", "--quiet", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "deprecated" in err and "--test-size values must be >= 16" in err
    rc = skyloc(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--json", str(tmp_path / "r.json"),
                 "--test-size", "8", "--quiet", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "deprecated" not in err and "--test-size values must be >= 16" in err
