"""The cases of `skyloc bench faults` (see benchmarks/faults.py) and the small world they run on."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from skyloc.benchmarks.faults import Case, Outcome, World, run_cli

LAT0, LON0 = 60.40, 22.46
MODEL_ID = "fault-model-0"


# --- the world --------------------------------------------------------------------------------


def _tiny_model(path: Path, size: int = 32, dim: int = 16, weights: np.ndarray | None = None,
                model_id: str = MODEL_ID) -> Path:
    """uint8 NHWC -> normalise -> 4x4 average pool -> linear -> L2: a real ONNX embedder in 8 nodes,
    carrying the `skyloc.model_id` metadata `skyloc export` writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from skyloc.runtime.sidecar import (IMAGENET_MEAN, IMAGENET_STD, InputContract, ModelSidecar, sha256_file,
                                        write_model_sidecar)

    w = np.random.default_rng(0).standard_normal((48, dim)).astype(np.float32) if weights is None else weights
    mean = (np.array(IMAGENET_MEAN, np.float32) * 255).reshape(1, 3, 1, 1)
    std = (np.array(IMAGENET_STD, np.float32) * 255).reshape(1, 3, 1, 1)
    k = size // 4
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
        nodes, "fault-tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std"),
                     numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"skyloc.model_id": model_id, "skyloc.variant": "global"})
    onnx.save(model, str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=dim, precision="fp32", opset=17,
                                           model_id=model_id, onnx_sha256=sha256_file(path),
                                           input=InputContract(height=size, width=size), backbone="fault-tiny"))
    return path


def _map_image(w: int, h: int, seed: int = 0) -> np.ndarray:
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

    from skyloc.runtime import geo
    from skyloc.runtime.maps import open_map, write_corners_csv
    from skyloc.runtime.tileset import build_tileset

    w = World(Path(root))
    w.map_dir.mkdir(parents=True, exist_ok=True)
    _tiny_model(w.model)
    cv2.imwrite(str(w.map_png), _map_image(480, 400)[:, :, ::-1])
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
        cv2.imwrite(str(w.calib / f"c{i}.png"), _map_image(48, 48, seed=10 + i))
    del rng
    return w


# --- helpers for cases ------------------------------------------------------------------------


def _edit_sidecar(w: World, fn) -> None:
    data = json.loads(w.sidecar.read_text())
    w.sidecar.write_text(json.dumps(fn(data)))


def _records(path: Path) -> list[dict] | str:
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


def _stale_name(dest: Path, suffix: str = ".npy") -> Path:
    # A scratch file of a process that no longer runs (pid beyond pid_max).
    return dest.with_name(f".{dest.name}.tmp{2 ** 22 + 7}-deadbeef{suffix}")


def _spawn(argv: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "skyloc", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _kill_when(proc: subprocess.Popen, folder: Path, pattern: str, sig: int, timeout: float = 120) -> bool:
    """Send `sig` once a file matching `pattern` appears in `folder` (the write is under way)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if any(folder.glob(pattern)):
            proc.send_signal(sig)
            return True
        time.sleep(0.005)
    return False


def _big_tiles_argv(w: World, out: Path) -> list[str]:
    # ~9000 tiles: long enough (seconds) to be interrupted mid-build.
    return ["tiles", "--model", str(w.model), "--map", str(w.map_png), "--out", str(out), "--tile-m", "60",
            "--stride-m", "4", "--no-progress", "--providers", "cpu", "--batch", "64", "--overwrite"]


# --- custom runners -----------------------------------------------------------------------------


def _tiles_signal(sig: int):
    def runner(w: World, inprocess: bool) -> Outcome:
        t0 = time.perf_counter()
        proc = _spawn(_big_tiles_argv(w, w.tiles), w.root)
        hit = _kill_when(proc, w.root, ".tiles.npz.tmp*", sig)
        out, err = proc.communicate(timeout=300)
        left = [p.name for p in w.root.glob(".tiles.npz.tmp*")]
        note = f"signal sent: {hit}; scratch left: {left}"
        if sig == signal.SIGKILL and left:  # the next start must clean it
            res = run_cli(w.tiles_argv(out=w.root / "again.npz"), inprocess, w.root)  # same folder
            left = [p.name for p in w.root.glob(".tiles.npz.tmp*")]
            note += f"; after the next start: {left} (rc {res.rc})"
        return Outcome(proc.returncode, err, out, time.perf_counter() - t0, note)
    return runner


def _judge_signal(w: World, res: Outcome) -> tuple[str, str]:
    if "signal sent: False" in res.note:
        return "wrong", "the build ended before the signal could be sent: " + res.note
    if not res.note.endswith("[]") and "after the next start: []" not in res.note:
        return "wrong", res.note
    return "survived and counted", f"exit {res.rc}; {res.note}"


def _tiles_disk_full(w: World, inprocess: bool) -> Outcome:
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


def _tiles_low_space(w: World, inprocess: bool) -> Outcome:
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


def _faiss_case(kind: str, forge_json: bool):
    """Build and save a faiss index for the tile set, alter vectors in the index file (and, with
    `forge_json`, record the altered file's checksum too), then load it again."""
    def runner(w: World, inprocess: bool) -> Outcome:
        import io as _io
        import logging

        from skyloc.runtime.matcher import ExactMatcher, FaissMatcher
        from skyloc.runtime.sidecar import sha256_file
        from skyloc.runtime.tileset import TileSet

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


def _judge_faiss(w: World, res: Outcome) -> tuple[str, str]:
    m = re.search(r"agreement with exact search ([\d.]+)", res.note)
    ok = "reused=False" in res.note and "rebuilding" in res.err and m is not None and float(m.group(1)) >= 0.99
    return ("survived and counted" if ok else "wrong"), res.note


def _judge_missing_tile(w: World, res: Outcome) -> tuple[str, str]:
    m = re.search(r"missing[^\n]*?(\d+(?:\.\d+)?)% of its area", res.err)
    if res.rc == 0 and m:
        return "survived and counted", f"reported: {m.group(0)[:120]}"
    return ("wrong" if res.rc == 0 else "crash" if res.rc != 2 else "clear error"), (res.err.strip().splitlines()
                                                                                    or [""])[-1][:160]


def _judge_stale_cleaned(w: World, res: Outcome) -> tuple[str, str]:
    stale = _stale_name(w.root / "new.npz")
    if res.rc == 0 and not stale.exists():
        return "survived and counted", "the dead process's scratch file was removed at start"
    return "wrong", f"exit {res.rc}; stale scratch still there: {stale.exists()}"


def _json_nan(w: World, inprocess: bool) -> Outcome:
    from skyloc.runtime.atomic import write_json_atomic
    from skyloc.runtime.errors import SkylocError

    try:
        write_json_atomic(w.fixes, {"lat": float("nan")})
    except SkylocError as exc:
        return Outcome(2, f"error: {exc}")
    return Outcome(0, "")


# --- the matrix -------------------------------------------------------------------------------

def _csv_map(rows: list[str]):
    def prep(w: World) -> None:
        (w.map_dir / "map.csv").write_text("Filename, Top_left_lat,Top_left_lon,Bottom_right_lat,Bottom_right_long\n"
                                           + "\n".join(rows) + "\n")
    return prep


def _tl_br() -> tuple[float, float, float, float]:
    from skyloc.runtime import geo

    return geo.corners_for_centre(LAT0, LON0, 480.0, 400.0)


def _row(name: str, a=None, b=None, c=None, d=None) -> str:
    tl_lat, tl_lon, br_lat, br_lon = _tl_br()
    vals = [tl_lat if a is None else a, tl_lon if b is None else b, br_lat if c is None else c, br_lon if d is None else d]
    return f'"{name}", ' + ", ".join(str(v) for v in vals)


def _geotiff_no_transform(w: World) -> None:
    import warnings

    import rasterio

    img = _map_image(64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(w.root / "notransform.tif", "w", driver="GTiff", width=64, height=64, count=3,
                           dtype="uint8", crs="EPSG:32634") as ds:
            ds.write(np.moveaxis(img, -1, 0))


def _nan_model(w: World) -> None:
    _tiny_model(w.model, weights=np.full((48, 16), np.nan, np.float32))


def _model_id_mismatch(w: World) -> None:
    _edit_sidecar(w, lambda d: {**d, "model_id": "someone-else"})


def _forged_part(w: World) -> None:
    """Two shards of one grid, the second with a row dropped and its range edited (checksum redone)."""
    from skyloc.runtime.tileset import TileSet, build_tileset, save_tileset

    for k in (0, 1):
        build_tileset(w.model, w.map_png, w.root / f"p{k}.npz", tile_m=100, stride_m=50, shard=f"{k}/2",
                      progress=False, conf={"providers": "cpu"})
    p1 = TileSet.load(w.root / "p1.npz")
    lo, hi = p1.meta["shard_range"]
    forged = TileSet(p1.embeddings[1:], p1.centers[1:], p1.footprints[1:], p1.scale[1:],
                     {**p1.meta, "shard_range": [lo, hi - 1]})
    save_tileset(forged, w.root / "p1.npz")


def _two_shards(w: World) -> None:
    from skyloc.runtime.tileset import build_tileset

    for k in (0, 1):
        build_tileset(w.model, w.map_png, w.root / f"p{k}.npz", tile_m=100, stride_m=50, shard=f"{k}/2",
                      progress=False, conf={"providers": "cpu"})


def _nan_tileset(w: World) -> None:
    """A tile set with NaN embeddings and a valid checksum (as versions before the NaN check wrote)."""
    import hashlib  # noqa: F401

    from skyloc.runtime.tileset import TileSet, tileset_checksum

    ts = TileSet.load(w.tiles)
    emb = ts.embeddings.copy()
    emb[3] = np.nan
    bad = TileSet(emb, ts.centers, ts.footprints, ts.scale, dict(ts.meta))
    bad.meta["checksum"] = tileset_checksum(bad)
    with open(w.tiles, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(bad.meta, sort_keys=True)), embeddings=emb, centers=ts.centers,
                 footprints=ts.footprints, scale=ts.scale)


def _stale_scratch(w: World) -> None:
    _stale_name(w.root / "new.npz").write_bytes(b"\0" * 1024)


def _no_weights_checkpoint(w: World) -> None:
    import torch

    from skyloc.training.checkpoint import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT}, w.root / "empty.pt")


def _nan_checkpoint(w: World) -> None:
    import torch

    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    cfg, tcfg = preset("tiny", num_classes=5)
    model = build_model(cfg)
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    save_checkpoint(w.root / "nan.pt", model, cfg, tcfg)


def _dangling_calib(w: World) -> None:
    os.symlink(w.root / "does-not-exist.png", w.calib / "zz-dangling.png")


def _judge_dangling(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 2 and re.search("zz-dangling|symlink|cannot read", res.err, re.I):
        return "clear error", _last(res.err)
    if res.rc == 0 and "zz-dangling" in res.err:
        return "survived and counted", "skipped and named: " + _last(res.err)
    return ("wrong" if res.rc in (0, 2) else "crash"), f"exit {res.rc}: {_last(res.err)}"


def _calibrate_killed(w: World, inprocess: bool) -> Outcome:
    """Calibrate once (the previous INT8 models), then kill a second calibration while it writes."""
    t0 = time.perf_counter()
    out = w.root / "int8"
    argv = ["calibrate", "--model", str(w.model), "--images", str(w.calib), "--out", str(out), "--num-images", "8",
            "--no-progress"]
    first = run_cli(argv, False, w.root)
    if first.rc != 0:
        return Outcome(first.rc, first.err, first.out, time.perf_counter() - t0, "the first calibration failed")
    prev = {p.name: p.read_bytes() for p in out.glob("model.int8-*")}
    # The previous models are inputs to protect: keep their bytes beside the world for the judge.
    proc = _spawn(argv, w.root)
    hit = _kill_when(proc, out, ".model.int8-*", signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    now = {p.name: p.read_bytes() for p in out.glob("model.int8-*")}
    changed = sorted(k for k in prev if now.get(k) != prev[k])
    return Outcome(proc.returncode, err, "", time.perf_counter() - t0,
                   f"killed mid-write: {hit}; previous INT8 files changed: {changed}")


def _judge_calibrate_killed(w: World, res: Outcome) -> tuple[str, str]:
    if "changed: []" in res.note:
        return "survived and counted", res.note
    if "changed:" in res.note:
        return "data loss", res.note
    return "crash", res.note + " " + _last(res.err)


def _last(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


# --- run-side judges ---------------------------------------------------------------------------


def _frames_with(w: World, name: str, img: np.ndarray | None = None, raw: bytes | None = None) -> None:
    import cv2

    p = w.frames / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        cv2.imwrite(str(p), img)


def _judge_frame(name: str, forbidden: str = "accepted"):
    """The record of frame file `name` exists, is valid JSON and is not an accepted / 3D fix."""
    def judge(w: World, res: Outcome) -> tuple[str, str]:
        if res.rc != 0:
            return ("clear error" if res.rc == 2 else "crash"), f"exit {res.rc}: {_last(res.err)}"
        recs = _records(w.root / "run.jsonl")
        if isinstance(recs, str):
            return "wrong", f"output is not valid JSON lines: {recs}"
        mine = [r for r in recs if str(r.get("source", "")).endswith(name)]
        if not mine:
            return "wrong", f"no record for {name}: dropped without a count"
        r = mine[0]
        if r.get("skipped") or not (r.get("accepted") or r.get("send_3d")):
            return "survived and counted", f"{name}: skipped={r.get('skipped')} accepted={r.get('accepted')} " \
                                           f"send_3d={r.get('send_3d')}"
        return "wrong", f"{name}: accepted={r.get('accepted')} send_3d={r.get('send_3d')} reason={r.get('reason')}"
    return judge


def _judge_thumbnail(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc != 0:
        return ("clear error" if res.rc == 2 else "crash"), f"exit {res.rc}: {_last(res.err)}"
    recs = _records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    later = [r for r in recs if not str(r.get("source", "")).endswith("a-thumb.png")]
    wrong_size = [r for r in later if r.get("skipped") == "wrong-size"]
    if not later or wrong_size:
        return "wrong", f"{len(wrong_size)} of {len(later)} later frames skipped as wrong-size"
    return "survived and counted", f"{len(later)} later frames processed; thumbnail " \
                                   f"{[r.get('skipped') for r in recs if 'a-thumb' in str(r.get('source'))]}"


def _judge_nan_telemetry(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 2:
        named = re.search("nan|finite", res.err, re.I) and re.search("telemetry|yaw", res.err, re.I)
        return ("clear error" if named else "wrong"), _last(res.err)
    if res.rc != 0:
        return "crash", f"exit {res.rc}: {_last(res.err)}"
    recs = _records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    r = [x for x in recs if x.get("frame") == 2]
    if not r:
        return "wrong", "no record for frame 2"
    r = r[0]
    if r.get("skipped") or r.get("heading_source") != "pose":
        return "survived and counted", f"frame 2: skipped={r.get('skipped')} heading_source={r.get('heading_source')}"
    return "wrong", f"frame 2 used the NaN heading: heading_deg={r.get('heading_deg')} accepted={r.get('accepted')}"


def _telemetry(w: World) -> None:
    # Joined on time: frames of an image folder are 1 s apart by default (--fps 1).
    rows = ["time_s,yaw_deg,altitude_m"] + [f"{i:.1f},{'nan' if i == 2 else 0.0},120" for i in range(6)]
    (w.root / "telemetry.csv").write_text("\n".join(rows) + "\n")


def _black(w: World) -> None:
    _frames_with(w, "f003.png", np.zeros((128, 128, 3), np.uint8))


def _thumb(w: World) -> None:
    import cv2

    first = cv2.imread(str(w.frames / "f000.png"))
    _frames_with(w, "a-thumb.png", cv2.resize(first, (40, 30)))


def _corrupt_frame(w: World) -> None:
    _frames_with(w, "f002.png", raw=b"\x89PNG\r\n\x1a\n" + b"\0" * 64)


def _tampered_index_for_run(w: World) -> None:
    from skyloc.runtime.matcher import FaissMatcher
    from skyloc.runtime.tileset import TileSet

    ts = TileSet.load(w.tiles)
    m = FaissMatcher(ts, "flat")
    raw = bytearray(m.index_path.read_bytes())
    pos = raw.find(ts.embeddings[10].tobytes())
    raw[pos:pos + 64] = np.full(16, 0.25, np.float32).tobytes()
    m.index_path.write_bytes(bytes(raw))


def _judge_run_rebuilt(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 0 and "rebuilding" in res.err:
        return "survived and counted", "index refused and rebuilt: " + next(
            (ln for ln in res.err.splitlines() if "rebuilding" in ln), "")[:140]
    return ("wrong" if res.rc == 0 else "crash" if res.rc != 2 else "clear error"), _last(res.err)


S = "survived"
E = "error"
CASES: list[Case] = [
    # tiles: flags
    Case("tiles --tile-m nan", "tiles", E, lambda w: w.tiles_argv("--tile-m", "nan"), "tile.m"),
    Case("tiles --stride-m inf", "tiles", E, lambda w: w.tiles_argv("--stride-m", "inf"), "stride.m"),
    Case("tiles --stride-m 0.001 (TiB-sized grid)", "tiles", E, lambda w: w.tiles_argv("--stride-m", "0.001"),
         "stride|tiles|GiB|TiB"),
    Case("tiles --scales 1,nan", "tiles", E, lambda w: w.tiles_argv("--scales", "1,nan"), "scales"),
    Case("tiles --scales -1", "tiles", E, lambda w: w.tiles_argv("--scales", "-1"), "scales"),
    Case("tiles --min-valid nan", "tiles", E, lambda w: w.tiles_argv("--min-valid", "nan"), "min.valid"),
    # tiles: outputs
    Case("tiles --out model.onnx", "tiles", E, lambda w: w.tiles_argv("--overwrite", out=w.model), "model",
         protect=("model", "sidecar")),
    Case("tiles --out model.json (sidecar)", "tiles", E, lambda w: w.tiles_argv("--overwrite", out=w.sidecar),
         "sidecar|model", protect=("sidecar",)),
    Case("tiles --out the map image", "tiles", E, lambda w: w.tiles_argv("--overwrite", out=w.map_png), "map",
         protect=("map_png",)),
    Case("tiles --out the corners CSV", "tiles", E,
         lambda w: ["tiles", "--model", str(w.model), "--map", str(w.map_dir), "--out", str(w.map_csv), "--tile-m",
                    "100", "--stride-m", "50", "--no-progress", "--overwrite"], "map", protect=("map_csv",)),
    Case("tiles --out existing tile set, no --overwrite", "tiles", E, lambda w: w.tiles_argv(out=w.tiles),
         "exists|overwrite", protect=("tiles",)),
    Case("tiles with NaN model weights (previous kept)", "tiles", E, lambda w: w.tiles_argv("--overwrite", out=w.tiles),
         "non-finite|NaN", protect=("tiles",), prepare=_nan_model),
    Case("tiles SIGTERM mid-build (no scratch left)", "scratch", S, runner=_tiles_signal(signal.SIGTERM),
         judge=_judge_signal, protect=("tiles",)),
    Case("tiles SIGKILL mid-build (scratch cleaned at next start)", "scratch", S,
         runner=_tiles_signal(signal.SIGKILL), judge=_judge_signal, protect=("tiles",)),
    Case("tiles stale scratch of a dead process", "scratch", S, lambda w: w.tiles_argv(), prepare=_stale_scratch,
         judge=_judge_stale_cleaned),
    Case("tiles on a full disk (write limit)", "scratch", E, runner=_tiles_disk_full, message="cannot write|space|free",
         protect=("tiles",)),
    Case("tiles with too little free space (estimate)", "scratch", E, runner=_tiles_low_space,
         message="free|space", protect=("tiles",)),
    Case("write_json_atomic with NaN (previous kept)", "scratch", E, runner=_json_nan, message="non-finite",
         protect=("fixes",)),
    # tiles merge
    Case("tiles merge: shard missing", "tiles", E,
         lambda w: ["tiles", "merge", str(w.root / "p0.npz"), "--out", str(w.root / "m.npz")], "missing shard",
         prepare=_two_shards),
    Case("tiles merge: parts do not add up", "tiles", E,
         lambda w: ["tiles", "merge", str(w.root / "p0.npz"), str(w.root / "p1.npz"), "--out", str(w.root / "m.npz")],
         "add up|covers", prepare=_forged_part),
    Case("tiles merge --out equal to a part", "tiles", E,
         lambda w: ["tiles", "merge", str(w.root / "p0.npz"), str(w.root / "p1.npz"), "--out", str(w.root / "p1.npz"),
                    "--overwrite"], "part|input", prepare=_two_shards),
    Case("tile set truncated (copy cut short)", "tiles", E, lambda w: w.run_argv(), "truncated|damaged",
         prepare=lambda w: w.tiles.write_bytes(w.tiles.read_bytes()[: w.tiles.stat().st_size // 2])),
    Case("tile set made by another model", "tiles", E, lambda w: w.run_argv(), "made by model",
         prepare=lambda w: (_tiny_model(w.root / "other.onnx", model_id="other-model"),
                            os.replace(w.root / "other.onnx", w.model), os.replace(w.root / "other.json", w.sidecar))),
    Case("tile set with NaN embeddings and a valid checksum", "tiles", E,
         lambda w: w.run_argv(), "not finite|NaN", prepare=_nan_tileset),
    # maps
    Case("map: ../ path in corners CSV", "maps", E, lambda w: w.tiles_argv() [:4] + [str(w.map_csv)] + w.tiles_argv()[5:],
         "outside", prepare=_csv_map([_row("../model.onnx")])),
    Case("map: absolute path in corners CSV", "maps", E,
         lambda w: w.tiles_argv()[:4] + [str(w.map_csv)] + w.tiles_argv()[5:], "outside",
         prepare=lambda w: _csv_map([_row(str(w.map_png))])(w)),
    Case("map: longitude 187", "maps", E, lambda w: w.tiles_argv()[:4] + [str(w.map_csv)] + w.tiles_argv()[5:],
         "range", prepare=lambda w: _csv_map([_row("map.png", b=187.0, d=187.01)])(w)),
    Case("map: NaN corner", "maps", E, lambda w: w.tiles_argv()[:4] + [str(w.map_csv)] + w.tiles_argv()[5:],
         "finite", prepare=lambda w: _csv_map([_row("map.png", a=float("nan"))])(w)),
    Case("map: top-left below bottom-right", "maps", E,
         lambda w: w.tiles_argv()[:4] + [str(w.map_csv)] + w.tiles_argv()[5:], "north-west",
         prepare=lambda w: _csv_map([_row("map.png", a=_tl_br()[2], c=_tl_br()[0])])(w)),
    Case("map: missing tile reported with its share", "maps", S,
         lambda w: w.tiles_argv()[:4] + [str(w.map_csv)] + w.tiles_argv()[5:],
         prepare=lambda w: _csv_map([_row("map.png"), _row("gone.png", a=_tl_br()[0] + 0.0036,
                                                           c=_tl_br()[0])])(w), judge=_judge_missing_tile),
    Case("map: GeoTIFF with a CRS and no geotransform", "maps", E,
         lambda w: w.tiles_argv()[:4] + [str(w.root / "notransform.tif")] + w.tiles_argv()[5:], "geotransform",
         prepare=_geotiff_no_transform, needs="rasterio"),
    # sidecars
    Case("sidecar is a JSON list", "sidecar", E, lambda w: w.tiles_argv(), r"model\.json.*list",
         prepare=lambda w: w.sidecar.write_text("[1, 2]")),
    Case("sidecar is a JSON string", "sidecar", E, lambda w: w.tiles_argv(), r"model\.json.*str",
         prepare=lambda w: w.sidecar.write_text('"model"')),
    Case("sidecar missing model_id", "sidecar", E, lambda w: w.tiles_argv(), r"model\.json.*model_id",
         prepare=lambda w: _edit_sidecar(w, lambda d: {k: v for k, v in d.items() if k != "model_id"})),
    Case("sidecar embedding_dim is a string", "sidecar", E, lambda w: w.tiles_argv(), r"model\.json.*embedding_dim",
         prepare=lambda w: _edit_sidecar(w, lambda d: {**d, "embedding_dim": "16"})),
    Case("sidecar with NaN in the input contract", "sidecar", E, lambda w: w.tiles_argv(), r"model\.json.*input\.std",
         prepare=lambda w: _edit_sidecar(w, lambda d: {**d, "input": {**d["input"], "std": [math.nan, 0.2, 0.2]}})),
    Case("ONNX modified after export (sidecar sha256)", "sidecar", E, lambda w: w.tiles_argv(), "does not match",
         prepare=lambda w: w.model.write_bytes(w.model.read_bytes() + b"\0")),
    Case("ONNX skyloc.model_id != sidecar model_id", "sidecar", E, lambda w: w.tiles_argv(), "model_id",
         prepare=_model_id_mismatch),
    # faiss
    Case("faiss flat index vectors altered, JSON intact", "faiss", S, runner=_faiss_case("flat", False),
         judge=_judge_faiss),
    Case("faiss flat index altered and its checksum forged", "faiss", S, runner=_faiss_case("flat", True),
         judge=_judge_faiss),
    Case("faiss hnsw index altered and its checksum forged", "faiss", S, runner=_faiss_case("hnsw", True),
         judge=_judge_faiss),
    # export / train / calibrate (owned elsewhere; measured here)
    Case("export: checkpoint with a format tag and no weights", "export", E,
         lambda w: ["export", "onnx", "--checkpoint", str(w.root / "empty.pt"), "--out", str(w.root / "e.onnx")],
         "weights|checkpoint", prepare=_no_weights_checkpoint, needs="torch", suite=False),
    Case("export: NaN weights", "export", E,
         lambda w: ["export", "onnx", "--checkpoint", str(w.root / "nan.pt"), "--out", str(w.root / "e.onnx"),
                    "--variant", "global"], "non-finite|NaN", prepare=_nan_checkpoint, needs="torch", suite=False),
    Case("train --lr nan", "train", E,
         lambda w: ["train", "--data", str(w.root / "no-data"), "--out", str(w.root / "run"), "--lr", "nan"],
         "lr", needs="torch", suite=False),
    Case("calibrate: dangling symlink among images", "calibrate", S,
         lambda w: ["calibrate", "--model", str(w.model), "--images", str(w.calib), "--out", str(w.root / "int8"),
                    "--num-images", "8", "--no-progress"], prepare=_dangling_calib, judge=_judge_dangling,
         suite=False),
    Case("calibrate killed mid-write (previous INT8 kept)", "calibrate", S, runner=_calibrate_killed,
         judge=_judge_calibrate_killed, suite=False),
    # run side (owned by the run / loop / outputs helpers; measured here)
    Case("run: black frame", "run", S, lambda w: w.run_argv(), prepare=_black, judge=_judge_frame("f003.png"),
         suite=False),
    Case("run: --yaw nan", "run", E, lambda w: w.run_argv("--yaw", "nan"), "yaw", suite=False),
    Case("run: NaN yaw in the telemetry CSV", "run", S,
         lambda w: w.run_argv("--telemetry", str(w.root / "telemetry.csv")), prepare=_telemetry,
         judge=_judge_nan_telemetry, suite=False),
    Case("run: thumbnail first in the folder", "run", S, lambda w: w.run_argv(), prepare=_thumb,
         judge=_judge_thumbnail, suite=False),
    Case("run: undecodable frame in the folder", "run", S, lambda w: w.run_argv(), prepare=_corrupt_frame,
         judge=_judge_frame("f002.png"), suite=False),
    Case("run: --max-speed nan", "run", E, lambda w: w.run_argv("--max-speed", "nan"), "max.speed", suite=False),
    Case("run: --fps 0", "run", E, lambda w: w.run_argv("--fps", "0"), "fps", suite=False),
    Case("run: --fps nan", "run", E, lambda w: w.run_argv("--fps", "nan"), "fps", suite=False),
    Case("run: --altitude nan", "run", E, lambda w: w.run_argv("--altitude", "nan"), "altitude", suite=False),
    Case("run: --mavlink-sysid 999", "run", E, lambda w: w.run_argv("--mavlink-sysid", "999"), "sysid",
         suite=False),
    Case("run: --out equal to the tile set", "run", E,
         lambda w: w.run_argv(out=w.tiles), "tiles|input", protect=("tiles",), suite=False),
    Case("run: --out equal to the model", "run", E, lambda w: w.run_argv(out=w.model), "model|input",
         protect=("model",), suite=False),
    Case("run: startup error keeps the previous fixes file", "run", E,
         lambda w: ["run", "--model", str(w.model), "--tiles", str(w.root / "no-such.npz"), "--source",
                    str(w.frames), "--out", str(w.fixes), "--overwrite"], "no-such|not found", protect=("fixes",),
         suite=False),
    Case("run: existing --out without --overwrite", "run", E,
         lambda w: ["run", "--model", str(w.model), "--tiles", str(w.tiles), "--source", str(w.frames), "--out",
                    str(w.fixes)], "exists|overwrite", protect=("fixes",), suite=False),
    Case("run: tampered faiss index", "run", S, lambda w: w.run_argv("--index", "flat"),
         prepare=_tampered_index_for_run, judge=_judge_run_rebuilt, suite=False),
]
