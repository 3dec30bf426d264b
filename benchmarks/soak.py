"""`skyloc bench soak`: a long run with bad frames injected, every fix decoded as the autopilot sees it.

A closed flight over a procedural noise map (tiny real ONNX embedder, tile set, map imagery for
registration) is replayed in a loop for `frames` frames on a continuous clock, through the real
onboard loop (`runtime.loop.run`) with the real pose chain (`--telemetry` CSV joined on time +
MAVLink listener + flags) and real outputs: JSON lines, MAVLink GPS_INPUT (udpout -> a pymavlink
udpin "autopilot" on 127.0.0.1 that decodes every message and sends ATTITUDE with a NaN yaw back)
and NMEA GGA + RMC over UDP (parsed and checksum-checked here). Injected, in bursts and singly:
black frames, featureless frames (flat grey + sensor noise) and NaN / Inf headings (telemetry
cells). A wrong 3D fix is a GPS_INPUT fix_type >= 3 / NMEA GGA quality >= 1 / record send_3d
farther than `wrong_m` from the truth, or any 3D fix for a black or featureless frame; the goal
is zero. A NaN heading makes the heading unknown, not the image bad: such a frame may still be
localized by rotation search, and its 3D fix is then held to the `wrong_m` test like any other
(and must not claim the pose as its heading source).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from skyloc.benchmarks.soak_link import T0_UNIX, Autopilot, NmeaSink, free_udp_port, nmea_fixes  # noqa: F401
from skyloc.runtime.sources.base import Frame, FrameSource

BAD = ("black", "featureless", "nan-heading")


@dataclass
class SoakConfig:
    frames: int = 10_000
    loop_frames: int = 60  # distinct positions of the closed flight, replayed in a loop
    fps: float = 1.0
    black: float = 0.10  # share of frames of each injected kind (bursts included)
    featureless: float = 0.10
    nan_heading: float = 0.10
    burst_len: int = 8  # half of each kind's frames come in bursts of up to this many in a row
    wrong_m: float = 50.0
    frame_m: float = 150.0  # ground side of a frame: its diagonal-inscribed square still covers a 100 m tile,
    # so frames without a heading go through the rotation search instead of being skipped
    register_px: int = 32  # registration patch side: the smallest allowed, so 10k frames fit ~10 min on 2 cores
    heading_tol_deg: float = 2.0  # registration search around the known heading (the crops' yaw is exact)
    scale_tol: float = 0.0  # the GSD is exact in this flight
    seed: int = 0


def plan(cfg: SoakConfig) -> list[str]:
    """Frame kind per frame: 'good' or one of BAD; each bad kind ~its share, half in bursts."""
    rng = np.random.default_rng(cfg.seed)
    kinds = np.array(["good"] * cfg.frames, dtype=object)
    for kind, share in zip(BAD, (cfg.black, cfg.featureless, cfg.nan_heading)):
        want = int(round(share * cfg.frames))
        placed, tries = 0, 0
        while placed < want // 2 and tries < 100 * cfg.frames:  # bursts
            tries += 1
            n = int(rng.integers(2, max(3, cfg.burst_len + 1)))
            s = int(rng.integers(0, max(1, cfg.frames - n)))
            if all(k == "good" for k in kinds[s:s + n]):
                kinds[s:s + n] = kind
                placed += n
        free = np.flatnonzero(kinds == "good")
        single = rng.choice(free, size=min(len(free), max(0, want - placed)), replace=False)
        kinds[single] = kind
    return list(kinds)


def build_soak_world(root: Path, cfg: SoakConfig) -> dict[str, Any]:
    """Tiny model, 480 x 400 m map (1 m/px) + corners, tile set, and the closed flight's frames."""
    import cv2

    from skyloc.benchmarks.fault_world import LAT0, LON0, map_image, tiny_model
    from skyloc.core import geo
    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.maps.mosaic import write_corners_csv
    from skyloc.runtime.maps.tileset_build import build_tileset

    root.mkdir(parents=True, exist_ok=True)
    (root / "map").mkdir(exist_ok=True)
    model, png = tiny_model(root / "model.onnx"), root / "map" / "map.png"
    cv2.imwrite(str(png), map_image(480, 400)[:, :, ::-1])
    write_corners_csv(root / "map" / "map.csv", [("map.png", *geo.corners_for_centre(LAT0, LON0, 480.0, 400.0))])
    tiles = build_tileset(model, png, root / "tiles.npz", tile_m=100, stride_m=25, progress=False,
                          conf={"providers": "cpu"})
    gmap = open_map(png)
    # an ellipse around the map centre, flown clockwise, camera top = heading; the rotated frame
    # (half-diagonal frame_m / sqrt 2) stays on the map
    a = 2 * math.pi * np.arange(cfg.loop_frames) / cfg.loop_frames
    r = cfg.frame_m / math.sqrt(2) + 5
    east, north = (240 - r) * np.sin(a), (200 - r) * np.cos(a)
    heading = np.degrees(np.arctan2(np.gradient(east), np.gradient(north))) % 360.0
    lat, lon = geo.local_m_to_latlon(east, north, LAT0, LON0)
    images = []
    for i in range(cfg.loop_frames):
        rgb, _ = gmap.read_crop(float(lat[i]), float(lon[i]), cfg.frame_m, 128, yaw_deg=float(heading[i]))
        images.append(np.ascontiguousarray(rgb[:, :, ::-1]))
    return {"model": model, "map": png, "tiles": tiles, "images": images, "lat": np.asarray(lat),
            "lon": np.asarray(lon), "heading": heading, "gsd": cfg.frame_m / 128}


def bad_image(kind: str, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "black":
        return np.zeros(shape, np.uint8)
    noise = rng.normal(0, 2.0, shape)  # sensor noise, sigma 2
    if rng.random() < 0.5:  # featureless: flat grey (fog, lens cap off a grey sky) ...
        return np.clip(float(rng.integers(60, 200)) + noise, 0, 255).astype(np.uint8)
    ramp = np.linspace(40.0, 200.0, shape[1])[None, :, None]  # ... or a smooth gradient: contrast, no texture
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


class SoakSource(FrameSource):
    """The flight's frames in a loop on a continuous clock, with the planned image faults."""

    def __init__(self, world: dict[str, Any], kinds: list[str], cfg: SoakConfig) -> None:
        super().__init__("soak")
        self.world, self.kinds, self.cfg = world, kinds, cfg

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(self.cfg.seed + 1)
        imgs = self.world["images"]
        for i, kind in enumerate(self.kinds):
            if self._stop.is_set():
                return
            img = imgs[i % len(imgs)]
            if kind in ("black", "featureless"):
                img = bad_image(kind, rng, img.shape)
            t = i / self.cfg.fps
            self.stats.frames += 1
            yield Frame(i, t, img, f"soak-{i:05d}-{kind}", None, {"time_from": "clock"}, T0_UNIX + t)


def write_telemetry(path: Path, world: dict[str, Any], kinds: list[str], cfg: SoakConfig) -> Path:
    """yaw_deg per frame time; NaN / Inf / -inf cells on the nan-heading frames."""
    bad = ("nan", "inf", "-inf", "NaN")
    lines = ["time_s,yaw_deg"]
    n = len(world["heading"])
    for i, kind in enumerate(kinds):
        yaw = bad[i % len(bad)] if kind == "nan-heading" else f"{world['heading'][i % n]:.3f}"
        lines.append(f"{i / cfg.fps:.3f},{yaw}")
    path.write_text("\n".join(lines) + "\n")
    return path


def judge_channel(channel: str, fixes: list[tuple[int, float, float]], kinds: list[str], truth_err: Any,
                  wrong_m: float) -> dict[str, Any]:
    """Count the wrong 3D fixes among `fixes` ((frame, lat, lon) sent as 3D on one channel): farther
    than wrong_m from the truth, for a black / featureless frame, or for a frame that does not exist."""
    bad_img = [f for f, *_ in fixes if not 0 <= f < len(kinds) or kinds[f] in ("black", "featureless")]
    errs = [truth_err(f, la, lo) if 0 <= f < len(kinds) else math.inf for f, la, lo in fixes]
    far = [f for (f, *_), e in zip(fixes, errs) if not e <= wrong_m]  # NaN error counts as wrong
    finite = [e for e in errs if math.isfinite(e)]
    return {"channel": channel, "fixes_3d": len(fixes), "on_black_or_featureless": len(bad_img),
            "farther_than_wrong_m": len(far), "wrong_3d": len(set(bad_img) | set(far)),
            "on_nan_heading": sum(0 <= f < len(kinds) and kinds[f] == "nan-heading" for f, *_ in fixes),
            "median_err_m": round(float(np.median(finite)), 2) if finite else None,
            "max_err_m": round(float(max(finite)), 2) if finite else None}


def run_soak(cfg: SoakConfig, work: Path, progress: bool = False) -> dict[str, Any]:
    """Run the soak in `work`; returns the counts (see `judge`) and the per-kind table."""
    from skyloc.core.geo import haversine_m
    from skyloc.runtime.run.loop import RunOptions, run
    from skyloc.runtime.run.inputs import Poses
    from skyloc.runtime.outputs.nmea import NmeaOutput
    from skyloc.runtime.outputs.writers import JsonLinesOutput, MavlinkOutput
    from skyloc.runtime.run.stats import RunStats

    world = build_soak_world(work / "world", cfg)
    kinds = plan(cfg)
    mav_port, nmea_port = free_udp_port(), free_udp_port()
    opt = RunOptions(out=str(work / "fixes.jsonl"), overwrite=True, telemetry=str(write_telemetry(
        work / "telemetry.csv", world, kinds, cfg)), mavlink=f"udpout:127.0.0.1:{mav_port}", gsd=world["gsd"],
        imagery=str(world["map"]), register_px=cfg.register_px, candidates=1,
        heading_tol_deg=cfg.heading_tol_deg, scale_tol=cfg.scale_tol, log_level="ERROR",
        handle_signals=False)
    ap, sink = Autopilot(mav_port), NmeaSink(nmea_port)
    outs: list[Any] = []

    def outputs() -> list[Any]:
        outs.extend([JsonLinesOutput(opt.out, overwrite=True),
                     MavlinkOutput(opt.mavlink, source_system=opt.mavlink_sysid, source_component=opt.mavlink_compid),
                     NmeaOutput(f"udp:127.0.0.1:{nmea_port}")])
        return outs

    poses = Poses(opt, "stream")
    src = SoakSource(world, kinds, cfg)
    t0 = time.perf_counter()
    stats = RunStats()
    try:
        run(world["model"], world["tiles"], src, outputs, opt, stats=stats, poses=poses)
    finally:
        seconds = time.perf_counter() - t0
        ap.close()
        sink.close()
    link = outs[1].link.stats if len(outs) > 1 else None

    def truth_err(frame: int, lat: float, lon: float) -> float:
        j = frame % cfg.loop_frames
        return float(haversine_m(world["lat"][j], world["lon"][j], lat, lon))

    recs = [json.loads(ln, parse_constant=_no_nan) for ln in Path(opt.out).read_text().splitlines() if ln.strip()]
    gps3d = [(int(round((m.time_usec / 1e6 - T0_UNIX) * cfg.fps)), m.lat / 1e7, m.lon / 1e7)
             for m in ap.gps if m.fix_type >= 3]
    nmea3d = nmea_fixes(sink.sentences, cfg.fps)
    channels = {"record send_3d": [(r["frame"], r["lat"], r["lon"]) for r in recs if r.get("send_3d")],
                "GPS_INPUT fix_type 3": gps3d, "NMEA GGA quality 1": nmea3d}
    rows = [judge_channel(ch, fixes, kinds, truth_err, cfg.wrong_m) for ch, fixes in channels.items()]
    wrong = {r["channel"]: r["wrong_3d"] for r in rows}
    by_kind = []
    for k in ("good", *BAD):
        mine = [r for r in recs if kinds[r["frame"]] == k]
        by_kind.append({"kind": k, "frames": kinds.count(k), "records": len(mine),
                        "skipped": sum(bool(r.get("skipped")) for r in mine),
                        "fixes": sum(not r.get("skipped") for r in mine),
                        "verified": sum(bool(r.get("verified")) for r in mine),
                        "sent_3d": sum(bool(r.get("send_3d")) for r in mine),
                        "heading_from_pose": sum(r.get("heading_source") == "pose" for r in mine),
                        "skip_reasons": ";".join(sorted({str(r["skipped"]) for r in mine if r.get("skipped")}))})
    if progress:
        print(f"soak: {stats.frames} frames in {seconds:.0f} s, {stats.sent_3d} sent as 3D, "
              f"{sum(wrong.values())} wrong 3D fixes", file=sys.stderr)
    return {
        "config": asdict(cfg), "seconds": round(seconds, 1), "frames": stats.frames, "records": len(recs),
        "exit_code": stats.exit_code, "errors": stats.errors, "output_errors": stats.output_errors,
        "sent_3d": stats.sent_3d, "gps_input_received": len(ap.gps), "gps_input_sent": outs[1].sent if outs else 0,
        "nmea_sentences": len(sink.sentences), "nmea_bad_checksum": sink.bad_checksum,
        # HDT goes out only with a sent fix whose heading registration measured (runtime/outputs/nmea.py)
        "nmea_hdt": sum(s.split(",")[0].endswith("HDT") for s in sink.sentences),
        "sent_with_registered_heading": sum(bool(r.get("send_3d")) and r.get("heading_source") == "registration"
                                            for r in recs),
        "heartbeats_received": ap.heartbeats, "nan_attitudes_sent": ap.attitudes_sent,
        "nan_attitudes_dropped": link.nonfinite_dropped if link else 0,
        "telemetry_rows_skipped": poses.chain.sources[0].skipped if hasattr(poses.chain, "sources") else None,
        # what the run itself reports (summary / --stats-json) for the same drops
        "run_telemetry_rows_skipped": getattr(stats, "telemetry_rows_skipped", None),
        "run_mavlink_nonfinite_dropped": getattr(stats, "mavlink_nonfinite_dropped", None),
        "wrong_3d": sum(wrong.values()), "channels": rows, "by_kind": by_kind, "kinds": kinds,
        "frame_records": sorted(r["frame"] for r in recs),
        "channel_frames": {ch: sorted(f for f, *_ in fixes) for ch, fixes in channels.items()},
    }


def _no_nan(c: str) -> float:
    raise ValueError(f"bare {c} in a record (not JSON)")


def bench_soak(cfg: SoakConfig | None = None, work_dir: str | Path | None = None,
               results_dir: str | Path | None = None, name: str = "soak", command: str | None = None,
               progress: bool = True) -> dict[str, Path]:
    """Run the soak and write <name>.md / .csv (per channel) + <name>-kinds.csv / <name>-summary.csv."""
    import tempfile

    from skyloc.benchmarks.report import Goal, write_results

    cfg = cfg or SoakConfig()
    tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-soak-") if work_dir is None else None
    try:
        res = run_soak(cfg, Path(tmp.name if tmp else work_dir), progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    keys = ("frames", "records", "seconds", "exit_code", "errors", "output_errors", "sent_3d", "gps_input_sent",
            "gps_input_received", "nmea_sentences", "nmea_bad_checksum", "heartbeats_received",
            "nan_attitudes_sent", "nan_attitudes_dropped", "run_mavlink_nonfinite_dropped", "telemetry_rows_skipped",
            "run_telemetry_rows_skipped", "wrong_3d")
    summary = [{"quantity": k, "value": res[k]} for k in keys]
    missing = cfg.frames - len(set(res["frame_records"]))
    goals = [
        Goal("wrong 3D fixes", "0 (any channel)", str(res["wrong_3d"]), res["wrong_3d"] == 0),
        Goal("one record per frame", f"{cfg.frames}", f"{res['records']} ({missing} frames without one)",
             missing == 0 and res["records"] == cfg.frames),
        Goal("every GPS_INPUT sent decoded", str(res["gps_input_sent"]), str(res["gps_input_received"]),
             res["gps_input_received"] == res["gps_input_sent"]),
        Goal("exit code", "0", str(res["exit_code"]), res["exit_code"] == 0),
        Goal("NaN/Inf heading never used", "0 NaN-heading frames with heading_source pose",
             str(nan_pose := next(r["heading_from_pose"] for r in res["by_kind"] if r["kind"] == "nan-heading")),
             nan_pose == 0),
    ]
    c = res["config"]
    notes = [
        f"{cfg.frames} frames at {cfg.fps:g} fps: a closed {cfg.loop_frames}-frame flight over a 480 x 400 m procedural "
        f"noise map ({cfg.frame_m:g} m frames, 128 px, camera top = heading) replayed in a loop on a continuous clock; "
        f"tiny 8-node ONNX embedder, 100 m tiles every 25 m, NCC registration at {cfg.register_px} px against the map.",
        f"Injected: black {c['black']:.0%}, featureless {c['featureless']:.0%} (half flat grey + sensor noise sigma 2, "
        f"half a smooth ramp + the same noise), NaN/Inf heading (telemetry CSV cells nan/inf/-inf) {c['nan_heading']:.0%} "
        f"of frames, half of each in bursts of 2..{cfg.burst_len}; the pymavlink autopilot also sends ATTITUDE with a "
        "NaN yaw every 0.1 s once it hears skyloc's heartbeat (`nan_attitudes_dropped`: dropped by the link; the "
        "few not counted arrived after the link closed).",
        "The quality gate stops the black and flat frames (low-contrast); the noisy ramps pass it (sensor noise "
        "reads as texture, an open bug in runtime/localize/quality.py) and give fixes that registration never verifies, "
        "so none is sent: the `fixes` / `verified` / `sent_3d` columns of the per-kind table show both layers.",
        f"Wrong 3D fix: a 3D fix farther than {cfg.wrong_m:g} m from the truth, or any 3D fix for a black / "
        "featureless frame. A NaN-heading frame may be localized by rotation search (its heading is unknown, its "
        "image is good): those 3D fixes are counted in `on_nan_heading` and held to the distance test.",
        "Channels are decoded independently: records (JSON lines, bare NaN refused), GPS_INPUT by pymavlink on a "
        "udpin socket (frame from time_usec), NMEA GGA by a parser here with its own checksum check (frame from "
        "the UTC time).",
        f"Run time {res['seconds']} s on this (shared) machine.",
    ]
    return write_results(
        name, res["channels"], results_dir, title="Soak: bad frames and NaN headings, no wrong 3D fix",
        columns=["channel", "fixes_3d", "on_black_or_featureless", "on_nan_heading", "farther_than_wrong_m",
                 "wrong_3d", "median_err_m", "max_err_m"],
        goals=goals, notes=notes, command=command,
        extra_tables=[("Per frame kind", "kinds", res["by_kind"],
                       ["kind", "frames", "records", "skipped", "skip_reasons", "fixes", "verified", "sent_3d",
                        "heading_from_pose"]),
                      ("Summary", "summary", summary, ["quantity", "value"])],
    )
