"""`skyloc demo`: the whole pipeline on the built-in procedural world (or the user's own map),
chaining the stage functions in-process: map -> synthetic dataset -> train a small MSBA ->
ONNX -> INT8 (ONNX Runtime U8S8) -> tile set (+ map imagery) -> simulated flight (altitude
wandering, camera tilted, heading changing) -> `run` (heading unknown: rotation search, map
registration) -> report (error, verified-fix rate, accuracy calibration, per-stage latency).

Sized to finish in under 5 minutes on a 2-core laptop CPU: training is most of it, and the map
registration (not retrieval) makes the metre-level fix, so a small model trained for a few epochs
is enough to find the place inside the start prior and to re-find it. A re-run into the same
folder with the same world, dataset and training settings reuses the trained model (`--retrain`
trains afresh)."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from skyloc.core.atomic import write_json_atomic
from skyloc.runtime.localize.map_match import LEARNED
from skyloc.core.options import number

DEMO_STEPS = ("map", "dataset", "train", "export", "int8", "tiles", "flight", "run", "report")


@dataclass
class DemoConfig:
    out: Path = Path("skyloc-demo")
    map_path: Path | None = None  # GeoTIFF or PNG + corners CSV; None: procedural world
    seed: int = 0
    world_size_m: float = 1000.0
    locations: int = 40
    drone_per_location: int = 6
    image_px: int = 64  # dataset images; the model input follows the preset's size
    spiral_scale: float = 0.5
    min_separation_m: float | None = None  # between dataset locations; None: half a satellite crop
    epochs: int = 10
    lr: float = 1e-3
    stride_m: float = 40.0
    flight_seconds: float = 40.0
    fps: float = 2.0
    speed_mps: float = 8.0
    tilt_max_deg: float = 10.0  # the camera tilts forward up to this
    attitude_deg: float = 2.0  # airframe roll / pitch wander
    altitude_spread: float = 1.25  # altitude wanders from the lowest that covers a tile to this factor above
    start_radius_m: float = 200.0  # start prior around the take-off point
    calib_images: int = 64
    # the registration method `run` uses (runtime/register/registry.py REGISTRARS): the one place to change it;
    # a learned one (xfeat) also exports the pretrained matcher and stores the map's features with the tiles
    registrar: str = "xfeat"
    retrain: bool = False  # train afresh even when the folder holds a model trained on the same settings

    @classmethod
    def quick(cls, out: Path, **kw: Any) -> "DemoConfig":
        """The test suite's demo (its model is the one the accuracy tests share): same stages, a 20 s
        flight, 12 epochs, 48 calibration images."""
        base = dict(out=out, world_size_m=1000.0, locations=40, drone_per_location=6, epochs=12,
                    flight_seconds=20.0, calib_images=48)
        base.update(kw)
        return cls(**base)


def lowest_altitude_m(fcfg: Any, tile_m: float) -> float:
    """The lowest altitude at which every frame of the flight covers one tile at any rotation (heading
    unknown), at the flight's worst camera tilt and airframe attitude."""
    from skyloc.runtime.pose.camera import CameraModel
    from skyloc.runtime.pose.frame_pose import FramePose
    from skyloc.runtime.localize.rectify import ground_coverage_m

    cam = CameraModel.from_hfov(fcfg.fov_deg, fcfg.width, fcfg.height)
    a, worst = fcfg.attitude_deg, math.inf
    for tilt in {fcfg.tilt_deg, fcfg.tilt_max_deg or fcfg.tilt_deg}:
        for roll in (-a, 0.0, a):
            for pitch in (-a, 0.0, a):
                pose = FramePose(altitude_m=1.0, roll_deg=roll, pitch_deg=pitch, camera_tilt_deg=tilt)
                worst = min(worst, ground_coverage_m(cam, pose, rotation_free=True))
    return 1.05 * tile_m / worst


KEY_FILE = "demo-training.json"


def training_settings(cfg: DemoConfig) -> tuple[Any, Any, Any]:
    """(dataset, model, training) configs of the demo's model."""
    from skyloc.synth.camera import SpiralConfig
    from skyloc.synth.dataset import SynthDatasetConfig
    from skyloc.training.config import preset

    dcfg = SynthDatasetConfig(locations=cfg.locations, drone_per_location=cfg.drone_per_location,
                              test_fraction=0.1, image_px=cfg.image_px, spiral=SpiralConfig(scale=cfg.spiral_scale),
                              seed=cfg.seed, overwrite=True, min_separation_m=cfg.min_separation_m)
    mc, tc = preset("tiny", epochs=cfg.epochs, lr=cfg.lr, drones_per_location=4, seed=cfg.seed)
    return dcfg, mc, tc


def training_key(world: Path, dcfg: Any, mc: Any, tc: Any) -> str:
    """What the trained model depends on: the world's bytes (the procedural world's folder, or the map
    file and its same-named siblings such as a corners CSV), the dataset and the model / training
    settings, and the skyloc version."""
    from skyloc import __version__
    from skyloc.core.sidecar import sha256_file

    world = Path(world)
    files = sorted(p for p in (world.rglob("*") if world.is_dir() else {world, *world.parent.glob(world.stem + ".*")})
                   if p.is_file())
    ident = [(p.relative_to(world.parent).as_posix(), sha256_file(p)) for p in files]
    blob = json.dumps([__version__, ident, asdict(dcfg), asdict(mc), asdict(tc)], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def reusable_checkpoint(run_dir: Path, key: str) -> Path | None:
    """The checkpoint a previous demo in this folder trained with the same key, or None."""
    try:
        rec = json.loads((run_dir / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    ckpt = run_dir / str(rec.get("checkpoint", ""))
    return ckpt if rec.get("key") == key and ckpt.is_file() and ckpt.suffix == ".pt" else None


def _step(i: int, name: str, what: str) -> float:
    print(f"[{i}/{len(DEMO_STEPS)}] {name}: {what}", flush=True)
    return time.perf_counter()


def _done(t0: float, detail: str) -> None:
    print(f"      done in {time.perf_counter() - t0:.1f} s — {detail}", flush=True)


def run_demo(cfg: DemoConfig, progress: bool = True) -> Path:
    """Run every stage into cfg.out; returns the path of report.json."""
    from skyloc.export.onnx_export import export_onnx
    from skyloc.calibration.quantize import calibrate
    from skyloc.runtime.run.loop import RunOptions, run
    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.outputs.writers import JsonLinesOutput
    from skyloc.runtime.maps.imagery import imagery_record
    from skyloc.runtime.run.stats import load_truth_table
    from skyloc.runtime.maps.tileset_build import build_tileset
    from skyloc.runtime.maps.tiles_cli import extract_map_features
    from skyloc.export.matcher import export_matcher
    from skyloc.pipelines.demo_report import write_report
    from skyloc.synth.camera import SpiralConfig, mid_spiral_ground_width_m
    from skyloc.synth.dataset import make_dataset
    from skyloc.synth.flight import FlightConfig, make_flight
    from skyloc.synth.world import make_world
    from skyloc.training.train import train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t, 2)
        return result

    t = _step(1, "map", "procedural world" if cfg.map_path is None else f"your map {cfg.map_path}")
    if cfg.map_path is None:
        world = timed("map", lambda: make_world(out / "world", seed=cfg.seed, size_m=cfg.world_size_m, mpp=1.0))
    else:
        world = Path(cfg.map_path)
        timed("map", lambda: open_map(world))  # fail now, with the reader's message, not after training
    _done(t, str(world))

    spiral = SpiralConfig(scale=cfg.spiral_scale)
    tile_m = mid_spiral_ground_width_m(spiral)  # the satellite crop size the model learns from
    t = _step(2, "dataset", f"{cfg.locations} locations x {cfg.drone_per_location} drone views "
                            f"(University-1652 layout, spiral scale {cfg.spiral_scale})")
    dcfg, mc, tc = training_settings(cfg)
    data = timed("dataset", lambda: make_dataset(world, out / "data", dcfg))
    _done(t, str(data))

    t = _step(3, "train", f"MSBA {mc.backbone} @ {mc.image_size} px, {tc.epochs} epochs (CPU is fine)")
    run_dir = out / "run"
    key = training_key(world, dcfg, mc, tc)
    ckpt = reusable_checkpoint(run_dir, key) if not cfg.retrain else None
    if ckpt is not None:
        timings["train"] = 0.0
        _done(t, f"reused {ckpt} (trained earlier on the same world, dataset and settings; --retrain to redo)")
    else:
        if run_dir.exists():  # a re-run with other settings starts training afresh
            for p in [*run_dir.glob("*.pt"), run_dir / KEY_FILE]:
                p.unlink(missing_ok=True)
        ckpt = timed("train", lambda: train(data, run_dir, mc, tc, resume=True, progress=progress))
        write_json_atomic(run_dir / KEY_FILE, {"key": key, "checkpoint": Path(ckpt).name})
        _done(t, str(ckpt))

    learned = cfg.registrar in LEARNED
    t = _step(4, "export", "ONNX, full variant, uint8 input with normalisation baked in"
                           + (" + the pretrained XFeat matcher" if learned else ""))
    fp32 = timed("export", lambda: export_onnx(ckpt, out / "model.onnx", variant="full"))
    matcher = export_matcher("xfeat", out / "matcher.onnx") if learned else None
    _done(t, str(fp32) + (f", {matcher}" if matcher else ""))

    t = _step(5, "int8", f"calibrate on {cfg.calib_images} images -> QDQ U8S8 (ONNX Runtime) + S8S8 (TensorRT)")
    cal = timed("int8", lambda: calibrate(fp32, [data / "train" / "satellite", data / "train" / "drone"],
                                          out / "int8", num_images=cfg.calib_images, progress=progress))
    model = cal["int8-ort"]
    _done(t, str(model))

    t = _step(6, "tiles", f"tile set: {tile_m:.0f} m tiles every {cfg.stride_m:.0f} m, with its map imagery"
                          + (" and the map's XFeat features" if learned else ""))
    imagery = imagery_record(world, out / "tiles.npz")  # registration reads the map through it (sha256-checked)
    features = extract_map_features(matcher, out / "tiles.npz", imagery, overwrite=True, progress=progress) \
        if matcher else None
    tiles = timed("tiles", lambda: build_tileset(model, world, out / "tiles.npz", tile_m=tile_m,
                                                 stride_m=cfg.stride_m, backend="onnxruntime", progress=progress,
                                                 imagery=imagery, map_features=features))
    _done(t, str(tiles))

    fcfg = FlightConfig(seconds=cfg.flight_seconds, fps=cfg.fps, speed_mps=cfg.speed_mps, seed=cfg.seed,
                        tilt_max_deg=cfg.tilt_max_deg, attitude_deg=cfg.attitude_deg, yaw_mode="random-walk",
                        overwrite=True)
    lo = lowest_altitude_m(fcfg, tile_m)
    fcfg.altitude_range_m = (round(lo, 1), round(lo * cfg.altitude_spread, 1))
    t = _step(7, "flight", f"{cfg.flight_seconds:.0f} s simulated flight at {cfg.fps:g} fps, altitude "
                           f"{fcfg.altitude_range_m[0]:.0f}-{fcfg.altitude_range_m[1]:.0f} m, camera tilt up to "
                           f"{cfg.tilt_max_deg:g} deg, heading wandering")
    video = timed("flight", lambda: make_flight(world, out / "flight", fcfg))
    truth = video.parent / "truth.csv"
    _done(t, str(video))

    t = _step(8, "run", "localize every frame with ONNX Runtime: heading unknown (rotation search + "
                        "registration), altitude and attitude from the flight log, start prior around take-off")
    fixes = out / "fixes.jsonl"
    take_off = load_truth_table(truth)[0]
    opts = RunOptions(backend="onnxruntime", camera=str(video.parent / "flight.json"), telemetry=str(truth),
                      use_heading=False, start=(take_off["lat"], take_off["lon"], cfg.start_radius_m),
                      truth=str(truth), handle_signals=False, registrar=cfg.registrar,
                      evidence=str(out / "evidence"), overwrite=True)  # the demo owns its folder
    # the demo owns its folder: its outputs are replaced on a re-run
    stats = timed("run", lambda: run(model, tiles, str(video), [JsonLinesOutput(fixes, overwrite=True)], opts))
    _done(t, stats.summary().splitlines()[0])

    t = _step(9, "report", "table, trajectory and retrieval example")
    report = write_report(out, world=world, fixes=fixes, truth=truth, tiles=tiles, model=model, video=video,
                          stats=stats, stride_m=cfg.stride_m, evidence=out / "evidence",
                          extra={"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                                 "stage_seconds": timings, "model_reused": timings.get("train") == 0.0,
                                 "total_seconds": round(time.perf_counter() - t_start, 1),
                                 "calibration_report": str(cal["report_md"])})
    _done(t, str(report))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the whole skyloc pipeline in one command: a procedural world (or --map), a synthetic "
        "University-1652-style dataset, a small MSBA trained on the CPU, ONNX export, INT8 "
        "calibration, a tile set of the map (with its imagery), a simulated flight over it (altitude "
        "wandering, camera tilted, heading unknown to the run), and `skyloc run` on the flight video "
        "with rotation search and map registration. Prints a report and writes PNGs to --out.")
    parser.add_argument("--out", type=Path, default=Path("skyloc-demo"), help="output folder (re-runs overwrite it)")
    parser.add_argument("--map", type=Path, default=None,
                        help="your own orthophoto: GeoTIFF, or PNG/JPEG tiles with a corners CSV (default: procedural world)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller dataset and a 20 s flight (the test suite's settings)")
    parser.add_argument("--retrain", action="store_true",
                        help="train afresh even when --out holds a model trained on the same world and settings")
    parser.add_argument("--registrar", choices=("ncc", *LEARNED), default=DemoConfig.registrar,
                        help="registration method: ncc (normalized cross-correlation of gradients) or xfeat (the "
                             "pretrained learned matcher: exported, and the map's features stored with the tiles)")
    parser.add_argument("--seed", type=number(int, ge=0, le=2**32 - 1), default=0)
    parser.add_argument("--epochs", type=number(int, ge=1, le=10_000), default=None, help="training epochs (default 10, quick 12)")
    parser.add_argument("--seconds", type=number(gt=0, le=86_400), default=None, help="flight length in seconds (default 40, quick 20)")
    parser.add_argument("--fps", type=number(gt=0, le=1000), default=None, help="flight frame rate (default 2)")


def main(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {"seed": args.seed, "map_path": args.map, "retrain": args.retrain,
                          "registrar": args.registrar}
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    if args.seconds is not None:
        kw["flight_seconds"] = args.seconds
    if args.fps is not None:
        kw["fps"] = args.fps
    if args.map is not None:
        # a real map is usually smaller than the procedural world and has holes: a tighter
        # spiral and closer locations still fit it
        kw.update(spiral_scale=0.4, min_separation_m=15.0)
    cfg = DemoConfig.quick(args.out, **kw) if args.quick else DemoConfig(out=args.out, **kw)
    report = run_demo(cfg)
    print((report.parent / "report.md").read_text())
    return 0
