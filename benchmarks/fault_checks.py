"""Fault preparations (what each case breaks) and judges (whether a case that goes on survived
the fault and accounted for it) of benchmarks/fault_cases.py."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np

from skyloc.benchmarks.faults import Outcome, World, run_cli
from skyloc.benchmarks.fault_world import (
    tiny_model, map_image, edit_sidecar, records, stale_name, spawn, kill_when, LAT0, LON0,
)


# --- preparations -------------------------------------------------------------------------------

def csv_map(rows: list[str]):
    def prep(w: World) -> None:
        (w.map_dir / "map.csv").write_text("Filename, Top_left_lat,Top_left_lon,Bottom_right_lat,Bottom_right_long\n"
                                           + "\n".join(rows) + "\n")
    return prep


def tl_br() -> tuple[float, float, float, float]:
    from skyloc.core import geo

    return geo.corners_for_centre(LAT0, LON0, 480.0, 400.0)


def row(name: str, a=None, b=None, c=None, d=None) -> str:
    tl_lat, tl_lon, br_lat, br_lon = tl_br()
    vals = [tl_lat if a is None else a, tl_lon if b is None else b, br_lat if c is None else c, br_lon if d is None else d]
    return f'"{name}", ' + ", ".join(str(v) for v in vals)


def geotiff_no_transform(w: World) -> None:
    import warnings

    import rasterio

    img = map_image(64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(w.root / "notransform.tif", "w", driver="GTiff", width=64, height=64, count=3,
                           dtype="uint8", crs="EPSG:32634") as ds:
            ds.write(np.moveaxis(img, -1, 0))


def nan_model(w: World) -> None:
    tiny_model(w.model, weights=np.full((48, 16), np.nan, np.float32))


def model_id_mismatch(w: World) -> None:
    edit_sidecar(w, lambda d: {**d, "model_id": "someone-else"})


def forged_part(w: World) -> None:
    """Two shards of one grid, the second with a row dropped and its range edited (checksum redone)."""
    from skyloc.runtime.maps.tileset import TileSet, save_tileset
    from skyloc.runtime.maps.tileset_build import build_tileset

    for k in (0, 1):
        build_tileset(w.model, w.map_png, w.root / f"p{k}.npz", tile_m=100, stride_m=50, shard=f"{k}/2",
                      progress=False, conf={"providers": "cpu"})
    p1 = TileSet.load(w.root / "p1.npz")
    lo, hi = p1.meta["shard_range"]
    forged = TileSet(p1.embeddings[1:], p1.centers[1:], p1.footprints[1:], p1.scale[1:],
                     {**p1.meta, "shard_range": [lo, hi - 1]})
    save_tileset(forged, w.root / "p1.npz")


def two_shards(w: World) -> None:
    from skyloc.runtime.maps.tileset_build import build_tileset

    for k in (0, 1):
        build_tileset(w.model, w.map_png, w.root / f"p{k}.npz", tile_m=100, stride_m=50, shard=f"{k}/2",
                      progress=False, conf={"providers": "cpu"})


def nan_tileset(w: World) -> None:
    """A tile set with NaN embeddings and a valid checksum (as versions before the NaN check wrote)."""
    from skyloc.runtime.maps.tileset import TileSet, tileset_checksum

    ts = TileSet.load(w.tiles)
    emb = ts.embeddings.copy()
    emb[3] = np.nan
    bad = TileSet(emb, ts.centers, ts.footprints, ts.scale, dict(ts.meta))
    bad.meta["checksum"] = tileset_checksum(bad)
    with open(w.tiles, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(bad.meta, sort_keys=True)), embeddings=emb, centers=ts.centers,
                 footprints=ts.footprints, scale=ts.scale)


def stale_scratch(w: World) -> None:
    stale_name(w.root / "new.npz").write_bytes(b"\0" * 1024)


def no_weights_checkpoint(w: World) -> None:
    import torch

    from skyloc.training.checkpoint import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT}, w.root / "empty.pt")


def nan_checkpoint(w: World) -> None:
    import torch

    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    cfg, tcfg = preset("tiny", num_classes=5)
    model = build_model(cfg)
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    save_checkpoint(w.root / "nan.pt", model, cfg, tcfg)


def dangling_calib(w: World) -> None:
    os.symlink(w.root / "does-not-exist.png", w.calib / "zz-dangling.png")


def judge_dangling(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 2 and re.search("zz-dangling|symlink|cannot read", res.err, re.I):
        return "clear error", last(res.err)
    if res.rc == 0 and "zz-dangling" in res.err:
        return "survived and counted", "skipped and named: " + last(res.err)
    return ("wrong" if res.rc in (0, 2) else "crash"), f"exit {res.rc}: {last(res.err)}"


def calibrate_killed(w: World, inprocess: bool, sig: int = signal.SIGKILL) -> Outcome:
    """Calibrate once (the previous INT8 models + manifest), then kill a second calibration while it
    writes: the previous models and their manifest must stay together; after a catchable signal no
    scratch file may be left either."""
    t0 = time.perf_counter()
    out = w.root / "int8"
    argv = ["calibrate", "--model", str(w.model), "--images", str(w.calib), "--out", str(out), "--num-images", "8",
            "--no-progress"]
    first = run_cli(argv, False, w.root)
    if first.rc != 0:
        return Outcome(first.rc, first.err, first.out, time.perf_counter() - t0, "the first calibration failed")
    keep = ["model.int8-*", "calibration-manifest.json"]
    prev = {p.name: p.read_bytes() for g in keep for p in out.glob(g)}
    proc = spawn(argv, w.root)
    hit = kill_when(proc, out, ".model.int8-*", sig)
    _, err = proc.communicate(timeout=300)
    now = {p.name: p.read_bytes() for g in keep for p in out.glob(g)}
    changed = sorted(k for k in prev if now.get(k) != prev[k])
    scratch = sorted(p.name for p in out.glob(".*.tmp*"))
    left = f"; scratch left: {scratch}" if sig != signal.SIGKILL else ""
    return Outcome(proc.returncode, err, "", time.perf_counter() - t0,
                   f"killed ({signal.Signals(sig).name}) mid-write: {hit}; previous INT8 files changed: {changed}{left}")


def calibrate_signal(sig: int):
    """calibrate_killed with a catchable signal: also no scratch file may be left."""
    return lambda w, inprocess: calibrate_killed(w, inprocess, sig)


def judge_calibrate_killed(w: World, res: Outcome) -> tuple[str, str]:
    if "changed: []" in res.note:
        if "scratch left: [" in res.note and "scratch left: []" not in res.note:
            return "survived, not counted", res.note
        return "survived and counted", res.note
    if "changed:" in res.note:
        return "data loss", res.note
    return "crash", res.note + " " + last(res.err)


def last(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


# --- run-side judges ---------------------------------------------------------------------------


def frames_with(w: World, name: str, img: np.ndarray | None = None, raw: bytes | None = None) -> None:
    import cv2

    p = w.frames / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        cv2.imwrite(str(p), img)


def judge_frame(name: str, forbidden: str = "accepted"):
    """The record of frame file `name` exists, is valid JSON and is not an accepted / 3D fix."""
    def judge(w: World, res: Outcome) -> tuple[str, str]:
        if res.rc != 0:
            return ("clear error" if res.rc == 2 else "crash"), f"exit {res.rc}: {last(res.err)}"
        recs = records(w.root / "run.jsonl")
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


def judge_thumbnail(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc != 0:
        return ("clear error" if res.rc == 2 else "crash"), f"exit {res.rc}: {last(res.err)}"
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    later = [r for r in recs if not str(r.get("source", "")).endswith("a-thumb.png")]
    wrong_size = [r for r in later if r.get("skipped") == "wrong-size"]
    if not later or wrong_size:
        return "wrong", f"{len(wrong_size)} of {len(later)} later frames skipped as wrong-size"
    return "survived and counted", f"{len(later)} later frames processed; thumbnail " \
                                   f"{[r.get('skipped') for r in recs if 'a-thumb' in str(r.get('source'))]}"


def judge_nan_telemetry(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 2:
        named = re.search("nan|finite", res.err, re.I) and re.search("telemetry|yaw", res.err, re.I)
        return ("clear error" if named else "wrong"), last(res.err)
    if res.rc != 0:
        return "crash", f"exit {res.rc}: {last(res.err)}"
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    r = [x for x in recs if x.get("frame") == 2]
    if not r:
        return "wrong", "no record for frame 2"
    r = r[0]
    if not (r.get("skipped") or r.get("heading_source") != "pose"):
        return "wrong", f"frame 2 used the NaN heading: heading_deg={r.get('heading_deg')} accepted={r.get('accepted')}"
    safe = f"frame 2: skipped={r.get('skipped')} heading_source={r.get('heading_source')}"
    return counted(w, res, r"telemetry", safe)


def counted(w: World, res: Outcome, what: str, safe: str) -> tuple[str, str]:
    """A safely handled fault is "counted" only when stderr or --stats-json says so: a line naming
    `what` with a skip / non-finite / NaN word and a non-zero count."""
    st = w.root / "stats.json"
    text = res.err + "\n" + (st.read_text() if st.is_file() else "")
    word = r"(skip|non.?finite|nan|inf|reject|drop|bad|invalid)"
    if any(re.search(what, ln, re.I) and re.search(word, ln, re.I) and re.search(r"\b[1-9]\d*\b", ln)
           for ln in text.splitlines()):  # a non-zero count on the same line
        return "survived and counted", safe
    return "survived, not counted", safe + "; but nothing in the log, summary or --stats-json reports it"


def telemetry(w: World) -> None:
    # Joined on time: frames of an image folder are 1 s apart by default (--fps 1).
    rows = ["time_s,yaw_deg,altitude_m"] + [f"{i:.1f},{'nan' if i == 2 else 0.0},120" for i in range(6)]
    (w.root / "telemetry.csv").write_text("\n".join(rows) + "\n")


def black(w: World) -> None:
    frames_with(w, "f003.png", np.zeros((128, 128, 3), np.uint8))


def thumb(w: World) -> None:
    import cv2

    first = cv2.imread(str(w.frames / "f000.png"))
    frames_with(w, "a-thumb.png", cv2.resize(first, (40, 30)))


def corrupt_frame(w: World) -> None:
    frames_with(w, "f002.png", raw=b"\x89PNG\r\n\x1a\n" + b"\0" * 64)


def tampered_index_for_run(w: World) -> None:
    from skyloc.runtime.localize.retrieval_faiss import FaissMatcher
    from skyloc.runtime.maps.tileset import TileSet

    ts = TileSet.load(w.tiles)
    m = FaissMatcher(ts, "flat")
    raw = bytearray(m.index_path.read_bytes())
    pos = raw.find(ts.embeddings[10].tobytes())
    raw[pos:pos + 64] = np.full(16, 0.25, np.float32).tobytes()
    m.index_path.write_bytes(bytes(raw))


def judge_run_rebuilt(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 0 and "rebuilding" in res.err:
        return "survived and counted", "index refused and rebuilt: " + next(
            (ln for ln in res.err.splitlines() if "rebuilding" in ln), "")[:140]
    return ("wrong" if res.rc == 0 else "crash" if res.rc != 2 else "clear error"), last(res.err)


