"""`skyloc bench flight-latency`: the latency goal, frame -> fix p50 over inference alone (at most
2x with registration, 1.15x without: TARGETS).

A random-init ResNet-50 MSBA (the `msba` preset, 256 px, full variant) is exported to ONNX and
quantized to INT8 (ONNX Runtime U8S8) — latency does not depend on the weights — or `--model` is
used as given. A short synthetic flight like the demo's (altitude wandering, camera tilted,
heading wandering) runs through the real loop four ways: heading known / unknown x registration
on / off. frame -> fix = total - grab of each record; inference alone = the same backend's embed
in a tight loop at the loop's batch (1, or the rotations when the heading is unknown), timed
right after each flight so both see the same machine load. With `--matcher` the tile set carries
learned map features, so registration is the learned registrar (issue 22's targets: LEARNED_TARGETS).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.benchmarks.goals import busy, load_notes
from skyloc.benchmarks.report import Goal, default_results_dir, machine_info, write_csv, write_results
from skyloc.benchmarks.runtime_bench import frame_to_fix
from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.writers import Output
from skyloc.runtime.run.stats import STAGES

TARGETS = {True: 2.0, False: 1.15}  # registration on / off: frame -> fix p50 over inference alone
# with the learned registrar (issue 22, `--matcher`), registration on: heading known / unknown
LEARNED_TARGETS = {True: 2.5, False: 5.0}
# they change how the BLAS search and the ONNX Runtime threads share the cores: recorded per run
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
CASES = ((True, True), (True, False), (False, True), (False, False))  # (heading known, registration)


class _Records(Output):
    """Keeps every record the loop writes (a few dozen frames: memory is no concern)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def world_crops(map_png: Path, size: int, count: int, crop_px: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, size, size, 3): random square crops of the map, resized to the model input."""
    import cv2

    img = cv2.imread(str(map_png), cv2.IMREAD_COLOR)
    if img is None:
        raise SkylocError(f"{map_png}: cannot read the map image for calibration crops")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    crop_px = max(8, min(crop_px, h, w))
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        y, x = int(rng.integers(0, h - crop_px + 1)), int(rng.integers(0, w - crop_px + 1))
        out[i] = cv2.resize(img[y:y + crop_px, x:x + crop_px], (size, size), interpolation=cv2.INTER_AREA)
    return out


def make_msba_int8(work: Path, map_png: Path, crop_px: int, calib_count: int = 16, seed: int = 0,
                   progress: bool = True) -> Path:
    """Random-init `msba` preset (ResNet-50, 256 px) -> checkpoint -> ONNX (full) -> INT8 for ONNX
    Runtime, calibrated on `calib_count` crops of the map. Returns the `*.int8-ort.onnx` path."""
    import torch

    from skyloc.calibration.quantize import quantize_pair
    from skyloc.export.onnx_export import export_onnx
    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    torch.manual_seed(seed)
    mc, tc = preset("msba")
    net = build_model(mc).eval()
    ckpt = save_checkpoint(work / "msba-random.pt", net, mc, tc)
    del net
    fp32 = export_onnx(ckpt, work / f"msba-{mc.image_size}.onnx", variant="full")
    images = world_crops(map_png, mc.image_size, calib_count, crop_px, seed)
    paths = quantize_pair(fp32, images, work / "int8", progress=progress,
                          extra_info={"calibration_source": "benchmark: procedural world crops"})
    return Path(paths["int8-ort"])


def _p50(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, np.float64), 50)) if len(values) else math.nan


def case_row(records: Sequence[dict[str, Any]], heading: bool, register: bool, alone: dict[str, float],
             batch: int, learned: bool = False) -> dict[str, Any]:
    """One row: stage p50s of the records, frame -> fix p50 and its ratio to inference alone."""
    lat = [r.get("latency_ms", {}) for r in records]
    f2f = [x for x in map(frame_to_fix, lat) if x is not None]
    row: dict[str, Any] = {
        "heading": "known" if heading else "unknown",
        "registration": ("xfeat" if learned else "on") if register else "off",
        "frames": len(records), "fix_frames": len(f2f),
        "skipped": sum(1 for r in records if "skipped" in r),
        "verified": sum(1 for r in records if r.get("verified")),
        "batch": batch,
        "frame_to_fix_p50_ms": _p50(f2f),
        "infer_alone_p50_ms": alone["p50_ms"],
    }
    row["ratio"] = row["frame_to_fix_p50_ms"] / row["infer_alone_p50_ms"]
    row["target"] = LEARNED_TARGETS[heading] if register and learned else TARGETS[register]
    row["met"] = bool(row["ratio"] <= row["target"]) if math.isfinite(row["ratio"]) else None
    for s in STAGES:
        row[f"{s}_p50_ms"] = _p50([v[s] for v in lat if s in v])
    return row


def frame_rows(records: Sequence[dict[str, Any]], heading: bool, register: bool,
               learned: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(records):
        lat = r.get("latency_ms", {})
        out.append({"heading": "known" if heading else "unknown",
                    "registration": ("xfeat" if learned else "on") if register else "off",
                    "frame": r.get("frame", i), "frame_to_fix_ms": frame_to_fix(lat),
                    **{s: lat.get(s) for s in STAGES}})
    return out


def latency_goals(rows: Sequence[dict[str, Any]], machine: dict[str, Any]) -> list[Goal]:
    goals = []
    why_busy = " (the machine was busy during the run: see Notes)" if busy(machine) else ""
    for r in rows:
        name = f"frame -> fix, heading {r['heading']}, registration {r['registration']}"
        target = f"p50 <= {r['target']:g} x inference alone (batch {r['batch']})"
        if r["met"] is None:
            goals.append(Goal(name, target, "-", None, "no frame produced a fix"))
            continue
        measured = f"{r['ratio']:.2f}x ({r['frame_to_fix_p50_ms']:.1f} / {r['infer_alone_p50_ms']:.1f} ms)"
        goals.append(Goal(name, target, measured, r["met"], "" if r["met"] else why_busy.strip(" ()")))
    return goals


def bench_flight_latency(
    model: str | os.PathLike | None = None,
    frames: int = 12,
    fps: float = 2.0,
    world_size_m: float = 1000.0,
    stride_m: float = 40.0,
    calib_count: int = 16,
    infer_runs: int = 30,
    blank_cos: float = 1.0,
    seed: int = 0,
    threads: int = 0,
    work_dir: str | os.PathLike | None = None,
    results_dir: str | os.PathLike | None = None,
    name: str = "flight-latency",
    command: str | None = None,
    progress: bool = True,
    matcher: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write <results_dir>/<name>.csv (one row per case), <name>-frames.csv (every frame's stage
    latencies) and <name>.md (goals, machine, command); return their paths."""
    from skyloc.runtime.maps.tiles_cli import extract_map_features
    from skyloc.benchmarks.timing import time_backend
    from skyloc.pipelines.demo import lowest_altitude_m
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.maps.imagery import imagery_record
    from skyloc.runtime.run.loop import RunOptions, run
    from skyloc.runtime.run.stats import load_truth_table
    from skyloc.synth.camera import SpiralConfig, mid_spiral_ground_width_m
    from skyloc.synth.flight import FlightConfig, make_flight
    from skyloc.synth.world import make_world
    from skyloc.runtime.maps.tileset_build import build_tileset

    if not (isinstance(frames, int) and 2 <= frames <= 10_000):
        raise SkylocError(f"--frames {frames!r}: give 2 to 10000 frames")
    for label, v in (("--fps", fps), ("--world-m", world_size_m), ("--stride-m", stride_m)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise SkylocError(f"{label} {v!r}: give a positive finite number")
    if infer_runs < 3:
        raise SkylocError(f"--infer-runs {infer_runs}: give at least 3")
    out_dir = Path(results_dir) if results_dir else default_results_dir()  # fail before the slow part
    machine = machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-flight-latency-") if work_dir is None else None
    work = Path(work_dir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"[bench flight-latency] {msg}", flush=True)) if progress else (lambda msg: None)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    per_frame: list[dict[str, Any]] = []
    try:
        world = make_world(work / "world", seed=seed, size_m=world_size_m, mpp=1.0)
        tile_m = mid_spiral_ground_width_m(SpiralConfig(scale=0.5))  # the demo's tile size
        if model is None:
            say("model: random-init msba preset (ResNet-50, 256 px) -> ONNX -> INT8 (ONNX Runtime)")
            model = make_msba_int8(work, world.with_suffix(".png"), round(tile_m), calib_count, seed, progress)
            notes.append(f"Model: the `msba` preset (ResNet-50, 256 px, full variant) with random weights, exported "
                         f"to ONNX and quantized to INT8 U8S8 on {calib_count} crops of the procedural world "
                         "(latency does not depend on the weights).")
        model = Path(model)
        conf = {"intra_op_threads": threads} if threads else None
        be = open_backend(model, "onnxruntime", conf)
        try:
            fcfg = FlightConfig(seconds=frames / fps, fps=fps, speed_mps=8.0, seed=seed, tilt_max_deg=10.0,
                                attitude_deg=2.0, yaw_mode="random-walk", overwrite=True)
            lo = lowest_altitude_m(fcfg, tile_m)
            fcfg.altitude_range_m = (round(lo, 1), round(lo * 1.25, 1))
            video = make_flight(world, work / "flight", fcfg)
            truth = video.parent / "truth.csv"
            tiles = work / "tiles.npz"
            say(f"tile set: {tile_m:.0f} m tiles every {stride_m:g} m over a {world_size_m:g} m world")
            imagery = imagery_record(world, tiles)
            # with a matcher the tile set carries learned map features: `run` registers with them
            features = extract_map_features(matcher, tiles, imagery, overwrite=True, progress=False) if matcher else None
            build_tileset(be, world, tiles, tile_m=tile_m, stride_m=stride_m, backend="onnxruntime",
                          progress=progress, imagery=imagery, map_features=features)
            first = load_truth_table(truth)[0]
            for heading, register in CASES:
                opts = RunOptions(backend="onnxruntime", camera=str(video.parent / "flight.json"),
                                  telemetry=str(truth), use_heading=heading, register=register,
                                  start=(first["lat"], first["lon"], 200.0), blank_cos=blank_cos,
                                  handle_signals=False)
                batch = 1 if heading else opts.rotations
                say(f"run: heading {'known' if heading else 'unknown'}, registration {'on' if register else 'off'}")
                rec = _Records()
                run(be, tiles, str(video), [rec], opts)
                # right after the flight, so both see the same load; same session, same batch
                alone = time_backend(be, batch, infer_runs, max(2, infer_runs // 10))
                rows.append(case_row(rec.records, heading, register, alone, batch, learned=bool(matcher)))
                per_frame += frame_rows(rec.records, heading, register, learned=bool(matcher))
            description = be.description
        finally:
            be.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    notes += [
        f"Backend: {description}; model {model.name}.",
        f"Registration: {'the learned registrar on map features stored by ' + Path(matcher).name + ' (targets with registration: ' + str(LEARNED_TARGETS[True]) + 'x heading known, ' + str(LEARNED_TARGETS[False]) + 'x unknown)' if matcher else 'NCC'}.",
        f"Flight: {frames} frames at {fps:g} fps, {fcfg.width}x{fcfg.height} px, altitude "
        f"{fcfg.altitude_range_m[0]:g}-{fcfg.altitude_range_m[1]:g} m, camera tilt up to 10 deg, airframe attitude "
        f"+-2 deg, heading wandering (the demo's settings); truth.csv as telemetry (`--no-heading` for heading "
        "unknown), start prior at the first truth position, 200 m radius.",
        f"frame -> fix = total - grab of each record; inference alone = backend embed in a tight loop "
        f"({infer_runs} runs) at the loop's batch (1 with the heading known, {rows[-1]['batch']} rotations "
        "without), timed right after each flight on the same session. One run: ratios, not absolute speed.",
        f"blank_cos = {blank_cos:g}: the blank-frame skip is {'off' if blank_cos >= 1 else 'on'}, so every frame "
        "goes through every stage (a random-weight model maps most frames near the blank embedding).",
        "Every frame's stage latencies are in the `-frames.csv` beside this file.",
        "Thread settings from the environment: " + (", ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV
                                                         if k in os.environ) or "none (library defaults)") + ".",
    ] + load_notes(machine)
    md_cols = ["heading", "registration", "frames", "fix_frames", "skipped", "verified", "batch",
               "frame_to_fix_p50_ms", "infer_alone_p50_ms", "ratio", "target", "met"]
    stage_cols = ["heading", "registration"] + [f"{s}_p50_ms" for s in STAGES]
    paths = write_results(name, rows, out_dir, title="Flight latency: frame -> fix vs inference alone",
                          md_columns=md_cols, goals=latency_goals(rows, machine), notes=notes,
                          extra_tables=[("Per-stage p50 (ms)", "stages", rows, stage_cols)],
                          command=command, machine=machine)
    frame_cols = ["heading", "registration", "frame", "frame_to_fix_ms", *STAGES]
    paths["frames_csv"] = write_csv(out_dir / f"{name}-frames.csv", per_frame, frame_cols)
    return paths
