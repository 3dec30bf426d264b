"""skyloc.runtime.localize.quality: blank / saturated / featureless frames are refused before the model,
real textured imagery passes, and a query embedding at the model's blank embedding is caught
(a real ONNX Runtime session of a hand-built model)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.quality import BlankEmbedding, QualityGate, QualityThresholds, check_quality

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
H, W = 480, 640


def _real_textured() -> list[tuple[str, np.ndarray]]:
    """Crops of the real Turku satellite map when present, else of a synthetic world."""
    folder = DATA / "turku-satellite"
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if pngs:
        img = cv2.imread(str(pngs[0]))
        h, w = img.shape[:2]
        return [(f"turku{k}", img[y:y + 400, x:x + 500]) for k, (y, x) in
                enumerate([(0, 0), (h - 400, w - 500), (h // 3, w // 3)])]
    from skyloc.synth.world import WorldConfig, generate_world

    world = cv2.cvtColor(generate_world(WorldConfig(size_m=600, mpp=1.0)), cv2.COLOR_RGB2BGR)
    return [(f"synth{k}", world[y:y + 300, x:x + 300]) for k, (y, x) in enumerate([(0, 0), (300, 300), (150, 0)])]


def _bad_frames() -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, W, dtype=np.float32), (H, 1)).astype(np.uint8)
    diag = (np.add.outer(np.arange(H), np.arange(W)) * (200.0 / (H + W)) + 20).astype(np.uint8)
    textured = _real_textured()[0][1]
    glare = cv2.resize(textured, (W, H)).copy()
    glare[:, : int(W * 0.6)] = 255  # 60 % blown out
    return {
        "black": (np.zeros((H, W, 3), np.uint8), "low-contrast"),
        "white": (np.full((H, W, 3), 255, np.uint8), "low-contrast"),
        "grey": (np.full((H, W, 3), 128, np.uint8), "low-contrast"),
        "grey+sensor noise": (np.clip(128 + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8), "low-contrast"),
        "horizontal gradient": (np.dstack([ramp] * 3), "low-texture"),
        # featureless with normal sensor noise: noise is not texture (the soak's reproducer)
        "gradient+sensor noise": (np.clip(np.linspace(40, 200, W)[None, :, None] + rng.normal(0, 2, (H, W, 3)),
                                          0, 255).astype(np.uint8), "low-texture"),
        "gradient+strong colour noise": (np.clip(np.linspace(40, 200, W)[None, :, None] + rng.normal(0, 8, (H, W, 1)),
                                                 0, 255).repeat(3, 2).astype(np.uint8), "low-texture"),
        "grey+strong colour noise": (np.clip(128 + rng.normal(0, 8, (H, W, 1)), 0, 255).repeat(3, 2).astype(np.uint8),
                                     "low-contrast"),
        "diagonal gradient": (np.dstack([diag, diag // 2, 255 - diag]), "low-texture"),
        "saturated": (glare, "saturated"),
        "float with NaN": (np.where(rng.random((H, W, 3)) < 0.01, np.nan, 0.5).astype(np.float32), "non-finite"),
        "empty": (np.zeros((0, 0, 3), np.uint8), "non-finite"),
    }


@pytest.mark.parametrize("name", list(_bad_frames()))
def test_bad_frames_are_refused_with_their_reason(name):
    image, reason = _bad_frames()[name]
    v = check_quality(image)
    assert not v.ok and v.reason == reason, (name, v)
    assert QualityGate()(image) == reason


def test_real_textured_frames_pass_at_any_resolution():
    for name, img in _real_textured():
        for scale in (1.0, 0.5, 2.0):
            im = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            v = check_quality(im)
            assert v.ok and v.reason is None, (name, scale, v.metrics)
        # a dim or hazy version of the same ground still passes
        hazy = (img.astype(np.float32) * 0.5 + 100).astype(np.uint8)
        assert check_quality(hazy).ok, (name, check_quality(hazy).metrics)
        assert check_quality(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)).ok  # 2-D grey works too


def test_metrics_match_a_naive_computation():
    img = _real_textured()[0][1]
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)
    f = 128 / min(g.shape)
    mid = cv2.resize(g.astype(np.float32), (round(g.shape[1] * f), round(g.shape[0] * f)),
                     interpolation=cv2.INTER_AREA)
    f = 32 / min(mid.shape)  # the coarse copy contrast and texture are measured on
    small = cv2.resize(mid, (round(mid.shape[1] * f), round(mid.shape[0] * f)),
                       interpolation=cv2.INTER_AREA).astype(np.float64)
    p = small
    # OpenCV's ksize=3 Laplacian is the 3x3 [[2,0,2],[0,-8,0],[2,0,2]] kernel: recompute it naively,
    # inside the border only (no padding needed there)
    lap3 = 2 * (p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:]) - 8 * p[1:-1, 1:-1]
    v = check_quality(img)
    assert v.metrics["texture"] == pytest.approx(lap3.var(), rel=1e-3)
    assert lap3.var() > 0
    lo, hi = np.sort(small.ravel())[[int(0.02 * (small.size - 1)), int(np.ceil(0.98 * (small.size - 1)))]]
    assert v.metrics["contrast"] == pytest.approx(hi - lo, abs=2.0)


def test_thresholds_are_validated():
    for bad in ({"min_contrast": float("nan")}, {"max_clipped": 1.5}, {"blank_cos": 2.0}, {"analysis_px": 4},
                {"clip_low": 200, "clip_high": 100}):
        with pytest.raises(SkylocError):
            QualityThresholds(**bad)
    # a stricter contrast threshold turns a pass into a refusal: the thresholds are used
    img = _real_textured()[0][1]
    assert check_quality(img, QualityThresholds(min_contrast=250.0)).reason == "low-contrast"
    assert check_quality(img, QualityThresholds(min_texture=1e9)).reason == "low-texture"


def _linear_model(path: Path, size: int = 16, dim: int = 24, seed: int = 0) -> tuple[Path, np.ndarray]:
    """uint8 NHWC -> float -> minus the frame's mean -> linear -> + b: every uniform frame embeds
    to exactly b (a model's "nothing here" vector); returns the path and b."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from skyloc.core.sidecar import InputContract, ModelSidecar, sha256_file, write_model_sidecar

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3 * size * size, dim)).astype(np.float32)
    bias = (rng.standard_normal(dim) * 20.0).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["f", "m"], ["c"]),
        helper.make_node("Flatten", ["c"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=dim, precision="fp32", opset=17,
                                           model_id="quality-test", onnx_sha256=sha256_file(path),
                                           input=InputContract(height=size, width=size), backbone="test"))
    return path, bias


def test_blank_embedding_catches_featureless_frames_through_a_real_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    from skyloc.runtime.backends.open import open_backend
    from skyloc.core.preprocess import to_model_input

    path, bias = _linear_model(tmp_path / "m.onnx")
    backend = open_backend(path, "onnxruntime")
    try:
        blank = BlankEmbedding(backend, threshold=0.95)
        assert blank.levels == (0, 128, 255)
        assert np.allclose(blank.vectors, bias / np.linalg.norm(bias), atol=1e-5)  # the model's own b
        contract = backend.sidecar.input

        def emb(img):
            return backend.embed(to_model_input([img], contract))[0]

        # a dim uniform frame that a lax pixel gate let through still lands on the blank embedding
        dim = np.full((H, W, 3), 40, np.uint8)
        assert blank.is_blank(emb(dim)) and blank.cosine(emb(dim)) == pytest.approx(1.0, abs=1e-5)
        for name, img in _real_textured():
            q = emb(img)
            want = float(q @ bias / np.linalg.norm(q) / np.linalg.norm(bias))  # direct cosine to b
            assert blank.cosine(q) == pytest.approx(want, abs=1e-5)
            assert not blank.is_blank(q) and want < 0.95, (name, want)
        assert blank.is_blank(np.full(24, np.nan, np.float32))  # never "not blank" by NaN
        assert blank.is_blank(np.zeros(24, np.float32))
        with pytest.raises(SkylocError):
            BlankEmbedding(backend, threshold=float("nan"))
    finally:
        backend.close()
