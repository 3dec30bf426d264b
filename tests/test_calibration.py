"""Calibration: deterministic stratified selection + manifest, preprocessing per the contract,
one calibration -> U8S8 and S8S8 QDQ models close to FP32, the S8S8 model's Q/DQ placement and
TensorRT lint, and the accuracy report (cosine and retrieval vs FP32). The lint's rules on
hand-built graphs: test_trt_lint.py."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from skyloc.calibration.select import allocate, load_batch, select_images
from skyloc.calibration.trt_lint import errors, lint_model
from export_helpers import cosine, make_tiny_checkpoint, structured_image, structured_images
from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import InputContract, read_model_sidecar


def _write_images(folder: Path, n: int, seed: int, ext: str = ".png", size: tuple[int, int] = (80, 96)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = structured_image(rng, *size)
        cv2.imwrite(str(folder / f"{i:03d}{ext}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("calib")
    _write_images(d / "sat" / "a", 10, 1)
    _write_images(d / "sat" / "b", 2, 2)
    _write_images(d / "drone" / "flight1", 12, 3, ext=".jpg", size=(72, 128))
    _write_images(d / "heldout", 8, 4)
    # University-1652-layout held-out set: 3 locations, 2 drone queries each, 1 satellite each.
    for loc in ("0001", "0002", "0003"):
        _write_images(d / "u1652" / "test" / "query_drone" / loc, 2, int(loc) * 10, size=(64, 64))
        _write_images(d / "u1652" / "test" / "gallery_satellite" / loc, 1, int(loc) * 10 + 1, size=(64, 64))
    ckpt = make_tiny_checkpoint(d / "tiny.pt")
    from skyloc.export.onnx_export import export_onnx

    model = export_onnx(ckpt, d / "model.onnx")
    out = d / "out"
    from skyloc.calibration.quantize import calibrate

    paths = calibrate(model, [d / "sat", d / "drone"], out, method="minmax", num_images=16,
                      eval_data=d / "u1652", held_out=d / "heldout", progress=False)
    return {"dir": d, "model": model, **paths}


# --- selection -------------------------------------------------------------------------------

def test_allocate_hand_computed() -> None:
    assert allocate([10, 2, 12], 12) == [5, 2, 5]  # 4 each, then the 2 left over to groups 0 and 2
    assert allocate([10, 2], 6) == [4, 2]  # b gives back what it cannot use
    assert allocate([3, 3, 3, 3], 2) == [1, 0, 1, 0]  # remainder spread, not bunched at the start
    assert allocate([1, 1], 10) == [1, 1]
    assert sum(allocate([5] * 7, 20)) == 20


def test_selection_is_stratified_and_deterministic(setup) -> None:
    d = setup["dir"]
    sel = select_images([d / "sat", d / "drone"], 12)
    assert sel == select_images([d / "sat", d / "drone"], 12)
    by_group = {}
    for s in sel:
        by_group[(s.root.name, s.group)] = by_group.get((s.root.name, s.group), 0) + 1
    # 12 -> 6 satellite + 6 drone; satellite 6 -> folder b has only 2, so a gets 4.
    assert by_group == {("sat", "a"): 4, ("sat", "b"): 2, ("drone", "flight1"): 6}
    drone = [s.path.name for s in sel if s.root.name == "drone"]
    assert drone == ["001.jpg", "003.jpg", "005.jpg", "007.jpg", "009.jpg", "011.jpg"]  # evenly spaced
    with pytest.raises(SkylocError, match="not found"):
        select_images([d / "nope"], 4)


def test_manifest_lists_files_with_sha256(setup) -> None:
    m = json.loads(setup["manifest"].read_text())
    assert m["num_images"] == len(m["files"]) == 16
    for f in m["files"]:
        assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
    roots = {Path(f["root"]).name for f in m["files"]}
    assert roots == {"sat", "drone"}


def test_load_batch_crop_and_area_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)  # RGB, landscape
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    got = load_batch([p], InputContract(height=64, width=64))
    # Independent reference: centre 128x128 square, then 2x2 block means (area resize by 2).
    crop = img[:, 32:160].astype(np.float64)
    ref = crop.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert got.shape == (1, 64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got[0].astype(np.float64) - ref).max() <= 1.0


# --- quantized models --------------------------------------------------------------------------

def _consts(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    m = onnx.load(str(path))
    return m, {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def test_int8_models_close_to_fp32(setup) -> None:
    x = structured_images(12, 64, seed=99)  # not used for calibration
    sess = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])  # noqa: E731
    ref = sess(setup["model"]).run(None, {"image": x})[0]
    side32 = read_model_sidecar(setup["model"])
    for precision in ("int8-ort", "int8-trt"):
        path = setup[precision]
        side = read_model_sidecar(path)  # verifies the sha256 too
        assert side.precision == precision and side.model_id == side32.model_id and side.variant == "full"
        assert side.extra["calibration_method"] == "minmax" and side.extra["calibration_images"] == 16
        got = sess(path).run(None, {"image": x})[0]
        c = cosine(got, ref)
        assert c.mean() >= 0.98 and c.min() >= 0.95, (precision, c)
        m = onnx.load(str(path))
        assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8  # uint8 graph kept
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}


def test_u8s8_layout(setup) -> None:
    m, c = _consts(setup["int8-ort"])
    q_zp = [c[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert q_zp and all(z.dtype == np.uint8 for z in q_zp)  # asymmetric uint8 activations
    conv_w = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in c
              and c[n.input[0]].dtype == np.int8]
    assert conv_w and all(c[n.input[1]].size == c[n.input[0]].shape[0] for n in conv_w)  # per-channel


def test_s8s8_follows_tensorrt_rules(setup) -> None:
    path = setup["int8-trt"]
    assert lint_model(path) == []  # no error and no fusion warning
    m, c = _consts(path)
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for n in qdq:  # direct look, independent of the checker
        zp = c[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
        assert (c[n.input[1]] > 0).all()
        if n.op_type == "DequantizeLinear" and n.input[0] in c:
            w = c[n.input[0]]
            assert w.dtype == np.int8 and w.min() >= -127, n.name
    assert skyloc(["check", str(path)]) == 0
    assert skyloc(["check", str(setup["int8-ort"])]) == 1  # U8S8 is not for TensorRT
    rules = {f.rule for f in errors(lint_model(setup["int8-ort"]))}
    assert {"uint8", "int32-bias"} <= rules


def test_s8s8_qdq_placement_lets_tensorrt_fuse(setup) -> None:
    """Q/DQ on the inputs of every Conv, never between a Conv and its ReLU; each residual Add has
    one Conv-side input float (TensorRT fuses that Conv with the Add) and exactly one input through
    a Q/DQ pair (in downsampling blocks that is the 1x1 downsample Conv's output)."""
    m = onnx.load(str(setup["int8-trt"]))
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    adds = [n for n in m.graph.node if n.op_type == "Add" and any(
        producer.get(t) is not None and producer[t].op_type in ("Conv", "DequantizeLinear") for t in n.input)]
    assert convs and len(adds) >= 8  # resnet18: 8 residual blocks
    for c in convs:
        assert [producer[t].op_type for t in c.input[:2]] == ["DequantizeLinear", "DequantizeLinear"], c.name
        for q in (u for u in consumers.get(c.output[0], []) if u.op_type == "QuantizeLinear"):
            readers = [r for dq in consumers[q.output[0]] for r in consumers[dq.output[0]]]
            assert readers and all(r.op_type == "Add" for r in readers), (c.name, [r.op_type for r in readers])
    for a in adds:
        kinds = sorted(producer[t].op_type for t in a.input)
        assert kinds == ["Conv", "DequantizeLinear"], (a.name, kinds)
    relus = [n for n in m.graph.node if n.op_type == "Relu"]
    assert relus and all(producer[n.input[0]].op_type in ("Conv", "Add") for n in relus)


def test_both_models_come_from_one_calibration(setup) -> None:
    """Activation scales of both models follow from the single saved range file:
    U8S8 scale = (max(hi,0) - min(lo,0)) / 255, S8S8 scale = max|range| / 127."""
    from skyloc.calibration.quantize import HAS_RANGE_CACHE

    if not HAS_RANGE_CACHE:
        pytest.skip("this onnxruntime has no calibration cache: the two models are calibrated separately")
    ranges = json.loads(setup["ranges"].read_text())["data"]
    checked = 0
    for precision in ("int8-ort", "int8-trt"):
        m, c = _consts(setup[precision])
        for n in m.graph.node:
            if n.op_type != "QuantizeLinear" or n.input[0] not in ranges:
                continue
            lo = ranges[n.input[0]]["lowest"]["data"][0]
            hi = ranges[n.input[0]]["highest"]["data"][0]
            want = (max(hi, 0) - min(lo, 0)) / 255 if precision == "int8-ort" else max(abs(lo), abs(hi)) / 127
            assert float(c[n.input[1]]) == pytest.approx(want, rel=1e-5), n.name
            checked += 1
    assert checked >= 20


def test_other_methods(setup, tmp_path: Path) -> None:
    from skyloc.calibration.quantize import quantize_pair

    x = structured_images(8, 64, seed=3)
    paths = quantize_pair(setup["model"], x, tmp_path, method="percentile", progress=False)
    assert read_model_sidecar(paths["int8-trt"]).extra["calibration_method"] == "percentile"
    assert "Percentile" in json.loads(paths["ranges"].read_text())["calibration_method"]["value"]
    assert errors(lint_model(paths["int8-trt"])) == []
    with pytest.raises(SkylocError, match="method"):
        quantize_pair(setup["model"], x, tmp_path, method="kl")
    with pytest.raises(SkylocError, match="uint8"):
        quantize_pair(setup["model"], x.astype(np.float32), tmp_path)


# --- report ------------------------------------------------------------------------------------

def test_accuracy_report(setup) -> None:
    rep = json.loads(setup["report_json"].read_text())
    assert "held-out" in rep["cosine_vs_fp32"]["images"] and rep["cosine_vs_fp32"]["n"] == 8
    for precision in ("int8-ort", "int8-trt"):
        assert 0.95 <= rep["cosine_vs_fp32"][precision]["mean"] <= 1.0 + 1e-6
    md = setup["report_md"].read_text()
    assert "int8-ort" in md and "int8-trt" in md

    ret = rep["retrieval"]
    assert (ret["queries"], ret["gallery"]) == (6, 3)
    # Independent R@1 of the FP32 model: naive loop over the queries.
    d = setup["dir"] / "u1652" / "test"
    sess = ort.InferenceSession(str(setup["model"]), providers=["CPUExecutionProvider"])
    contract = read_model_sidecar(setup["model"]).input

    def feats(view: str) -> tuple[np.ndarray, list[str]]:
        paths = sorted(p for p in (d / view).rglob("*.png"))
        return sess.run(None, {"image": load_batch(paths, contract)})[0], [p.parent.name for p in paths]

    qf, ql = feats("query_drone")
    gf, gl = feats("gallery_satellite")
    hits = [gl[int(np.argmax(gf @ q))] == lab for q, lab in zip(qf, ql)]
    assert ret["metrics"]["fp32"]["R@1"] == pytest.approx(100.0 * np.mean(hits))
    for precision in ("int8-ort", "int8-trt"):
        assert 0.0 <= ret["metrics"][precision]["AP"] <= 100.0
        assert ret["delta_vs_fp32"][precision]["R@1"] == pytest.approx(
            ret["metrics"][precision]["R@1"] - ret["metrics"]["fp32"]["R@1"])


def test_calibrate_cli_errors(setup, capsys) -> None:
    assert skyloc(["calibrate", "--model", str(setup["model"])]) == 2
    assert "--images" in capsys.readouterr().err
    assert skyloc(["calibrate", "--model", str(setup["int8-trt"]), "--images", str(setup["dir"] / "heldout"),
                   "--out", str(setup["dir"] / "o2"), "--no-progress"]) == 2
    assert "FP32" in capsys.readouterr().err
