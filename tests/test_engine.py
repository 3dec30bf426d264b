"""TensorRT engines: without TensorRT the CLI says so and exits 2 (build and --adopt), refuses the
U8S8 model before looking for TensorRT, and commits engine + sidecar as a pair; on a GPU box the
engines built by `build_engine` from the FP32, FP16 and S8S8 exports agree with ONNX Runtime
through the runtime's TensorRT backend (GPU tests skip here with the reason)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export_helpers import cosine, make_tiny_checkpoint, structured_images
from skyloc.cli import main as skyloc
from skyloc.core.sidecar import (
    EngineSidecar,
    ModelSidecar,
    model_sidecar_path,
    read_engine_sidecar,
    read_model_sidecar,
    sha256_file,
    write_model_sidecar,
)

from export_helpers import HAVE_TRT, gpu_skip_reason  # noqa: E402


def _tiny_onnx_with_sidecar(path: Path, precision: str = "fp32") -> Path:
    """A two-node uint8 -> float graph with a valid sidecar: enough for the CLI's checks."""
    g = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1, 2], keepdims=0)],
        "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=3, precision=precision, opset=17,
                                           model_id="0" * 16, onnx_sha256=sha256_file(path)))
    return path


def test_engine_cli_without_tensorrt(tmp_path: Path, capsys) -> None:
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here: the no-TensorRT message cannot be exercised")
    onnx_path = _tiny_onnx_with_sidecar(tmp_path / "m.onnx")
    rc = skyloc(["engine", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "TensorRT is not available" in err and "GPU" in err
    assert not (tmp_path / "m.engine").exists()


def test_engine_cli_checks_the_onnx_first(tmp_path: Path, capsys) -> None:
    onnx_path = _tiny_onnx_with_sidecar(tmp_path / "m.onnx")
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # no longer the exported file
    assert skyloc(["engine", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine")]) == 2
    assert "does not match its sidecar" in capsys.readouterr().err
    u8 = _tiny_onnx_with_sidecar(tmp_path / "m.int8-ort.onnx", precision="int8-ort")
    assert skyloc(["engine", "--onnx", str(u8), "--out", str(tmp_path / "u.engine")]) == 2
    assert "U8S8" in capsys.readouterr().err
    assert not (tmp_path / "u.engine").exists()
    (tmp_path / "u.engine").write_bytes(b"plan")
    assert skyloc(["engine", "--onnx", str(u8), "--adopt", str(tmp_path / "u.engine")]) == 2
    assert "U8S8" in capsys.readouterr().err
    assert not model_sidecar_path(tmp_path / "u.engine").exists()
    ok = _tiny_onnx_with_sidecar(tmp_path / "ok.onnx")
    assert skyloc(["engine", "--onnx", str(ok)]) == 2  # neither --out nor --adopt
    assert skyloc(["engine", "--onnx", str(ok), "--out", "a.engine", "--adopt", "b.engine"]) == 2
    assert "exactly one of --out" in capsys.readouterr().err


def test_adopt_without_tensorrt(tmp_path: Path, capsys) -> None:
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here: the no-TensorRT message cannot be exercised")
    ok = _tiny_onnx_with_sidecar(tmp_path / "m.onnx")
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"plan from trtexec")
    assert skyloc(["engine", "--onnx", str(ok), "--adopt", str(eng)]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err
    assert not model_sidecar_path(eng).exists()  # nothing claimed about an engine nobody checked
    assert skyloc(["engine", "--onnx", str(ok), "--adopt", str(tmp_path / "none.engine")]) == 2
    assert "not found" in capsys.readouterr().err


def test_engine_and_sidecar_are_committed_as_a_pair(tmp_path: Path) -> None:
    """The writer build_engine and adopt use (no TensorRT needed for the file handling)."""
    from skyloc.core.sidecar import write_engine_sidecar
    from skyloc.export.engine import commit_pair

    onnx_path = _tiny_onnx_with_sidecar(tmp_path / "m.onnx")
    side = read_model_sidecar(onnx_path)
    out = tmp_path / "m.engine"

    def sidecar(version: str) -> EngineSidecar:
        return EngineSidecar(model=side, tensorrt_version=version, gpu_name="Orin", compute_capability="8.7",
                             precision="fp32", onnx_sha256=side.onnx_sha256, max_batch=4, opt_batch=2)

    commit_pair(out, b"plan one", lambda p: write_engine_sidecar(p, sidecar("10.3.0")), None)
    assert out.read_bytes() == b"plan one" and read_engine_sidecar(out).tensorrt_version == "10.3.0"
    commit_pair(out, b"plan two", lambda p: write_engine_sidecar(p, sidecar("10.4.0")), None)
    assert out.read_bytes() == b"plan two" and read_engine_sidecar(out).tensorrt_version == "10.4.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.json", "m.onnx"]


# --- GPU ---------------------------------------------------------------------------------------

def _run(engine: Path, x: np.ndarray) -> np.ndarray:
    """The runtime's TensorRT backend: what the drone runs."""
    from skyloc.runtime.backends import open_backend

    with open_backend(engine, "tensorrt") as be:
        return be.embed(x)


@pytest.fixture(scope="module")
def gpu_models(tmp_path_factory) -> dict[str, Path]:
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from skyloc.calibration.quantize import quantize_pair
    from skyloc.export.fp16 import to_fp16
    from skyloc.export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("engine")
    ckpt = make_tiny_checkpoint(d / "tiny.pt")
    fp32 = export_onnx(ckpt, d / "model.onnx")
    fp16 = to_fp16(fp32, d / "model.fp16.onnx")
    q = quantize_pair(fp32, structured_images(16, 64, seed=5), d / "int8", progress=False)
    return {"fp32": fp32, "fp16": fp16, "int8-trt": q["int8-trt"], "dir": d}


@pytest.mark.gpu
@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.999), ("fp16", 0.995), ("int8-trt", 0.98)])
def test_engine_matches_onnxruntime(gpu_models, precision: str, min_cos: float) -> None:
    """build_engine (strongly typed, profile, timing cache, test-run before commit) -> the tensorrt
    backend, vs ONNX Runtime CPU on the same ONNX. Cosine bounds hold with TF32 (Ampere / Orin)
    and INT8 kernel choices; the engine lives beside the FP32 model as in the README."""
    import onnxruntime as ort

    from skyloc.export.engine import build_engine

    onnx_path = gpu_models[precision]
    d = gpu_models["dir"]
    cache = d / "timing.cache"
    engine = build_engine(onnx_path, d / f"{precision}.engine", max_batch=4, timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    side = read_engine_sidecar(engine)
    import tensorrt as trt

    from skyloc.runtime.backends.cuda_memory import open_cuda

    cuda = open_cuda(0)
    assert side.compute_capability == cuda.compute_capability
    cuda.release()
    assert side.tensorrt_version == trt.__version__
    assert side.precision == precision and side.max_batch == 4
    assert side.onnx_sha256 == sha256_file(onnx_path) == side.model.onnx_sha256
    assert side.model == read_model_sidecar(onnx_path)
    ref_sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 6):  # 6 > max_batch: two chunks
        x = structured_images(batch, 64, seed=40 + batch)
        got = _run(engine, x)
        ref = ref_sess.run(None, {"image": x})[0]
        assert got.shape == ref.shape
        assert cosine(got, ref).min() >= min_cos


@pytest.mark.gpu
def test_version_compatible_engine_cli_and_adopt(gpu_models) -> None:
    d = gpu_models["dir"]
    out = d / "vc.engine"
    assert skyloc(["engine", "--onnx", str(gpu_models["fp16"]), "--out", str(out), "--max-batch", "2",
                   "--version-compatible", "--workspace-mb", "512"]) == 0
    side = read_engine_sidecar(out)
    assert side.version_compatible and side.max_batch == 2 and side.precision == "fp16"
    x = structured_images(2, 64, seed=3)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(gpu_models["fp16"]), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert cosine(_run(out, x), ref).min() >= 0.995
    # adopt: drop the sidecar, as for an engine trtexec built, and let `skyloc engine --adopt` write it
    model_sidecar_path(out).unlink()
    assert skyloc(["engine", "--onnx", str(gpu_models["fp16"]), "--adopt", str(out), "--version-compatible"]) == 0
    adopted = read_engine_sidecar(out)
    assert (adopted.max_batch, adopted.opt_batch, adopted.min_batch) == (2, 1, 1)
    assert adopted.onnx_sha256 == side.onnx_sha256 and adopted.version_compatible
    assert cosine(_run(out, x), ref).min() >= 0.995
