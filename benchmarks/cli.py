"""`skyloc bench latency|search|accuracy|runtime|flight|flight-latency|learned-gate|faults|soak`.

Thin layer: each sub-subcommand parses its options and calls one benchmark function, which
writes benchmarks/results/<name>.{csv,md,png}. Nothing here imports torch; only `accuracy` and
the checkpoint modes of `latency` / `runtime` load it (inside the benchmark).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter, add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skyloc.benchmarks.bench_options import BENCHES

    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (cls, help_) in BENCHES.items():
        add_options(sub.add_parser(name, formatter_class=HelpFormatter, help=help_), cls)


def _limit_threads(n: int) -> None:
    """--threads for the libraries that read it from the environment at load time (OpenBLAS /
    OpenMP under numpy and faiss); a no-op for those already loaded, which then use all cores."""
    if n > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


def _path(v: Any) -> Path | None:
    return None if v is None else Path(v)


def _list(v: Any) -> list | None:
    return None if v is None else list(v)


def main(args: argparse.Namespace) -> int:
    from skyloc.benchmarks.bench_options import BENCHES
    from skyloc.core.config import config_path_beside, options_from_args, write_resolved_config

    bench = args.bench
    args = options_from_args(BENCHES[bench][0], args, section=f"bench.{bench}")
    progress = not args.quiet
    _limit_threads(args.threads)
    from skyloc.benchmarks.report import command_line, default_results_dir

    command = command_line()
    results_dir = _path(args.results_dir)
    common = {"results_dir": results_dir, "name": args.name, "command": command, "progress": progress}
    if bench == "search":
        from skyloc.benchmarks.search import SyntheticSpec, bench_search

        given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
        params = {"hnsw": given(M=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search),
                  "ivfpq": given(nlist=args.nlist, nprobe=args.nprobe, m=args.pq_m, rerank=args.rerank)}
        params = {k: v for k, v in params.items() if v}
        paths = bench_search(
            dims=list(args.dims), tiles=list(args.tiles), kinds=list(args.kinds), queries=args.queries,
            timed_queries=args.timed_queries, k=args.k, tileset=_path(args.tileset), max_gb=args.max_gb,
            threads=args.threads, params=params, spec=SyntheticSpec(seed=args.seed), **common,
        )
    elif bench == "latency":
        from skyloc.benchmarks.latency import bench_latency

        if not args.models and not args.checkpoint:
            raise SkylocError("give --models M1.onnx ... or --checkpoint CKPT (exported and calibrated per size)")
        paths = bench_latency(
            models=[Path(m) for m in args.models], checkpoint=_path(args.checkpoint), variants=list(args.variants),
            precisions=_list(args.precisions), sizes=_list(args.sizes), calib_images=_path(args.calib_images),
            calib_count=args.calib_count, backbone_checkpoint=_path(args.with_backbone),
            backends=_list(args.backends), batches=list(args.batches), runs=args.runs, warmup=args.warmup,
            baseline=args.baseline, e2e_tiles=args.e2e_tiles, threads=args.threads, work_dir=_path(args.work_dir),
            opset=args.opset, **common,
        )
    elif bench == "faults":
        from skyloc.benchmarks.fault_bench import bench_faults

        paths = bench_faults(work_dir=_path(args.work_dir), groups=_list(args.groups), **common)
    elif bench == "soak":
        from skyloc.benchmarks.soak import SoakConfig, bench_soak

        cfg = SoakConfig(frames=args.frames, black=args.share, featureless=args.share, nan_heading=args.share,
                         seed=args.seed)
        paths = bench_soak(cfg, work_dir=_path(args.work_dir), **common)
    elif bench == "learned-gate":
        from skyloc.benchmarks.learned_gate import bench_learned_gate

        paths = bench_learned_gate(
            matcher=_path(args.matcher), per_map=args.per_map, photo=args.photo, wrong_per_query=args.wrong_per_query,
            seed=args.seed, rescore=None if args.rescore is None else [Path(r) for r in args.rescore], **common)
    elif bench == "flight":
        from skyloc.benchmarks.flight import bench_flight

        paths = bench_flight(
            model=_path(args.model), maps=list(args.maps), altitudes=list(args.altitudes), seconds=args.seconds,
            fps=args.fps, work_dir=_path(args.work_dir), photo=args.photo, stage=args.stage, prior=args.prior,
            photo_run=args.photo_run, matcher=_path(args.matcher), headings=list(args.headings),
            unregistered=args.unregistered, run_flags=list(args.run_flags), **common,
        )
    elif bench == "flight-latency":
        from skyloc.benchmarks.flight_latency import bench_flight_latency

        paths = bench_flight_latency(
            model=_path(args.model), frames=args.frames, fps=args.fps, world_size_m=args.world_m,
            stride_m=args.stride_m, calib_count=args.calib_count, infer_runs=args.infer_runs, seed=args.seed,
            threads=args.threads, work_dir=_path(args.work_dir), matcher=_path(args.matcher), **common,
        )
    elif bench == "accuracy":
        from skyloc.benchmarks.accuracy import bench_accuracy

        paths = bench_accuracy(
            data=_path(args.data), presets=_list(args.presets), epochs=args.epochs, size=args.size,
            backbone=args.backbone, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            locations=args.locations, drones_per_location=args.drones_per_location, pretrained=args.pretrained,
            work_dir=_path(args.work_dir), quant=args.quant, threads=args.threads, seeds=args.seeds,
            sizes=_list(args.sizes), ablation_data=args.ablation_data, worlds=args.worlds,
            drone_views=args.drone_views, **common,
        )
    else:
        from skyloc.benchmarks.runtime_bench import bench_runtime

        if not args.model and not args.checkpoint:
            raise SkylocError("give --model M.onnx (exported with `skyloc export`) or --checkpoint CKPT")
        paths = bench_runtime(
            model=_path(args.model), checkpoint=_path(args.checkpoint), tiles=_path(args.tiles),
            pad_tiles=args.pad_tiles, video=args.video, frames=args.frames, flight_seconds=args.flight_seconds,
            backend=args.backend, threads=args.threads, work_dir=_path(args.work_dir), **common,
        )
    # the options that produced these results, beside them: <name>.config.json
    paths = dict(paths)
    paths["config"] = write_resolved_config(args, config_path_beside((results_dir or default_results_dir()) / args.name))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
