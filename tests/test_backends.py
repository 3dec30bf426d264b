"""Backends: ONNX Runtime output vs an independent numpy computation of the same graph, the
registry, sidecar checks, and the TensorRT engine checks (GPU runs are marked and skipped here)."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from skyloc.runtime.backends import BACKENDS, Backend, open_backend, register_backend
from skyloc.runtime.backends.tensorrt_backend import check_engine_sidecar
from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sidecar import EngineSidecar, read_model_sidecar, sha256_file, write_engine_sidecar
from runtime_core_helpers import make_tiny_model, tiny_reference

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model.onnx", size=32, dim=16)


def test_ort_matches_numpy_reference(tiny: Path) -> None:
    be = open_backend(tiny, "auto")
    assert be.name == "onnxruntime" and "CPUExecutionProvider" in be.providers
    assert "onnxruntime" in be.description
    assert be.embed(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 16)
    rng = np.random.default_rng(0)
    for b in (1, 3, 8):
        x = rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8)
        e = be.embed(x)
        assert e.shape == (b, 16) and e.dtype == np.float32
        np.testing.assert_allclose(e, tiny_reference(x), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_static_batch_model_is_padded(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "fixed.onnx", size=16, dim=8, batch=4)
    be = open_backend(path, "onnxruntime", {"providers": "cpu"})
    assert be.fixed_batch == 4
    x = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(be.embed(x), tiny_reference(x, dim=8), atol=1e-5)


def test_bad_inputs_and_files(tiny: Path, tmp_path: Path) -> None:
    be = open_backend(tiny, "onnxruntime")
    with pytest.raises(ValueError, match="does not match the model input"):
        be.embed(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        be.embed(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(SkylocError, match="unknown backend"):
        open_backend(tiny, "nope")
    with pytest.raises(SkylocError, match="not available"):
        open_backend(tiny, "onnxruntime", {"providers": "cuda"})
    with pytest.raises(SkylocError, match="does not know option"):
        open_backend(tiny, "onnxruntime", {"nonsense": 1})
    with pytest.raises(SkylocError, match="not found"):
        open_backend(tmp_path / "missing.onnx")
    # The ONNX changed after export: its sidecar hash no longer matches.
    changed = make_tiny_model(tmp_path / "m.onnx", seed=1)
    sc = read_model_sidecar(changed)
    make_tiny_model(tmp_path / "other.onnx", seed=2)
    (tmp_path / "m.onnx").write_bytes((tmp_path / "other.onnx").read_bytes())
    with pytest.raises(SkylocError, match="does not match its sidecar"):
        open_backend(changed)
    assert sc.onnx_sha256 != sha256_file(changed)
    (tmp_path / "m.json").unlink()
    with pytest.raises(SkylocError, match="sidecar"):
        open_backend(changed)


def test_registry_plugin(tiny: Path) -> None:
    @register_backend("numpy-test")
    class NumpyBackend(Backend):
        suffixes = (".onnx",)
        default_conf = {}

        def __init__(self, model_path, conf=None):
            super().__init__(model_path, conf)
            self.sidecar = read_model_sidecar(model_path)

        def _run(self, batch):
            return tiny_reference(batch) * 3.0  # scaled: embed() must renormalise

    try:
        be = open_backend(tiny, "numpy-test")
        x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        np.testing.assert_allclose(be.embed(x), tiny_reference(x), atol=1e-6)
        assert open_backend(tiny, "auto").name == "onnxruntime"  # lower priority plugin not chosen
    finally:
        BACKENDS.pop("numpy-test", None)


def _engine_sidecar(onnx: Path, **kw) -> EngineSidecar:
    sc = read_model_sidecar(onnx)
    base = dict(model=sc, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                precision="fp16", onnx_sha256=sc.onnx_sha256, max_batch=8)
    return EngineSidecar(**{**base, **kw})


def test_engine_sidecar_checks(tiny: Path, tmp_path: Path) -> None:
    es = _engine_sidecar(tiny)
    check_engine_sidecar(es, "10.3.0", "8.7", tiny)  # matching: no error
    with pytest.raises(SkylocError, match="TensorRT 10.3.0 but this machine has TensorRT 10.4.0.*skyloc engine"):
        check_engine_sidecar(es, "10.4.0", "8.7")
    with pytest.raises(SkylocError, match="compute capability 8.7.*8.6.*skyloc engine"):
        check_engine_sidecar(es, "10.3.0", "8.6")
    other = make_tiny_model(tmp_path / "other.onnx", seed=5)
    with pytest.raises(SkylocError, match="different ONNX.*skyloc engine"):
        check_engine_sidecar(es, "10.3.0", "8.7", other)
    vc = dataclasses.replace(es, version_compatible=True)
    check_engine_sidecar(vc, "10.8.1", "8.7")  # later 10.x runs a version-compatible engine
    with pytest.raises(SkylocError):
        check_engine_sidecar(vc, "11.0.0", "8.7")
    with pytest.raises(SkylocError):
        check_engine_sidecar(vc, "10.2.0", "8.7")


@pytest.mark.skipif(HAVE_TRT, reason="checks the behaviour without TensorRT installed")
def test_engine_without_tensorrt(tiny: Path, tmp_path: Path) -> None:
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"not really an engine")
    write_engine_sidecar(eng, _engine_sidecar(tiny))
    with pytest.raises(SkylocError, match="not available"):
        open_backend(eng, "tensorrt")
    with pytest.raises(SkylocError, match="onnx"):
        open_backend(eng, "auto")  # no ONNX beside it to fall back to
    (tmp_path / "model.onnx").write_bytes(tiny.read_bytes())
    (tmp_path / "model.json").write_bytes(tiny.with_suffix(".json").read_bytes())
    be = open_backend(eng, "auto")  # falls back to the sibling ONNX with onnxruntime
    assert be.name == "onnxruntime" and be.model_path.name == "model.onnx"


def test_exported_msba_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("skyloc.export.onnx_export") is None:
        pytest.skip("export/onnx_export.py not found: the exporter is not written yet")
    import torch

    from skyloc.export.onnx_export import export_onnx
    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    torch.manual_seed(0)
    cfg, tcfg = preset("tiny", num_classes=5)
    model = build_model(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, cfg, tcfg)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    # Only the full variant: each export costs ~15 s on this machine (the exporter's own tests
    # cover the global one).
    onnx = export_onnx(ckpt, tmp_path / "full.onnx", variant="full")
    be = open_backend(onnx, "onnxruntime")
    assert be.sidecar.embedding_dim == 512 * cfg.num_heads
    got = be.embed(x)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.embed((t - mean) / std).numpy()
    cos = (got * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos


def _gpu_skip_reason() -> str | None:
    if not HAVE_TRT:
        return "needs the tensorrt and pycuda packages and an NVIDIA GPU (none here)"
    try:
        import pycuda.driver as cuda
        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:  # no driver
        return f"CUDA not usable: {exc}"
    return None


@pytest.mark.gpu
def test_tensorrt_engine_matches_reference(tiny: Path, tmp_path: Path) -> None:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import pycuda.driver as cuda
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(tiny.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 32, 32, 3), (4, 32, 32, 3), (8, 32, 32, 3))
    config.add_optimization_profile(profile)
    eng = tmp_path / "model.engine"
    eng.write_bytes(bytes(builder.build_serialized_network(network, config)))
    cuda.init()
    cc = "%d.%d" % cuda.Device(0).compute_capability()
    write_engine_sidecar(eng, _engine_sidecar(tiny, tensorrt_version=trt.__version__, compute_capability=cc,
                                              precision="fp32"))
    be = open_backend(eng, "auto", {"onnx": str(tiny)})
    assert be.name == "tensorrt" and be.max_batch == 8
    x = np.random.default_rng(4).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(be.embed(x), tiny_reference(x), atol=1e-4)
    be.close()
