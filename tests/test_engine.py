"""TensorRT engines: without TensorRT the CLI says so and exits 2; on a GPU box the engines built
from the FP32, FP16 and S8S8 exports agree with ONNX Runtime (GPU tests skip here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export_helpers import cosine, make_tiny_checkpoint, structured_images
from skyloc.cli import main as skyloc
from skyloc.runtime.sidecar import ModelSidecar, read_engine_sidecar, read_model_sidecar, sha256_file, write_model_sidecar

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _tiny_onnx_with_sidecar(path: Path) -> Path:
    """A two-node uint8 -> float graph with a valid sidecar: enough for the CLI's checks."""
    g = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1, 2], keepdims=0)],
        "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=3, precision="fp32", opset=17,
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


# --- GPU ---------------------------------------------------------------------------------------

def _gpu_skip_reason() -> str | None:
    if not HAVE_TRT:
        return "needs TensorRT (python package `tensorrt`) and an NVIDIA GPU; neither is on this machine"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT is installed but no CUDA GPU is visible"
    return None


def _run(engine: Path, x: np.ndarray) -> np.ndarray:
    """Prefer the runtime's TensorRT backend (what the drone runs); else TensorRT directly."""
    if importlib.util.find_spec("pycuda") is not None:
        from skyloc.runtime.backends import open_backend

        with open_backend(engine, "tensorrt") as be:
            return be.embed(x)
    from skyloc.export.engine import run_engine

    return run_engine(engine, x)


@pytest.fixture(scope="module")
def gpu_models(tmp_path_factory) -> dict[str, Path]:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from skyloc.calibration.quantize import quantize_pair
    from skyloc.export.fp16 import to_fp16
    from skyloc.export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("engine")
    ckpt = make_tiny_checkpoint(d / "tiny.pt")
    fp32 = export_onnx(ckpt, d / "model.onnx")
    fp16 = to_fp16(fp32, d / "model.fp16.onnx")
    q = quantize_pair(fp32, structured_images(16, 64, seed=5), d, progress=False)
    return {"fp32": fp32, "fp16": fp16, "int8-trt": q["int8-trt"], "dir": d}


@pytest.mark.gpu
@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.999), ("fp16", 0.999), ("int8-trt", 0.99)])
def test_engine_matches_onnxruntime(gpu_models, precision: str, min_cos: float) -> None:
    import onnxruntime as ort

    from skyloc.export.engine import build_engine

    onnx_path = gpu_models[precision]
    d = gpu_models["dir"]
    cache = d / "timing.cache"
    engine = build_engine(onnx_path, d / f"{precision}.engine", max_batch=4, timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    side = read_engine_sidecar(engine)
    import tensorrt as trt
    import torch

    assert side.tensorrt_version == trt.__version__
    assert side.compute_capability == "%d.%d" % torch.cuda.get_device_capability(0)
    assert side.precision == precision and side.max_batch == 4
    assert side.onnx_sha256 == sha256_file(onnx_path) == side.model.onnx_sha256
    assert side.model == read_model_sidecar(onnx_path)
    ref_sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = structured_images(batch, 64, seed=40 + batch)
        got = _run(engine, x)
        ref = ref_sess.run(None, {"image": x})[0]
        assert got.shape == ref.shape
        assert cosine(got, ref).min() >= min_cos


@pytest.mark.gpu
def test_version_compatible_engine_and_cli(gpu_models) -> None:
    d = gpu_models["dir"]
    out = d / "vc.engine"
    assert skyloc(["engine", "--onnx", str(gpu_models["fp16"]), "--out", str(out), "--max-batch", "2",
                   "--version-compatible", "--workspace-mb", "512"]) == 0
    side = read_engine_sidecar(out)
    assert side.version_compatible and side.max_batch == 2 and side.precision == "fp16"
    from skyloc.export.engine import run_engine

    x = structured_images(2, 64, seed=3)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(gpu_models["fp16"]), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert cosine(run_engine(out, x), ref).min() >= 0.999
