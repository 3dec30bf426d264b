"""Fault cases of flight-software integrity (heading to the autopilot, stalls, silent wrongs, exit
codes): runners and judges; the cases themselves are listed in fault_cases.py (INTEGRITY_CASES)."""
from __future__ import annotations

import csv
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from skyloc.benchmarks.faults import Outcome, World, run_cli
from skyloc.benchmarks.fault_run import ENV, last
from skyloc.benchmarks.fault_world import records


def _stats(w: World, name: str = "stats.json") -> dict:
    p = w.root / name
    return json.loads(p.read_text()) if p.is_file() else {}


# --- a short synthetic flight over the world's map (heading, telemetry time base) ------------------

def flight(w: World) -> None:
    """OUT/flight: 3 s at 2 fps over the world's map (about 90-140 m, 90 deg lens, heading random-walking)."""
    from skyloc.synth.flight import FlightConfig, make_flight

    # a wide lens, so every frame covers the small world's 100 m tiles at any heading
    cfg = FlightConfig(seconds=3.0, fps=2.0, speed_mps=6.0, altitude_range_m=(120.0, 140.0), fov_deg=90.0, tilt_max_deg=5.0,
                       attitude_deg=2.0, yaw_mode="random-walk", seed=4, overwrite=True)
    make_flight(w.map_csv, w.root / "flight", cfg)
    # the small world keeps the flight low: 50 m tiles, which its frames cover at any heading
    from skyloc.runtime.maps.tileset_build import build_tileset

    build_tileset(w.model, w.map_csv, w.root / "tiles50.npz", tile_m=50.0, stride_m=25.0, progress=False)


def _truth(w: World) -> list[dict]:
    with open(w.root / "flight" / "truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def flight_argv(w: World, *extra: str) -> list[str]:
    r0 = _truth(w)[0]
    return ["run", "--model", str(w.model), "--tiles", str(w.root / "tiles50.npz"),
            "--source", str(w.root / "flight" / "flight.mp4"),
            "--camera", str(w.root / "flight" / "flight.json"), "--start", f"{r0['lat']},{r0['lon']},150",
            "--out", str(w.root / "run.jsonl"), "--overwrite", "--stats-json", str(w.root / "stats.json"), *extra]


def shifted_telemetry(w: World) -> None:
    """The flight's own log with its clock 500 s off the frames'."""
    flight(w)
    rows = _truth(w)
    with open(w.root / "shifted.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        for r in rows:
            wr.writerow({**r, "time_s": f"{float(r['time_s']) + 500.0:.3f}"})


def judge_shifted(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc != 0:
        return "crash", f"exit {res.rc}: {last(res.err)}"
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "data loss", recs
    st = _stats(w)
    said = "covers time_s" in res.err
    fallback = all(r.get("pose_source") and "telemetry" not in r["pose_source"] for r in recs)
    if said and fallback and st.get("frames_without_telemetry") == len(recs) > 0:
        return "survived and counted", f"said at start; {len(recs)} frames record pose_source {recs[0]['pose_source']}"
    return "survived, not counted", f"said {said}, per-frame fallback {fallback}, counted {st.get('frames_without_telemetry')}"


def run_yaw_to_autopilot(w: World, inprocess: bool) -> Outcome:
    """Heading unknown, GPS_INPUT to a MAVLink log, decoded by pymavlink (the autopilot's reader)."""
    t0 = time.perf_counter()
    flight(w)
    mav = w.root / "gps.mavlink"
    res = run_cli(flight_argv(w, "--telemetry", str(w.root / "flight" / "truth.csv"), "--no-heading",
                              "--imagery", str(w.map_csv), "--mavlink", f"file:{mav}"), inprocess, w.root)
    os.environ["MAVLINK20"] = "1"
    from pymavlink import mavutil

    log = mavutil.mavlink_connection(str(mav), notimestamps=True, dialect="common") if mav.is_file() else None
    yaws = []
    while log is not None:
        m = log.recv_match(type="GPS_INPUT")
        if m is None:
            break
        yaws.append(m.yaw)
    res.note = json.dumps({"yaws": yaws})
    res.seconds = time.perf_counter() - t0
    return res


def judge_yaw(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc != 0:
        return "crash", f"exit {res.rc}: {last(res.err)}"
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "data loss", recs
    sent = [r for r in recs if r.get("send_3d")]
    yaws = json.loads(res.note)["yaws"]
    if not sent:
        return "wrong", f"no fix sent in {len(recs)} frames: nothing to check the yaw on"
    want = [(round(r["heading_deg"] * 100) % 36000) or 36000 for r in sent]
    if yaws == want:
        return "survived and counted", f"{len(yaws)} GPS_INPUT, every one with the registered yaw (cdeg {yaws[:3]}...)"
    return "wrong", f"GPS_INPUT yaw {yaws} != registered headings {want}"


def judge_retrieval_prior(w: World, res: Outcome) -> tuple[str, str]:
    """--no-register: no fix is ever accepted (the issue's case: 640 m off, `accuracy_m` 27-35,
    accepted; retrieval cannot say how far off a look-alike is, so it never vouches), nothing goes
    out as a 3D fix, and the fixes' error against the flight's own truth is reported."""
    if res.rc != 0:
        return "crash", f"exit {res.rc}: {last(res.err)}"
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "data loss", recs
    truth = {int(r["frame"]): (float(r["lat"]), float(r["lon"])) for r in _truth(w)}
    bad, errs = [], []
    for r in recs:
        if r.get("send_3d"):
            bad.append((r["frame"], "sent as 3D"))
        if r.get("accepted"):
            bad.append((r["frame"], f"accepted unverified, accuracy_m {r.get('accuracy_m')}"))
        if r["frame"] in truth and r.get("lat") is not None:
            errs.append(_haversine(*truth[r["frame"]], r["lat"], r["lon"]))
    outside = sum(r.get("reason") == "outside-prior" for r in recs)
    if bad or not errs:
        return "wrong", f"retrieval-only fixes vouched for: {bad[:4]}" if bad else "no positioned record"
    return "survived and counted", (f"{len(recs)} records, none accepted, none sent as 3D (errors "
                                    f"{min(errs):.0f}-{max(errs):.0f} m); {outside} refused as outside-prior")


def _haversine(a: float, b: float, c: float, d: float) -> float:
    p1, p2 = math.radians(a), math.radians(c)
    x = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(d - b) / 2) ** 2
    return 2 * 6378137.0 * math.asin(math.sqrt(x))


# --- sources that never give a frame ---------------------------------------------------------------

def damaged_video(w: World) -> None:
    """An MJPG AVI whose container is intact and every frame's JPEG header zeroed."""
    import cv2

    path = w.root / "damaged.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for k in range(20):
        vw.write(np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    vw.release()
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xd8\xff")
    while at >= 0:
        data[at:at + 300] = bytes(300)
        at = data.find(b"\xff\xd8\xff", at + 300)
    path.write_bytes(bytes(data))


def silent_rtsp(w: World, inprocess: bool) -> Outcome:
    """rtsp:// to a local port that accepts the connection and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        return run_cli(w.run_argv("--stats-json", str(w.root / "stats.json"), "--reopen-attempts", "1",
                                  "--reopen-initial", "0.01", "--reopen-max", "0.01",
                                  source=f"rtsp://127.0.0.1:{port}/live"), False, w.root)  # type: ignore[arg-type]
    finally:
        srv.close()


def judge_exit(rc: int, says: str, counted_key: str | None = None):
    """The documented exit code, a message saying what happened, the stats written."""
    def judge(w: World, res: Outcome) -> tuple[str, str]:
        if res.rc == rc and says.lower() in res.err.lower() and "skyloc run: frames" in res.err:
            st = _stats(w)
            if counted_key is None or st.get(counted_key):
                return "survived and counted", f"exit {rc}: {last(res.err)}"
            return "survived, not counted", f"exit {rc} but {counted_key} not in --stats-json"
        if res.rc == 0:
            return "wrong", f"exit 0 (documented: {rc}): {last(res.err)}"
        return "wrong", f"exit {res.rc} (documented: {rc}); said {says!r}: {says.lower() in res.err.lower()}"
    return judge


# --- outputs ---------------------------------------------------------------------------------------

def startup_disk_full(w: World, inprocess: bool) -> Outcome:
    """A 200-byte write limit: the resolved config cannot be written at startup."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    t0 = time.perf_counter()
    argv = w.run_argv("--stats-json", str(w.root / "stats.json"), out=w.root / "run.jsonl")
    p = subprocess.run([sys.executable, "-m", "skyloc", *argv], cwd=w.root, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit, env=dict(ENV, PYTHONDONTWRITEBYTECODE="1"))
    return Outcome(p.returncode, p.stderr, p.stdout, time.perf_counter() - t0)


def judge_startup_disk_full(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc == 3 and "cannot write" in res.err and not (w.root / "run.jsonl").exists():
        return "survived and counted", f"exit 3, nothing left behind: {last(res.err)}"
    return "wrong", f"exit {res.rc} (documented: 3): {last(res.err)}"


def refused_endpoint(kind: str):
    """--udp / --nmea udp: / --mavlink udpout: to a local port nobody listens on."""
    def runner(w: World, inprocess: bool) -> Outcome:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        flag = {"udp": ["--udp", f"127.0.0.1:{port}"], "nmea": ["--nmea", f"udp:127.0.0.1:{port}"],
                "mavlink": ["--mavlink", f"udpout:127.0.0.1:{port}", "--rejected-fix-type", "0"]}[kind]
        from skyloc.benchmarks.fault_io import _more_frames

        _more_frames(w, 30)
        return run_cli(w.run_argv("--stats-json", str(w.root / "stats.json"), *flag), False, w.root)
    return runner


def judge_refused(w: World, res: Outcome) -> tuple[str, str]:
    st = _stats(w)
    if res.rc == 3 and st.get("output_errors"):
        return "survived and counted", f"exit 3, output_errors {st['output_errors']} of {st.get('frames')} frames"
    return "wrong", f"exit {res.rc}, output_errors {st.get('output_errors')}: a refused endpoint went unnoticed"


# --- artifacts ---------------------------------------------------------------------------------------

def bitflipped_checkpoint(w: World) -> None:
    """A real checkpoint (save_checkpoint, checksum inside) with one weight byte flipped on disk."""
    import torch

    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import ModelConfig

    net = torch.nn.Linear(4, 4)
    with torch.no_grad():
        net.weight.copy_(torch.full((4, 4), 0.123456789))
    path = save_checkpoint(w.root / "flip.pt", net, ModelConfig())
    data = bytearray(path.read_bytes())
    pattern = torch.full((4,), 0.123456789).numpy().tobytes()
    at = bytes(data).find(pattern)
    data[at + 1] ^= 0x40
    path.write_bytes(bytes(data))


def forged_input_size(w: World) -> None:
    d = json.loads(w.sidecar.read_text())
    d["input"]["height"] = d["input"]["width"] = 48
    w.sidecar.write_text(json.dumps(d))


def huge_png_header(w: World) -> None:
    """The map PNG's IHDR claims 200000 x 200000 (CRC fixed, so only the size is a lie)."""
    import struct
    import zlib

    b = bytearray(w.map_png.read_bytes())
    b[16:24] = struct.pack(">II", 200000, 200000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    w.map_png.write_bytes(bytes(b))


def binary_map_csv(w: World) -> None:
    w.map_csv.write_bytes(np.random.default_rng(3).integers(128, 256, 4000, dtype=np.uint8).tobytes())
