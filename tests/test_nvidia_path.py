"""The NVIDIA path, round 2 (issue 21), checked without a GPU:

- a UINT8 input read by anything but a Cast is flagged by `skyloc check`, and every writer of a
  TensorRT artifact (export, FP16, S8S8 INT8) leaves the Cast as its only reader;
- `skyloc engine`'s modules need no training package on any path, and a parse failure in an
  install without `onnx` still reports TensorRT's messages;
- cuda-python is reported only when its runtime module exists, and pycuda is tried when it fails;
- a timing cache is read only with a record of this TensorRT and GPU, and never overwritten when refused;
- the runtime compares an engine's input dtype / shape with the sidecar.
(The exported artifacts themselves: test_export.py and test_calibration.py lint them.)
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from skyloc.calibration.trt_lint import errors, lint_model
from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import InputContract

ROOT = Path(__file__).resolve().parents[1]
OPSET = [helper.make_opsetid("", 18)]


def _planted(reader: str = "Shape") -> onnx.ModelProto:
    """uint8 NHWC image -> Cast -> ReduceMean, plus `reader` on the uint8 input itself, as the
    torch.export optimizer leaves it (Shape(image) feeding a Reshape of the result)."""
    inp = [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 4, 4, 3])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([3], np.int64), "three")]
    if reader == "Shape":
        first = [helper.make_node("Shape", ["image"], ["s"], name="shape_of_image")]
    else:  # a reader that computes on the bytes
        first = [helper.make_node("Transpose", ["image"], ["u"], name="transpose_bytes", perm=[0, 1, 2, 3]),
                 helper.make_node("Shape", ["u"], ["s"], name="shape")]
    nodes = first + [
        helper.make_node("Slice", ["s", "zero", "one"], ["b"], name="batch_dim"),
        helper.make_node("Concat", ["b", "three"], ["target"], name="target", axis=0),
        helper.make_node("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["m"], name="mean", keepdims=0),
        helper.make_node("Reshape", ["m", "target"], ["y"], name="reshape"),
    ]
    m = helper.make_model(helper.make_graph(nodes, "g", inp, out, inits), opset_imports=OPSET)
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


# --- item 1: UINT8 input read by a Cast only ------------------------------------------------------

def test_check_flags_a_shape_reading_the_uint8_input(tmp_path: Path, capsys) -> None:
    planted = _planted()
    found = {(f.node, f.rule) for f in errors(lint_model(planted))}
    assert ("shape_of_image", "uint8") in found, found
    path = tmp_path / "planted.onnx"
    onnx.save(planted, str(path))
    assert skyloc(["check", str(path)]) == 1
    assert "shape_of_image (Shape) [uint8]" in capsys.readouterr().out


def test_shape_readers_move_onto_the_cast_and_the_result_is_unchanged() -> None:
    from skyloc.export.uint8_input import cast_only_uint8_inputs

    planted = _planted()
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    want = x.astype(np.float64).mean(axis=(1, 2))  # independent reference
    fixed = onnx.ModelProto()
    fixed.CopyFrom(planted)
    assert cast_only_uint8_inputs(fixed) == 1
    onnx.checker.check_model(fixed, full_check=True)  # still topologically ordered
    assert [n.op_type for n in fixed.graph.node if "image" in n.input] == ["Cast"]
    assert lint_model(fixed) == []
    np.testing.assert_allclose(_run(fixed, x), want, rtol=1e-6)
    np.testing.assert_allclose(_run(planted, x), want, rtol=1e-6)
    with pytest.raises(SkylocError, match="transpose_bytes.*straight into a Cast"):
        cast_only_uint8_inputs(_planted(reader="Transpose"))


def test_fp16_and_s8s8_writers_repair_an_old_export(tmp_path: Path) -> None:
    """An FP32 model exported before the fix (Shape on the uint8 input) comes out of the FP16
    converter and the S8S8 Q/DQ rewrite with the Cast as the input's only reader."""
    from skyloc.calibration.quantize import place_trt_qdq
    from skyloc.export.fp16 import convert_model_to_fp16

    fp16 = convert_model_to_fp16(_planted(), keep_fp32=set())
    assert [n.op_type for n in fp16.graph.node if "image" in n.input] == ["Cast"]
    assert errors(lint_model(fp16)) == []
    path = tmp_path / "m.int8-trt.onnx"
    onnx.save(_planted(), str(path))
    place_trt_qdq(path)
    repaired = onnx.load(str(path))
    assert [n.op_type for n in repaired.graph.node if "image" in n.input] == ["Cast"]
    assert errors(lint_model(repaired)) == []


# --- item 3: the engine path needs no training package ------------------------------------------

ENGINE_MODULES = ("skyloc.export.engine_cli", "skyloc.export.engine")
TRAINING_ONLY = ("onnx", "onnxscript", "torch", "torchvision", "tensorboard", "safetensors")


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try:` body that handles ModuleNotFoundError / ImportError."""
    child, p = node, parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try) and child in p.body:
            names = {getattr(h.type, "id", None) for h in p.handlers}
            names |= {getattr(e, "id", None) for h in p.handlers if isinstance(h.type, ast.Tuple) for e in h.type.elts}
            if names & {"ModuleNotFoundError", "ImportError"}:
                return True
        child, p = p, parents.get(p)
    return False


def _path_of(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "skyloc":
        return None
    roots = {"export": "export", "calibration": "calibration", "runtime": "runtime", "core": "skyloc/core",
             "training": "training", "benchmarks": "benchmarks"}
    if len(parts) < 2 or parts[1] not in roots:
        return None
    base = ROOT / roots[parts[1]] / Path(*parts[2:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def test_engine_modules_import_no_training_package_on_any_path() -> None:
    """Every import statement reachable from `skyloc engine` (function-level ones included, except
    those guarded by an ImportError handler) stays out of the training packages."""
    seen, todo, offenders = set(), list(ENGINE_MODULES), []
    while todo:
        mod = todo.pop()
        path = _path_of(mod)
        if mod in seen or path is None:
            continue
        seen.add(mod)
        tree = ast.parse(path.read_text())
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if _guarded(node, parents):
                continue
            for t in targets:
                if t.split(".")[0] in TRAINING_ONLY or t.startswith("skyloc.training"):
                    offenders.append(f"{mod}:{node.lineno} imports {t}")
                todo.append(t)
    assert "skyloc.runtime.backends.tensorrt_backend" in seen
    assert not offenders, offenders


BLOCK = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # an install without the training packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "onnxscript", "torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_parse_failure_without_onnx_keeps_tensorrt_messages(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_planted(), str(path))
    code = BLOCK + (
        "from pathlib import Path\n"
        "from skyloc.export.engine import parse_failure_message\n"
        f"print(parse_failure_message('10.3.0', Path({str(path)!r}), ['In node 0 (Shape): UINT8 is not supported']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TensorRT 10.3.0 cannot parse" in r.stdout and "UINT8 is not supported" in r.stdout
    assert "needs the onnx package" in r.stdout
    # with onnx installed the same message carries the lint's findings
    from skyloc.export.engine import parse_failure_message

    msg = parse_failure_message("10.3.0", path, ["x"])
    assert "shape_of_image (Shape) [uint8]" in msg


# --- item 4: CUDA bindings ----------------------------------------------------------------------

def _stand_in(tmp_path: Path, files: dict[str, str]) -> Path:
    """Third-party packages as another install would have them (never our own code)."""
    for rel, text in files.items():
        f = tmp_path / "site" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path / "site"


def _with_path(site: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + code],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_bare_cuda_package_is_not_cuda_python(tmp_path: Path) -> None:
    """A `cuda` package without the runtime bindings (cuda-pathfinder, cuda-core) is not a binding."""
    site = _stand_in(tmp_path, {"cuda/__init__.py": "", "cuda/pathfinder/__init__.py": ""})
    r = _with_path(site, "from skyloc.runtime.backends.cuda_memory import available_bindings\n"
                         "from skyloc.runtime.backends.tensorrt_backend import TensorRTBackend\n"
                         "print(available_bindings())\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_pycuda_is_tried_when_cuda_python_cannot_open_the_gpu(tmp_path: Path) -> None:
    from skyloc.runtime.backends.cuda_memory import available_bindings

    if "cuda-python" not in available_bindings():
        pytest.skip("cuda-python is not installed here: the first binding cannot fail first")
    site = _stand_in(tmp_path, {
        "pycuda/__init__.py": "",
        "pycuda/driver.py": "def init():\n    raise RuntimeError('cuInit failed: stand-in pycuda has no device')\n",
    })
    r = _with_path(site, (
        "from skyloc.runtime.backends.cuda_memory import available_bindings, open_cuda\n"
        "from skyloc.core.errors import SkylocError\n"
        "print(available_bindings())\n"
        "try:\n    open_cuda(0).release()\n    print('OPENED')\n"
        "except SkylocError as e:\n    print('ERR', e)\n"))
    assert r.returncode == 0, r.stderr[-2000:]
    bindings, result = r.stdout.strip().splitlines()[-2:]
    assert bindings == "['cuda-python', 'pycuda']"
    if result == "OPENED":
        pytest.skip("cuda-python opened a GPU here: the fallback is not needed")
    assert result.startswith("ERR no usable NVIDIA GPU")
    assert "cuda-python:" in result and "pycuda: cuInit failed: stand-in pycuda has no device" in result


# --- item 5: timing cache -------------------------------------------------------------------------

def test_timing_cache_is_read_only_with_a_matching_record(tmp_path: Path) -> None:
    from skyloc.export.timing_cache import cache_sidecar_path, read_timing_cache, write_timing_cache

    cache = tmp_path / "trt.cache"
    assert read_timing_cache(cache, "10.3.0.26", "8.7") == b""  # not there yet: start empty
    write_timing_cache(cache, b"cache-bytes", "10.3.0.26", "Orin", "8.7")
    assert read_timing_cache(cache, "10.3.0.26", "8.7") == b"cache-bytes"
    rec = json.loads(cache_sidecar_path(cache).read_text())
    assert rec["tensorrt_version"] == "10.3.0.26" and rec["gpu_name"] == "Orin"
    for version, cc, why in (("10.16.1.11", "8.7", "TensorRT 10.3.0.26"), ("10.3.0.26", "9.0", "compute capability 8.7")):
        with pytest.raises(SkylocError, match=why):
            read_timing_cache(cache, version, cc)
    assert cache.read_bytes() == b"cache-bytes"  # refused, never touched
    cache.write_bytes(b"trtexec wrote this")
    with pytest.raises(SkylocError, match="changed after"):
        read_timing_cache(cache, "10.3.0.26", "8.7")
    cache_sidecar_path(cache).unlink()
    with pytest.raises(SkylocError, match="no record"):
        read_timing_cache(cache, "10.3.0.26", "8.7")
    assert cache.read_bytes() == b"trtexec wrote this"


# --- item 6: the engine's input against the sidecar -----------------------------------------------

def test_engine_input_must_match_the_sidecar() -> None:
    from skyloc.runtime.backends.tensorrt_backend import check_engine_input

    c = InputContract(height=64, width=64)
    check_engine_input("m.engine", c, np.uint8, (-1, 64, 64, 3))
    check_engine_input("m.engine", c, np.uint8, (4, 64, 64, 3))
    with pytest.raises(SkylocError, match="float32 input but its sidecar says uint8"):
        check_engine_input("m.engine", c, np.float32, (-1, 64, 64, 3))
    with pytest.raises(SkylocError, match="not \\(batch, 64, 64, 3\\)"):
        check_engine_input("m.engine", c, np.uint8, (-1, 3, 64, 64))
    with pytest.raises(SkylocError, match="not \\(batch, 64, 64, 3\\)"):
        check_engine_input("m.engine", c, np.uint8, (-1, 32, 32, 3))


# --- item 9: the prepared GPU check, end to end on the CPU -------------------------------------------

def test_doctor_gpu_check_runs_end_to_end_on_cpu(tmp_path: Path, monkeypatch, xfeat_onnx: Path) -> None:
    """`skyloc doctor --gpu --device cpu` on tiny sizes: versions, torch FP32/FP16 timings of both
    MSBA variants and the matcher, ONNX exports (one variant, to stay CI-sized) and the matcher
    run on ORT CPU, and every GPU step it could not run named with its reason, in one markdown
    file under $OUT."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    rc = skyloc(["doctor", "--gpu", "--device", "cpu", "--preset", "tiny", "--iters", "2", "--batches", "1,2",
                 "--matcher-size", "64", "--budget-s", "300", "--onnx-variants", "global",
                 "--matcher-onnx", str(xfeat_onnx)])
    assert rc == 0
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| torch |" in md and "| onnxruntime providers |" in md
    rows = [ln.split("|")[1:-1] for ln in md.splitlines() if ln.startswith("| MSBA") or ln.startswith("| XFeat")]
    seen = {(r[0].split()[1], r[1].strip(), r[2].strip(), r[3].strip()) for r in rows if r[0].startswith(" MSBA")}
    for variant in ("full", "global"):
        for batch in ("1", "2"):
            assert (variant, "torch cpu", "fp32", batch) in seen and (variant, "torch cpu", "fp16 (autocast)", batch) in seen
    assert ("global", "ORT CPU", "fp32", "1") in seen and ("global", "ORT CPU", "fp16", "1") in seen
    matcher = [r for r in rows if r[0].startswith(" XFeat")]
    assert {(r[1].strip(), r[2].strip()) for r in matcher} >= {("torch cpu", "fp32"), ("torch cpu", "fp16 (autocast)"),
                                                                ("ORT CPU", "fp32")}
    for r in rows:
        assert float(r[4]) > 0 and float(r[5]) >= float(r[4])  # median <= p90, both measured
        if "cosine" in r[6]:
            assert float(r[6].split("cosine")[1].split()[0]) > 0.99, r
    could_not = md.split("## Could not run", 1)[1]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "ONNX Runtime on the GPU: " in could_not
    if importlib.util.find_spec("tensorrt") is None:
        assert "native TensorRT engines (FP16, INT8): TensorRT (python package `tensorrt`) is not installed" in could_not



@pytest.mark.gpu
def test_doctor_gpu_check_on_cuda(tmp_path: Path) -> None:
    """The same check on the GPU (tiny sizes): torch CUDA timings in both precisions, and a row
    for every GPU runtime installed (ORT CUDA provider, native TensorRT)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device here")
    out = tmp_path / "gpu-check.md"
    assert skyloc(["doctor", "--gpu", "--device", "cuda", "--preset", "tiny", "--iters", "5",
                   "--matcher-size", "256", "--out", str(out)]) == 0
    md = out.read_text()
    assert "| MSBA full 64px | torch cuda | fp16 (autocast) | 8 |" in md
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "| ORT CUDA (" in md
    if importlib.util.find_spec("tensorrt") is not None:
        assert "| MSBA global 64px | TensorRT (" in md


# --- item 8: the learned matcher on the NVIDIA path -------------------------------------------------

def test_matcher_onnx_passes_check_strict(xfeat_onnx: Path, capsys) -> None:
    """Its H and W are dynamic on purpose (the engine's profile covers them); everything else
    TensorRT's parser needs holds, warnings included, and its uint8 input feeds only a Cast."""
    assert skyloc(["check", "--strict", str(xfeat_onnx)]) == 0
    assert "learned matcher" in capsys.readouterr().out
    proto = onnx.load(str(xfeat_onnx))
    assert [n.op_type for n in proto.graph.node if "image" in n.input] == ["Cast"]
    rules = {f.rule for f in lint_model(xfeat_onnx)}  # without the profile: only the dynamic H and W
    assert rules == {"dynamic-shape"}, rules


def test_engine_cli_takes_a_matcher_with_image_shapes(xfeat_onnx: Path, tmp_path: Path, capsys) -> None:
    from skyloc.export.matcher_engine import parse_image_shapes

    assert parse_image_shapes("480x640", 32) == ((480, 640),) * 3
    assert parse_image_shapes("256x256,480x640,960x1280", 32) == ((256, 256), (480, 640), (960, 1280))
    out = tmp_path / "xfeat.engine"
    for bad, why in (([], "--image-shapes HxW"), (["--image-shapes", "480x650"], "multiple of the matcher's stride 32"),
                     (["--image-shapes", "480x640,256x256,960x960"], "min <= opt <= max")):
        assert skyloc(["engine", "--onnx", str(xfeat_onnx), "--out", str(out), *bad]) == 2
        assert why in capsys.readouterr().err
    rc = skyloc(["engine", "--onnx", str(xfeat_onnx), "--out", str(out), "--image-shapes", "480x640"])
    if importlib.util.find_spec("tensorrt") is None:
        assert rc == 2 and "TensorRT is not available" in capsys.readouterr().err
    assert not out.exists() or rc == 0


@pytest.mark.gpu
def test_matcher_engine_matches_onnxruntime(xfeat_onnx: Path, tmp_path: Path) -> None:
    from export_helpers import gpu_skip_reason

    why = gpu_skip_reason()
    if why:
        pytest.skip(why)
    from skyloc.export.matcher_engine import build_matcher_engine
    from skyloc.runtime.backends.tensorrt_runner import TensorRTRunner

    engine = build_matcher_engine(xfeat_onnx, tmp_path / "xfeat.engine", "256x256,480x640,480x640")
    sess = ort.InferenceSession(str(xfeat_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with TensorRTRunner(engine) as runner:
        for h, w in ((256, 256), (480, 640), (320, 416)):
            x = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
            ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
            got = runner.run(x)
            for name in ("heatmap", "descriptors", "reliability"):
                assert got[name].shape == ref[name].shape, name
                np.testing.assert_allclose(got[name], ref[name], atol=2e-3, err_msg=name)
        with pytest.raises(SkylocError, match="outside"):
            runner.run(np.zeros((1, 512, 512, 3), np.uint8))
