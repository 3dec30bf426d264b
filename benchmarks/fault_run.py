"""Run-side faults of benchmarks/fault_cases.py, frames and sources: black / featureless frames,
telemetry cells, a missing file, a video with undecodable frames, a camera that changes resolution
(links, outputs and signals: benchmarks/fault_io.py).

Every judge reads what the run really wrote (records, stats JSON, stderr, the bytes a link carried)
and answers (verdict, why); "survived and counted" only when the fault was handled and accounted for.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from skyloc.benchmarks.faults import Outcome, World
from skyloc.benchmarks.fault_world import records, spawn

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")


def last(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def _not_ok(res: Outcome) -> tuple[str, str] | None:
    if res.rc == 0:
        return None
    return ("clear error" if res.rc == 2 else "crash"), f"exit {res.rc}: {last(res.err)}"


# --- frames ---------------------------------------------------------------------------------------


def featureless(sigma: float = 2.0):
    """Flat grey + colour sensor noise of this sigma (a lens cap, fog, a uniform roof)."""
    def prep(w: World) -> None:
        import cv2

        rng = np.random.default_rng(3)
        img = np.clip(128 + rng.normal(0, sigma, (128, 128, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(w.frames / "f003.png"), img)
    return prep


def missing_file(w: World) -> None:
    """f003.png gone; the telemetry gives yaw = 10 x frame time, so a shift after the gap shows."""
    (w.frames / "f003.png").unlink()
    rows = ["time_s,yaw_deg"] + [f"{i:.1f},{10.0 * i:.1f}" for i in range(8)]
    (w.root / "telemetry.csv").write_text("\n".join(rows) + "\n")


def judge_missing_file(w: World, res: Outcome) -> tuple[str, str]:
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    got = {r.get("source"): (r.get("frame"), r.get("time_s"), r.get("heading_deg"), r.get("heading_source"))
           for r in recs}
    for name in ("f004.png", "f005.png"):
        frame, t, hdg, hsrc = got.get(name, (None,) * 4)
        k = int(name[1:4])
        if frame != k or t is None or abs(t - k) > 1e-6:
            return "wrong", f"{name}: frame {frame}, time_s {t} (expected {k}, {k}.0): joined on list position"
        if hsrc == "pose" and (hdg is None or abs((hdg - 10.0 * k + 180) % 360 - 180) > 0.5):
            return "wrong", f"{name}: heading {hdg} from the telemetry of another time (expected {10 * k})"
    return "survived and counted", f"after the gap: {[(n, got[n][:2]) for n in ('f004.png', 'f005.png')]}"


def telemetry_cells(cells: dict[int, str]):
    def prep(w: World) -> None:
        rows = ["time_s,yaw_deg,altitude_m"] + [f"{i:.1f},{cells.get(i, '0.0')},120" for i in range(6)]
        (w.root / "telemetry.csv").write_text("\n".join(rows) + "\n")
    return prep


def binary_telemetry(w: World) -> None:
    (w.root / "telemetry.csv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


# --- video ----------------------------------------------------------------------------------------


def _video(path: Path, frames: list[np.ndarray], fps: float = 5.0) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def _frames(w: World, size: int | None = None) -> list[np.ndarray]:
    import cv2

    out = [cv2.imread(str(p)) for p in sorted(w.frames.glob("f*.png"))]
    return [cv2.resize(f, (size, size)) for f in out] if size else out


def corrupt_video(w: World) -> None:
    """An MJPG AVI of 10 frames whose 4th and 5th JPEG payloads are zeroed (undecodable)."""
    frames = _frames(w)
    p = _video(w.root / "flight.avi", frames + frames[:4])
    raw = bytearray(p.read_bytes())
    movi = raw.find(b"movi")
    chunks = [m.start() for m in re.finditer(b"00dc", raw) if m.start() > movi]
    for k in (3, 4):
        at = chunks[k]
        n = int.from_bytes(raw[at + 4:at + 8], "little")
        raw[at + 8:at + 8 + n] = b"\0" * n
    p.write_bytes(bytes(raw))


def judge_corrupt_video(w: World, res: Outcome) -> tuple[str, str]:
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    frames = [r.get("frame") for r in recs]
    skipped = {r.get("frame"): r.get("skipped") for r in recs if r.get("skipped")}
    after = [f for f in frames if isinstance(f, int) and f > 4 and f not in skipped]
    if len(recs) < 10 or not after:
        return "wrong", f"the video ended at the bad frames: frames {frames}"
    if skipped.get(3) is None or skipped.get(4) is None:
        return "wrong", f"undecodable frames 3, 4 not counted: skipped {skipped}"
    return "survived and counted", f"{len(recs)} records; skipped {skipped}; {len(after)} later frames localized"


def resolution_change(w: World, inprocess: bool) -> Outcome:
    """A live camera (a video file opened --live) that comes back at another resolution: the file
    is replaced by a 96 px video once the first frames are in."""
    t0 = time.perf_counter()
    src = w.root / "camera.avi"
    _video(src, _frames(w) * 2)
    _video(w.root / "small.avi", _frames(w, 96) * 4)
    argv = w.run_argv("--live", "--reopen-initial", "0.5", "--max-frames", "8", "--stats-json",
                      str(w.root / "stats.json"), source=src)
    proc = spawn(argv, w.root)
    out = w.root / "run.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (out.is_file() and out.stat().st_size):
        time.sleep(0.02)
    os.replace(w.root / "small.avi", src)
    try:
        o, e = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        o, e = proc.communicate()
    return Outcome(proc.returncode, e, o, time.perf_counter() - t0)


def judge_resolution(w: World, res: Outcome) -> tuple[str, str]:
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    stats = json.loads((w.root / "stats.json").read_text())
    sizes = [r.get("skipped") for r in recs]
    if stats.get("reopens", 0) < 1:
        return "wrong", f"the camera was never reopened (stats {stats.get('reopens')}): nothing tested"
    if "wrong-size" in sizes or not any(s is None for s in sizes[-3:]):
        return "wrong", f"frames after the reopen skipped: {sizes}"
    return "survived and counted", f"{len(recs)} records, reopens {stats['reopens']}, skipped {sizes}"


def gradient_frame(w: World) -> None:
    """A smooth ramp (contrast, no texture) with sensor noise sigma 2: fog, a blank wall, a lens flare."""
    import cv2

    rng = np.random.default_rng(4)
    ramp = np.linspace(40.0, 200.0, 128)[None, :, None] + rng.normal(0, 2, (128, 128, 3))
    cv2.imwrite(str(w.frames / "f003.png"), np.clip(ramp, 0, 255).astype(np.uint8))
