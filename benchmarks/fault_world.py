"""The small world the fault cases run on (tiny ONNX model, synthetic map, tile set, frames) and the
helpers and custom runners (signals, write limits, faiss tampering) of benchmarks/fault_cases.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from skyloc.benchmarks.faults import Outcome, World, run_cli

LAT0, LON0 = 60.40, 22.46
MODEL_ID = "fault-model-0"


# --- the world --------------------------------------------------------------------------------


def tiny_model(path: Path, size: int = 32, dim: int = 16, weights: np.ndarray | None = None,
               model_id: str = MODEL_ID, seed: int = 0, variant: str = "global", batch: int | str = "batch",
               backbone: str = "fault-tiny") -> Path:
    """uint8 NHWC -> normalise -> 4x4 average pool -> linear -> L2: a real ONNX embedder in 8 nodes,
    carrying the `skyloc.model_id` metadata `skyloc export` writes (the tests' tiny model too)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from skyloc.core.sidecar import (IMAGENET_MEAN, IMAGENET_STD, InputContract, ModelSidecar, sha256_file,
                                        write_model_sidecar)

    grid = 4
    w = (np.random.default_rng(seed).standard_normal((3 * grid * grid, dim)).astype(np.float32)
         if weights is None else weights)
    mean = (np.array(IMAGENET_MEAN, np.float32) * 255).reshape(1, 3, 1, 1)
    std = (np.array(IMAGENET_STD, np.float32) * 255).reshape(1, 3, 1, 1)
    k = size // grid
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["nchw", "mean"], ["c"]),
        helper.make_node("Div", ["c", "std"], ["n"]),
        helper.make_node("AveragePool", ["n"], ["p"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["p"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes, backbone,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std"),
                     numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    helper.set_model_props(model, {"skyloc.model_id": model_id, "skyloc.variant": variant})
    path = Path(path)
    onnx.save(model, str(path))
    write_model_sidecar(path, ModelSidecar(variant=variant, embedding_dim=dim, precision="fp32", opset=17,
                                           model_id=model_id, onnx_sha256=sha256_file(path),
                                           input=InputContract(height=size, width=size), backbone=backbone))
    return path


def map_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for s in (4, 16, 64):
        small = rng.random((h // s + 2, w // s + 2, 3)).astype(np.float32)
        img += cv2.resize(small, (w + 2 * s, h + 2 * s), interpolation=cv2.INTER_CUBIC)[s:s + h, s:s + w]
    return np.clip(img / 3 * 255, 0, 255).astype(np.uint8)


def build_world(root: Path) -> World:
    """Tiny model, a 480 x 400 m map (1 m/px PNG + corners CSV), its tile set, 6 frames cropped
    from the map, a previous fixes file and 8 calibration images."""
    import cv2

    from skyloc.core import geo
    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.maps.mosaic import write_corners_csv
    from skyloc.runtime.maps.tileset_build import build_tileset

    w = World(Path(root))
    w.map_dir.mkdir(parents=True, exist_ok=True)
    tiny_model(w.model)
    cv2.imwrite(str(w.map_png), map_image(480, 400)[:, :, ::-1])
    write_corners_csv(w.map_csv, [("map.png", *geo.corners_for_centre(LAT0, LON0, 480.0, 400.0))])
    build_tileset(w.model, w.map_png, w.tiles, tile_m=100, stride_m=25, progress=False, conf={"providers": "cpu"})
    gmap = open_map(w.map_png)
    w.frames.mkdir()
    for i in range(6):
        rgb, _ = gmap.read_crop(LAT0 - 0.0004 + 0.00015 * i, LON0, 100.0, 128)
        cv2.imwrite(str(w.frames / f"f{i:03d}.png"), rgb[:, :, ::-1])
    w.fixes.write_text('{"schema": "skyloc.fix/2", "frame": 0, "note": "a previous run"}\n')
    w.calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        cv2.imwrite(str(w.calib / f"c{i}.png"), map_image(48, 48, seed=10 + i))
    del rng
    return w


# --- helpers for cases ------------------------------------------------------------------------


def edit_sidecar(w: World, fn) -> None:
    data = json.loads(w.sidecar.read_text())
    w.sidecar.write_text(json.dumps(fn(data)))


def records(path: Path) -> list[dict] | str:
    """Records of a JSON-lines file, or why it is not valid JSON (bare NaN included)."""
    def bad(c: str) -> float:
        raise ValueError(f"bare {c} (not JSON)")
    out = []
    if not path.is_file():
        return f"{path.name} missing"
    for n, ln in enumerate(path.read_text().splitlines(), 1):
        if ln.strip():
            try:
                out.append(json.loads(ln, parse_constant=bad))
            except ValueError as exc:
                return f"line {n}: {exc}"
    return out


def stale_name(dest: Path, suffix: str = ".npy") -> Path:
    # A scratch file of a process that no longer runs (pid beyond pid_max).
    return dest.with_name(f".{dest.name}.tmp{2 ** 22 + 7}-deadbeef{suffix}")


def spawn(argv: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "skyloc", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def kill_when(proc: subprocess.Popen, folder: Path, pattern: str, sig: int, timeout: float = 120) -> bool:
    """Send `sig` once a file matching `pattern` appears in `folder` (the write is under way)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if any(folder.glob(pattern)):
            proc.send_signal(sig)
            return True
        time.sleep(0.005)
    return False


def big_tiles_argv(w: World, out: Path) -> list[str]:
    # ~9000 tiles: long enough (seconds) to be interrupted mid-build.
    return ["tiles", "--model", str(w.model), "--map", str(w.map_png), "--out", str(out), "--tile-m", "60",
            "--stride-m", "4", "--no-progress", "--providers", "cpu", "--batch", "64", "--overwrite"]


# --- custom runners -----------------------------------------------------------------------------


def tiles_signal(sig: int):
    def runner(w: World, inprocess: bool) -> Outcome:
        t0 = time.perf_counter()
        proc = spawn(big_tiles_argv(w, w.tiles), w.root)
        hit = kill_when(proc, w.root, ".tiles.npz.tmp*", sig)
        out, err = proc.communicate(timeout=300)
        left = [p.name for p in w.root.glob(".tiles.npz.tmp*")]
        note = f"signal sent: {hit}; scratch left: {left}"
        if sig == signal.SIGKILL and left:  # the next start must clean it
            res = run_cli(w.tiles_argv(out=w.root / "again.npz"), inprocess, w.root)  # same folder
            left = [p.name for p in w.root.glob(".tiles.npz.tmp*")]
            note += f"; after the next start: {left} (rc {res.rc})"
        return Outcome(proc.returncode, err, out, time.perf_counter() - t0, note)
    return runner


def judge_signal(w: World, res: Outcome) -> tuple[str, str]:
    if "signal sent: False" in res.note:
        return "wrong", "the build ended before the signal could be sent: " + res.note
    if not res.note.endswith("[]") and "after the next start: []" not in res.note:
        return "wrong", res.note
    return "survived and counted", f"exit {res.rc}; {res.note}"


def tiles_disk_full(w: World, inprocess: bool) -> Outcome:
    """A file-size limit (RLIMIT_FSIZE) makes every write past 32 KiB fail as on a full disk."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    t0 = time.perf_counter()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONDONTWRITEBYTECODE="1")
    argv = ["tiles", "--model", str(w.model), "--map", str(w.map_png), "--out", str(w.tiles), "--tile-m", "60",
            "--stride-m", "10", "--no-progress", "--providers", "cpu", "--overwrite"]
    p = subprocess.run([sys.executable, "-m", "skyloc", *argv], cwd=w.root, env=env, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit)
    left = [x.name for x in w.root.glob(".tiles.npz.tmp*")]
    err = p.stderr + (f"\nscratch left behind: {left}" if left else "")
    return Outcome(p.returncode, err, p.stdout, time.perf_counter() - t0, f"scratch left: {left}")


def tiles_low_space(w: World, inprocess: bool) -> Outcome:
    """shutil.disk_usage reports 1 MiB free: the size estimate must refuse before writing."""
    import collections

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    shutil.disk_usage = lambda p: usage(2 ** 30, 2 ** 30 - 2 ** 20, 2 ** 20)  # type: ignore[assignment]
    try:
        argv = ["tiles", "--model", str(w.model), "--map", str(w.map_png), "--out", str(w.tiles), "--tile-m", "60",
                "--stride-m", "1", "--no-progress", "--providers", "cpu", "--overwrite"]
        return run_cli(argv, True, w.root)
    finally:
        shutil.disk_usage = real  # type: ignore[assignment]


def faiss_case(kind: str, forge_json: bool):
    """Build and save a faiss index for the tile set, alter vectors in the index file (and, with
    `forge_json`, record the altered file's checksum too), then load it again."""
    def runner(w: World, inprocess: bool) -> Outcome:
        import io as _io
        import logging

        from skyloc.runtime.localize.retrieval import ExactMatcher
        from skyloc.runtime.localize.retrieval_faiss import FaissMatcher
        from skyloc.core.sidecar import sha256_file
        from skyloc.runtime.maps.tileset import TileSet

        t0 = time.perf_counter()
        ts = TileSet.load(w.tiles)
        m = FaissMatcher(ts, kind)
        raw = bytearray(m.index_path.read_bytes())
        vec = ts.embeddings[len(ts) // 2].tobytes()
        pos = raw.find(vec)
        if pos < 0:  # HNSW / IVF layouts: alter a block in the middle instead
            pos = len(raw) // 2
        rng = np.random.default_rng(5)
        for j in range(0, min(len(vec), len(raw) - pos), 4):
            raw[pos + j:pos + j + 4] = np.float32(rng.standard_normal()).tobytes()
        m.index_path.write_bytes(bytes(raw))
        jp = m.index_path.with_suffix(".json")
        if forge_json:
            rec = json.loads(jp.read_text())
            rec["index_sha256"] = sha256_file(m.index_path)
            jp.write_text(json.dumps(rec))
        log = _io.StringIO()
        h = logging.StreamHandler(log)
        logging.getLogger("skyloc").addHandler(h)
        try:
            m2 = FaissMatcher(TileSet.load(w.tiles), kind)
        finally:
            logging.getLogger("skyloc").removeHandler(h)
        q = ts.embeddings[::7] + 0.05 * rng.standard_normal((len(ts.embeddings[::7]), ts.dim)).astype(np.float32)
        s_f, i_f = m2.search(q, 1)
        s_e, i_e = ExactMatcher(ts).search(q, 1)
        agree = float(np.mean(i_f[:, 0] == i_e[:, 0]))
        note = f"reused={m2.reused}; top-1 agreement with exact search {agree:.3f}; log: {log.getvalue().strip()[:200]}"
        return Outcome(0, log.getvalue(), "", time.perf_counter() - t0, note)
    return runner


def judge_faiss(w: World, res: Outcome) -> tuple[str, str]:
    m = re.search(r"agreement with exact search ([\d.]+)", res.note)
    ok = "reused=False" in res.note and "rebuilding" in res.err and m is not None and float(m.group(1)) >= 0.99
    return ("survived and counted" if ok else "wrong"), res.note


def judge_missing_tile(w: World, res: Outcome) -> tuple[str, str]:
    m = re.search(r"missing[^\n]*?(\d+(?:\.\d+)?)% of its area", res.err)
    if res.rc == 0 and m:
        return "survived and counted", f"reported: {m.group(0)[:120]}"
    return ("wrong" if res.rc == 0 else "crash" if res.rc != 2 else "clear error"), (res.err.strip().splitlines()
                                                                                    or [""])[-1][:160]


def judge_stale_cleaned(w: World, res: Outcome) -> tuple[str, str]:
    stale = stale_name(w.root / "new.npz")
    if res.rc == 0 and not stale.exists():
        return "survived and counted", "the dead process's scratch file was removed at start"
    return "wrong", f"exit {res.rc}; stale scratch still there: {stale.exists()}"


def json_nan(w: World, inprocess: bool) -> Outcome:
    from skyloc.core.atomic import write_json_atomic
    from skyloc.core.errors import SkylocError

    try:
        write_json_atomic(w.fixes, {"lat": float("nan")})
    except SkylocError as exc:
        return Outcome(2, f"error: {exc}")
    return Outcome(0, "")


