"""`skyloc bench latency|search|accuracy|runtime|flight|flight-latency|faults|soak`.

Thin layer: each sub-subcommand parses its options and calls one benchmark function, which
writes benchmarks/results/<name>.{csv,md,png}. Nothing here imports torch; only `accuracy` and
the checkpoint modes of `latency` / `runtime` load it (inside the benchmark).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter


def _csv(cast=str):
    def parse(s: str) -> list:
        try:
            return [cast(x.strip()) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of {cast.__name__}") from None
    return parse


def _int_like(s: str) -> int:
    return int(float(s))  # accepts 1e5


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--results-dir", type=Path, default=None,
                   help="where <name>.csv/.md/.png go (default: benchmarks/results/ of the skyloc "
                        "checkout; required when skyloc is installed as a package)")
    p.add_argument("--name", default=name, help="base name of the results files")
    p.add_argument("--threads", type=int, default=0, help="intra-op / OpenMP threads (0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    fmt = HelpFormatter  # defaults shown only when they say something

    p = sub.add_parser("latency", formatter_class=fmt,
                       help="model inference latency per backend / precision / variant / batch / size")
    p.add_argument("--models", nargs="+", type=Path, default=[], help="ONNX models (or engines) with sidecars")
    p.add_argument("--checkpoint", type=Path, help="export + calibrate from this checkpoint instead of --models")
    p.add_argument("--variants", type=_csv(), default=["full", "global"], help="with --checkpoint")
    p.add_argument("--precisions", type=_csv(), default=None,
                   help="with --checkpoint; None = fp32,int8-ort; plus fp16,int8-trt when a GPU backend is present")
    p.add_argument("--sizes", type=_csv(int), default=None,
                   help="input sizes (with --checkpoint: re-exported per size; with --models: filter)")
    p.add_argument("--calib-images", type=Path, help="folder of calibration images; None = synthetic")
    p.add_argument("--calib-count", type=int, default=32, help="calibration images")
    p.add_argument("--with-backbone", type=Path, metavar="CKPT",
                   help="also time the bare backbone of this checkpoint (heads-overhead goal)")
    p.add_argument("--backends", type=_csv(), default=None,
                   help="backends; None = every one available: onnxruntime CPU/CUDA/TRT EPs, tensorrt")
    p.add_argument("--batches", type=_csv(int), default=[1, 8])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--baseline", default="precision=fp32,variant=full",
                   help="key=value filter picking the baseline row within each (backend, batch, size) group")
    p.add_argument("--e2e-tiles", type=_int_like, default=100_000,
                   help="also time inference + exact search over this many tiles at batch 1 (0: off)")
    p.add_argument("--work-dir", type=Path, help="keep exported models here; None = a temp dir")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    _common(p, "latency")

    p = sub.add_parser("search", formatter_class=fmt, help="tile search scaling: exact vs faiss flat/HNSW/IVF-PQ")
    p.add_argument("--dims", type=_csv(int), default=[512, 3584])
    p.add_argument("--tiles", type=_csv(_int_like), default=[1000, 10_000, 100_000, 1_000_000])
    p.add_argument("--kinds", type=_csv(), default=["exact", "flat", "hnsw", "ivfpq"])
    p.add_argument("--queries", type=int, default=1000, help="queries for top-1 agreement")
    p.add_argument("--timed-queries", type=int, default=200, help="single queries timed one by one")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tileset", type=Path, help="real embeddings from this tile set; None = synthetic")
    p.add_argument("--max-gb", type=float, default=6.0, help="skip combinations needing more memory")
    p.add_argument("--hnsw-m", type=int, help="HNSW links per node; None = the runtime matcher's default")
    p.add_argument("--ef-construction", type=int, help="HNSW build beam; None = the runtime matcher's default")
    p.add_argument("--ef-search", type=int, help="HNSW search beam; None = the runtime matcher's default")
    p.add_argument("--nlist", type=int, help="IVF lists; None = the runtime matcher's default, ~4 sqrt(n)")
    p.add_argument("--nprobe", type=int, help="IVF lists probed; None = the runtime matcher's default")
    p.add_argument("--pq-m", type=int, help="PQ sub-quantizers; None = the runtime matcher's default")
    p.add_argument("--rerank", type=int, 
                   help="IVF-PQ: re-rank k*RERANK candidates exactly; None = the runtime matcher's default")
    p.add_argument("--seed", type=int, default=0)
    _common(p, "search")

    p = sub.add_parser("accuracy", formatter_class=fmt,
                       help="paper Table 3 ablation + Table 7 per-part results on a (synthetic) dataset")
    p.add_argument("--data", type=Path, help="University-1652-layout dataset; None = generate a procedural one")
    p.add_argument("--presets", type=_csv(), default=None, help="ablation rows; None = all of Table 3")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--size", type=int, default=64, help="input size")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3,
                   help="heads' learning rate, backbone x0.1 (from random init at batch 16, 1e-2 diverged: the "
                        "lpn row's loss rose 33 -> 40 over 4 epochs; 3e-3 fell 32 -> 26)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--locations", type=int, default=40, help="locations of the generated dataset")
    p.add_argument("--drones-per-location", type=int, default=4, help="paired training rows per location per epoch")
    p.add_argument("--pretrained", default="", help="local ImageNet weights for the backbone (same for every row)")
    p.add_argument("--work-dir", type=Path, help="keep data and runs here; None = a temp dir")
    p.add_argument("--no-quant", action="store_true", help="skip the FP32 vs INT8 ONNX accuracy check")
    p.add_argument("--seeds", type=int, default=1,
                   help="train every row with this many seeds; mean, 95%% interval and paired t-tests per step")
    p.add_argument("--sizes", type=_csv(int), default=None,
                   help="Table 6: train and test the final row at each of these input sizes, e.g. 48,64,96")
    p.add_argument("--ablation-data", action=argparse.BooleanOptionalAction, default=None,
                   help="multi-map nadir + spiral dataset (--locations per map); default: on with --seeds > 1")
    p.add_argument("--worlds", type=int, default=2, help="procedural worlds in the ablation dataset (+ Turku if present)")
    p.add_argument("--drone-views", type=int, default=8, help="drone views per location in the ablation dataset")
    _common(p, "accuracy")

    p = sub.add_parser("runtime", formatter_class=fmt,
                       help="end-to-end frame -> fix latency vs inference alone; memory soak")
    p.add_argument("--model", type=Path, help="ONNX model with sidecar")
    p.add_argument("--checkpoint", type=Path, help="export the model from this checkpoint instead")
    p.add_argument("--tiles", type=Path, help="tile set of the model; None = built on a procedural world")
    p.add_argument("--pad-tiles", type=_int_like, default=10_000, help="pad the tile set with distractors")
    p.add_argument("--video", help="flight video / image folder; None = a synthetic flight")
    p.add_argument("--frames", type=int, default=10_000, help="frames of the soak (the video is looped)")
    p.add_argument("--flight-seconds", type=float, default=30.0, help="length of the generated flight")
    p.add_argument("--backend", default="auto")
    p.add_argument("--work-dir", type=Path)
    _common(p, "runtime")

    p = sub.add_parser("flight", formatter_class=fmt,
                       help="localization to metres: the real aerovloc photo (300 m prior) + simulated flights")
    p.add_argument("--model", type=Path, help="ONNX model with sidecar for the simulated flights; None = photo only")
    p.add_argument("--maps", type=_csv(), default=["procedural", "turku", "aerovloc"])
    p.add_argument("--altitudes", type=_csv(float), default=[80.0, 150.0, 250.0], help="flight altitude bands, m")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each simulated flight")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second of the simulated flights")
    p.add_argument("--no-photo", action="store_true", help="skip the real-photo registration")
    p.add_argument("--no-stage", action="store_true", help="skip the registration-stage flights (right place given)")
    p.add_argument("--no-prior", action="store_true",
                   help="pipeline flights without the take-off start prior (300 m radius, centred 150 m off)")
    p.add_argument("--work-dir", type=Path, help="keep flights and tile sets here; None = a temp dir")
    _common(p, "flight")

    p = sub.add_parser("flight-latency", formatter_class=fmt,
                       help="issue 12 latency goal: frame -> fix p50 over inference alone, heading known/unknown "
                            "x registration on/off (ResNet-50 INT8, 256 px)")
    p.add_argument("--model", type=Path, help="ONNX model with sidecar; None = a random-init msba preset "
                                              "(ResNet-50, 256 px) exported and quantized to INT8 here")
    p.add_argument("--frames", type=int, default=12, help="frames of the synthetic flight")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second of the flight")
    p.add_argument("--world-m", type=float, default=1000.0, help="side of the procedural world, m")
    p.add_argument("--stride-m", type=float, default=40.0, help="tile stride, m")
    p.add_argument("--calib-count", type=int, default=16, help="calibration crops for the INT8 model")
    p.add_argument("--infer-runs", type=int, default=30, help="timed inference-alone runs per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, help="keep the model, flight and tile set here; None = a temp dir")
    _common(p, "flight-latency")

    p = sub.add_parser("faults", formatter_class=fmt,
                       help="fault-injection matrix (issue 13): counts per verdict, clear error ... data loss")
    p.add_argument("--groups", type=_csv(), default=None,
                   help="only these case groups (tiles, maps, sidecar, faiss, scratch, export, train, calibrate, run)")
    p.add_argument("--work-dir", type=Path, help="keep the cases' worlds here; None = a temp dir")
    _common(p, "faults")

    p = sub.add_parser("soak", formatter_class=fmt,
                       help="long run with black / featureless frames and NaN headings injected: no wrong 3D fix")
    p.add_argument("--frames", type=_int_like, default=10_000, help="frames (a short closed flight replayed in a loop)")
    p.add_argument("--share", type=float, default=0.10, help="share of frames of each injected kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, help="keep the world and the outputs here; None = a temp dir")
    _common(p, "soak")


def _limit_threads(n: int) -> None:
    """--threads for the libraries that read it from the environment at load time (OpenBLAS /
    OpenMP under numpy and faiss); a no-op for those already loaded, which then use all cores."""
    if n > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


def main(args: argparse.Namespace) -> int:
    progress = not args.quiet
    _limit_threads(args.threads)
    from skyloc.benchmarks.report import command_line

    command = command_line()
    if args.bench == "search":
        from skyloc.benchmarks.search import SyntheticSpec, bench_search

        given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
        params = {"hnsw": given(M=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search),
                  "ivfpq": given(nlist=args.nlist, nprobe=args.nprobe, m=args.pq_m, rerank=args.rerank)}
        params = {k: v for k, v in params.items() if v}
        paths = bench_search(
            dims=args.dims, tiles=args.tiles, kinds=args.kinds, queries=args.queries,
            timed_queries=args.timed_queries, k=args.k, tileset=args.tileset, max_gb=args.max_gb,
            threads=args.threads, params=params, spec=SyntheticSpec(seed=args.seed), results_dir=args.results_dir,
            name=args.name, command=command, progress=progress,
        )
    elif args.bench == "latency":
        from skyloc.benchmarks.latency import bench_latency

        if not args.models and not args.checkpoint:
            raise SkylocError("give --models M1.onnx ... or --checkpoint CKPT (exported and calibrated per size)")
        paths = bench_latency(
            models=args.models, checkpoint=args.checkpoint, variants=args.variants, precisions=args.precisions,
            sizes=args.sizes, calib_images=args.calib_images, calib_count=args.calib_count,
            backbone_checkpoint=args.with_backbone, backends=args.backends, batches=args.batches, runs=args.runs,
            warmup=args.warmup, baseline=args.baseline, e2e_tiles=args.e2e_tiles, threads=args.threads,
            work_dir=args.work_dir, opset=args.opset, results_dir=args.results_dir, name=args.name,
            command=command, progress=progress,
        )
    elif args.bench == "faults":
        from skyloc.benchmarks.fault_bench import bench_faults

        paths = bench_faults(work_dir=args.work_dir, groups=args.groups, results_dir=args.results_dir,
                             name=args.name, command=command, progress=progress)
    elif args.bench == "soak":
        from skyloc.benchmarks.soak import SoakConfig, bench_soak

        cfg = SoakConfig(frames=args.frames, black=args.share, featureless=args.share, nan_heading=args.share,
                         seed=args.seed)
        paths = bench_soak(cfg, work_dir=args.work_dir, results_dir=args.results_dir, name=args.name,
                           command=command, progress=progress)
    elif args.bench == "flight":
        from skyloc.benchmarks.flight import bench_flight

        paths = bench_flight(
            model=args.model, maps=args.maps, altitudes=args.altitudes, seconds=args.seconds, fps=args.fps,
            work_dir=args.work_dir, photo=not args.no_photo, stage=not args.no_stage, prior=not args.no_prior,
            results_dir=args.results_dir, name=args.name,
            command=command, progress=progress,
        )
    elif args.bench == "flight-latency":
        from skyloc.benchmarks.flight_latency import bench_flight_latency

        paths = bench_flight_latency(
            model=args.model, frames=args.frames, fps=args.fps, world_size_m=args.world_m, stride_m=args.stride_m,
            calib_count=args.calib_count, infer_runs=args.infer_runs, seed=args.seed, threads=args.threads,
            work_dir=args.work_dir, results_dir=args.results_dir, name=args.name, command=command, progress=progress,
        )
    elif args.bench == "accuracy":
        from skyloc.benchmarks.accuracy import bench_accuracy

        paths = bench_accuracy(
            data=args.data, presets=args.presets, epochs=args.epochs, size=args.size, backbone=args.backbone,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, locations=args.locations,
            drones_per_location=args.drones_per_location, pretrained=args.pretrained,
            work_dir=args.work_dir, quant=not args.no_quant, threads=args.threads, results_dir=args.results_dir,
            name=args.name, command=command, progress=progress, seeds=args.seeds, sizes=args.sizes,
            ablation_data=args.ablation_data, worlds=args.worlds, drone_views=args.drone_views,
        )
    else:
        from skyloc.benchmarks.runtime_bench import bench_runtime

        if not args.model and not args.checkpoint:
            raise SkylocError("give --model M.onnx (exported with `skyloc export`) or --checkpoint CKPT")
        paths = bench_runtime(
            model=args.model, checkpoint=args.checkpoint, tiles=args.tiles, pad_tiles=args.pad_tiles,
            video=args.video, frames=args.frames, flight_seconds=args.flight_seconds, backend=args.backend, threads=args.threads,
            work_dir=args.work_dir, results_dir=args.results_dir, name=args.name, command=command,
            progress=progress,
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
