"""Backends: ONNX Runtime output vs an independent numpy computation of the same graph, the
registry, sidecar checks, the ORT TensorRT EP options per artifact kind, engine <-> ONNX pairing
by sha256 (README layout), TensorRT version rules, `auto` fallback, and the TensorRT engine run
through the production build path (GPU: marked and skipped here with the reason)."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from skyloc.runtime.backends import BACKENDS, Backend, open_backend, register_backend
from skyloc.runtime.backends.onnxruntime_backend import TENSORRT_PRECISIONS, _wanted_providers, tensorrt_ep_options
from skyloc.runtime.backends.tensorrt_backend import (
    check_engine_sidecar,
    check_trt_version,
    find_source_onnx,
    runtime_accepts,
)
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import (
    EngineSidecar,
    read_engine_sidecar,
    read_model_sidecar,
    sha256_file,
    write_engine_sidecar,
    write_model_sidecar,
)
from runtime_core_helpers import make_tiny_model, tiny_reference

from export_helpers import HAVE_TRT, gpu_skip_reason  # noqa: E402


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
    with pytest.raises(SkylocError, match="built with TensorRT 10.3.0 does not run on this machine.s TensorRT 10.4.0.*skyloc engine"):
        check_engine_sidecar(es, "10.4.0", "8.7")
    with pytest.raises(SkylocError, match="compute capability 8.7.*8.6.*skyloc engine"):
        check_engine_sidecar(es, "10.3.0", "8.6")
    other = make_tiny_model(tmp_path / "other.onnx", seed=5)
    with pytest.raises(SkylocError, match="different ONNX.*skyloc engine"):
        check_engine_sidecar(es, "10.3.0", "8.7", other)
    vc = dataclasses.replace(es, version_compatible=True)
    check_engine_sidecar(vc, "10.8.1", "8.7")  # later 10.x runs a version-compatible engine
    check_engine_sidecar(vc, "11.4.0", "8.7")  # and so does TensorRT 11 (support matrix: 10 -> 11)
    with pytest.raises(SkylocError, match="version-compatible engine built with TensorRT 10.3.0"):
        check_engine_sidecar(vc, "10.2.0", "8.7")  # never an older runtime
    with pytest.raises(SkylocError, match="TensorRT 10.3.0 does not run on this machine's TensorRT 11.4.0"):
        check_engine_sidecar(es, "11.4.0", "8.7")  # a plain engine only on its own version


def test_tensorrt_version_rules() -> None:
    assert runtime_accepts("10.3.0", "10.3.0", False) and not runtime_accepts("10.3.0", "10.3.1", False)
    assert runtime_accepts("10.3.0", "10.13.2", True) and runtime_accepts("10.13.0", "11.4.0", True)
    assert not runtime_accepts("11.0.0", "10.13.0", True)  # newer engine, older runtime
    assert not runtime_accepts("11.4.0", "12.0.0", True)  # only the documented 10 -> 11 crossing
    assert not runtime_accepts("garbage", "10.3.0", True)
    check_trt_version("10.3.0")
    check_trt_version("11.4.0.106")
    for old in ("8.6.2", "8.5.2.2", "", "unknown"):
        with pytest.raises(SkylocError, match="TensorRT 10 or newer.*JetPack 6.1"):
            check_trt_version(old)


def _with_precision(src: Path, dst: Path, precision: str) -> Path:
    """A copy of the tiny model whose sidecar says `precision` (the TensorRT EP options depend on it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    sc = dataclasses.replace(read_model_sidecar(src), precision=precision, onnx_sha256=sha256_file(dst))
    write_model_sidecar(dst, sc)
    return dst


def test_tensorrt_ep_options_per_artifact(tiny: Path, tmp_path: Path) -> None:
    seen_caches = set()
    for precision in ("fp32", "fp16", "int8-trt"):
        path = _with_precision(tiny, tmp_path / precision / "model.onnx", precision)
        be = open_backend(path, "onnxruntime", {"providers": "cpu"})
        opts = dict(be.build_provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]))
        trt = opts["TensorrtExecutionProvider"]
        # strongly typed artifacts: no precision flags at all
        assert not {k for k in trt if k in ("trt_fp16_enable", "trt_int8_enable", "trt_bf16_enable")}
        assert trt["trt_profile_min_shapes"] == "image:1x32x32x3"
        assert trt["trt_profile_opt_shapes"] == "image:1x32x32x3"
        assert trt["trt_profile_max_shapes"] == "image:32x32x32x3"
        sha = sha256_file(path)
        assert Path(trt["trt_engine_cache_path"]) == path.parent / ".trt-cache" / sha[:16]
        assert trt["trt_engine_cache_enable"] is True
        seen_caches.add(trt["trt_engine_cache_path"])
        assert opts["CUDAExecutionProvider"] == {"device_id": 0}
    assert len(seen_caches) == 3
    # Same path, retrained weights: a new cache folder (ORT's own key would reuse the old engine).
    a = tmp_path / "reexport" / "model.onnx"
    a.parent.mkdir()
    make_tiny_model(a, size=32, dim=16, seed=1)
    first = tensorrt_ep_options(a, read_model_sidecar(a), cache_root=tmp_path / "c")
    make_tiny_model(a, size=32, dim=16, seed=2)
    second = tensorrt_ep_options(a, read_model_sidecar(a), cache_root=tmp_path / "c", max_batch=8, opt_batch=4)
    assert first["trt_engine_cache_path"] != second["trt_engine_cache_path"]
    assert Path(second["trt_engine_cache_path"]).parent == tmp_path / "c"
    assert second["trt_profile_opt_shapes"] == "image:4x32x32x3" and second["trt_profile_max_shapes"] == "image:8x32x32x3"
    with pytest.raises(SkylocError, match="opt batch"):
        tensorrt_ep_options(a, read_model_sidecar(a), max_batch=2, opt_batch=4)


def test_u8s8_is_never_given_to_the_tensorrt_ep(tiny: Path, tmp_path: Path) -> None:
    assert "int8-ort" not in TENSORRT_PRECISIONS
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _wanted_providers(None, avail, "int8-ort") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _wanted_providers(None, avail, "int8-trt") == avail
    with pytest.raises(SkylocError, match="U8S8.*int8-trt"):
        _wanted_providers("tensorrt,cpu", avail, "int8-ort")
    u8 = _with_precision(tiny, tmp_path / "model.int8-ort.onnx", "int8-ort")
    with pytest.raises(SkylocError, match="TensorRT provider takes only"):
        tensorrt_ep_options(u8, read_model_sidecar(u8))


def _readme_layout(tiny: Path, root: Path) -> tuple[Path, Path, Path]:
    """model.onnx (FP32) and model.engine side by side, the engine built from int8/model.int8-trt.onnx."""
    fp32 = root / "model.onnx"
    (root / "int8").mkdir(parents=True, exist_ok=True)
    make_tiny_model(fp32, size=32, dim=16, seed=3)  # other weights than the INT8 source
    int8 = _with_precision(tiny, root / "int8" / "model.int8-trt.onnx", "int8-trt")
    # a different model with the same precision beside it: must not be taken for the source
    make_tiny_model(root / "int8" / "other.onnx", size=32, dim=16, seed=9)
    eng = root / "model.engine"
    eng.write_bytes(b"serialized plan (not deserialized here)")
    write_engine_sidecar(eng, _engine_sidecar(int8, precision="int8-trt"))
    return fp32, int8, eng


def test_engine_pairing_by_sha256_in_the_readme_layout(tiny: Path, tmp_path: Path) -> None:
    fp32, int8, eng = _readme_layout(tiny, tmp_path)
    side = read_engine_sidecar(eng)
    assert side.onnx_sha256 == sha256_file(int8) != sha256_file(fp32)
    check_engine_sidecar(side, "10.3.0", "8.7")  # the sibling FP32 model.onnx plays no part
    check_engine_sidecar(side, "10.3.0", "8.7", int8)  # the source named explicitly: accepted
    with pytest.raises(SkylocError, match="different ONNX"):
        check_engine_sidecar(side, "10.3.0", "8.7", fp32)
    assert find_source_onnx(eng, side) == int8
    assert find_source_onnx(eng, side, hint=fp32) == int8
    # the source re-exported (different weights): no longer this engine's ONNX
    int8.write_bytes(fp32.read_bytes())
    assert find_source_onnx(eng, side) is None


@pytest.mark.skipif(HAVE_TRT, reason="checks the behaviour without TensorRT installed")
def test_auto_falls_back_to_the_source_onnx_without_tensorrt(tiny: Path, tmp_path: Path) -> None:
    _, int8, eng = _readme_layout(tiny, tmp_path)
    with pytest.raises(SkylocError, match="not available"):
        open_backend(eng, "tensorrt")
    be = open_backend(eng, "auto")
    assert be.name == "onnxruntime" and be.model_path == int8
    x = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(be.embed(x), tiny_reference(x), atol=1e-5)
    (tmp_path / "int8" / "model.int8-trt.onnx").unlink()
    with pytest.raises(SkylocError, match="no backend can run"):
        open_backend(eng, "auto")


def test_auto_falls_back_when_the_engine_backend_cannot_open(tiny: Path, tmp_path: Path) -> None:
    """TensorRT installed but no usable GPU: the engine backend raises while opening, and `auto`
    goes on to ONNX Runtime with the engine's source ONNX (a registered plugin stands in for
    the GPU-less TensorRT backend, through the same registry)."""
    _, int8, eng = _readme_layout(tiny, tmp_path)

    @register_backend("gpu-less-test")
    class GpuLess(Backend):
        priority = 1000
        suffixes = (".engine",)
        default_conf = {}

        def __init__(self, model_path, conf=None):
            super().__init__(model_path, conf)
            raise SkylocError("no usable NVIDIA GPU / CUDA driver here (cudaGetDeviceCount: no CUDA-capable device)")

        def _run(self, batch):
            raise AssertionError("never opened")

    try:
        be = open_backend(eng, "auto")
        assert be.name == "onnxruntime" and be.model_path == int8
        with pytest.raises(SkylocError, match="no usable NVIDIA GPU"):
            open_backend(eng, "gpu-less-test")  # named explicitly: no silent fallback
    finally:
        BACKENDS.pop("gpu-less-test", None)


def test_cuda_binding_without_a_usable_gpu() -> None:
    """The real CUDA binding (cuda-python comes with torch's CUDA wheels; pycuda elsewhere) on a
    machine whose GPU cannot be used: a SkylocError that says so, which `auto` falls back on."""
    from skyloc.runtime.backends.cuda_memory import available_bindings, open_cuda

    if not available_bindings():
        pytest.skip("neither cuda-python nor pycuda is installed here")
    try:
        cuda = open_cuda(0)
    except SkylocError as exc:
        assert "no usable NVIDIA GPU" in str(exc) and "onnxruntime" in str(exc)
    else:
        cuda.release()
        pytest.skip(f"a usable GPU is present ({cuda.device_name}): the no-GPU path cannot be exercised")
    with pytest.raises(SkylocError, match="not one of"):
        open_cuda(0, "cupy")


def test_warm_up(tiny: Path) -> None:
    be = open_backend(tiny, "onnxruntime", {"providers": "cpu"})
    be.warm_up((1, 3))
    with pytest.raises(ValueError, match="warm-up batch"):
        be.warm_up((0,))


@pytest.mark.skipif(HAVE_TRT, reason="checks the behaviour without TensorRT installed")
def test_engine_without_tensorrt(tiny: Path, tmp_path: Path) -> None:
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"not really an engine")
    write_engine_sidecar(eng, _engine_sidecar(tiny))
    with pytest.raises(SkylocError, match="not available"):
        open_backend(eng, "tensorrt")
    with pytest.raises(SkylocError, match="onnx"):
        open_backend(eng, "auto")  # no ONNX with the engine's sha256 to fall back to
    (tmp_path / "model.onnx").write_bytes(tiny.read_bytes())
    (tmp_path / "model.json").write_bytes(tiny.with_suffix(".json").read_bytes())
    be = open_backend(eng, "auto")  # falls back to the ONNX it was built from (matched by sha256)
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


@pytest.mark.gpu
def test_tensorrt_engine_matches_reference(tiny: Path, tmp_path: Path) -> None:
    """Production path: build_engine (strongly typed, batch profile, test-run before commit),
    then the tensorrt backend. Tolerances hold with TF32 (Ampere / Orin): cosine, not 1e-4."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from skyloc.export.engine import build_engine

    eng = build_engine(tiny, tmp_path / "model.engine", max_batch=8, opt_batch=4)
    side = read_engine_sidecar(eng)
    assert side.onnx_sha256 == sha256_file(tiny) and side.max_batch == 8 and side.opt_batch == 4
    be = open_backend(eng, "auto", {"onnx": str(tiny)})
    try:
        assert be.name == "tensorrt" and be.max_batch == 8
        be.warm_up((1, 8))
        x = np.random.default_rng(4).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)  # 8 + 3: two chunks
        got, ref = be.embed(x), tiny_reference(x)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() >= 0.999, cos
        np.testing.assert_allclose(got, ref, atol=5e-3)
    finally:
        be.close()
