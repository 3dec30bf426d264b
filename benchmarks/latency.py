"""`skyloc bench latency`: model inference latency per (backend, precision, variant, batch, size).

Each model is opened through runtime.backends exactly as `skyloc run` opens it, fed random uint8
frames of its input contract, warmed up, then timed call by call with perf_counter_ns. Ratios
are taken against rows measured in the same run: a baseline row per (backend, batch, size)
group, the bare backbone (heads overhead), and, at batch 1, inference + exact search over
`e2e_tiles` tiles (global-only vs full end to end).

Models come as files (`--models`, precision and variant read from their sidecars) or are made
from a checkpoint here: exported per size and variant, converted to FP16 or calibrated to INT8
in a work directory (that mode needs torch; `--models` mode does not).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.benchmarks import goals as G
from skyloc.benchmarks.report import machine_info, percentiles_ms, write_results
from skyloc.benchmarks.timing import interleaved_times, make_input
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import ModelSidecar, read_engine_sidecar, read_model_sidecar

# Short backend names -> (runtime backend, conf). ORT's execution providers are separate rows.
BACKEND_SPECS = {
    "ort-cpu": ("onnxruntime", {"providers": "cpu"}),
    "ort-cuda": ("onnxruntime", {"providers": "cuda,cpu"}),
    "ort-trt": ("onnxruntime", {"providers": "tensorrt,cuda,cpu"}),
    "tensorrt": ("tensorrt", {}),
}
_EP = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


@dataclass
class ModelEntry:
    path: Path
    sidecar: ModelSidecar
    role: str = "model"  # "model" | "backbone"

    @property
    def variant(self) -> str:
        return "backbone" if self.role == "backbone" else self.sidecar.variant

    @property
    def size(self) -> int:
        return int(self.sidecar.input.height)


def read_entry(path: Path) -> ModelEntry:
    path = Path(path)
    if not path.is_file():
        raise SkylocError(f"model {path} not found: export one with `skyloc export` (it writes the sidecar beside it)")
    side = read_engine_sidecar(path).model if path.suffix in (".engine", ".plan", ".trt") else read_model_sidecar(path)
    role = "backbone" if side.extra.get("benchmark_role") == "bare-backbone" else "model"
    return ModelEntry(path, side, role)


def available_backends() -> list[str]:
    """Every backend this machine can run: ORT CPU always; CUDA / TensorRT EPs and native
    TensorRT when installed (runtime.backends decides what 'available' means)."""
    out = ["ort-cpu"]
    try:
        import onnxruntime as ort

        have = ort.get_available_providers()
        out += [name for name, ep in _EP.items() if ep in have]
    except ImportError:
        pass
    from skyloc.runtime.backends import BACKENDS

    trt = BACKENDS.get("tensorrt")
    if trt is not None and trt.available()[0]:
        out.append("tensorrt")
    return out


def _applies(backend: str, path: Path) -> bool:
    engine = path.suffix in (".engine", ".plan", ".trt")
    return engine == (backend == "tensorrt")


def random_tiles_matcher(n: int, dim: int, seed: int = 0) -> Any:
    """The runtime's `auto` matcher over n random unit vectors (exact up to 100k tiles)."""
    from skyloc.benchmarks.indexes import tileset_in_memory
    from skyloc.runtime.localize.retrieval_faiss import make_matcher

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return make_matcher(tileset_in_memory(emb), "auto")


def parse_filter(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise SkylocError(f"--baseline {spec!r}: expected key=value pairs, e.g. precision=fp32,variant=full")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def add_ratios(rows: list[dict[str, Any]], baseline: dict[str, str]) -> None:
    """speedup_vs_baseline (baseline p50 / row p50) within each (backend, batch, size) group,
    and heads_overhead (row p50 / bare-backbone p50 - 1) at the same backend/precision/batch/size."""
    ok = [r for r in rows if r.get("status") == "ok"]
    for r in ok:
        group = [o for o in ok if (o["backend"], o["batch"], o["size"]) == (r["backend"], r["batch"], r["size"])]
        base = [o for o in group if all(str(o.get(k)) == v for k, v in baseline.items())]
        if base:
            r["baseline_p50_ms"] = base[0]["p50_ms"]
            r["speedup_vs_baseline"] = base[0]["p50_ms"] / r["p50_ms"]
        bb = [o for o in group if o["variant"] == "backbone" and o["precision"] == r["precision"]]
        if bb and r["variant"] != "backbone":
            r["heads_overhead"] = r["p50_ms"] / bb[0]["p50_ms"] - 1.0


def bench_latency(
    models: Sequence[str | os.PathLike] = (),
    checkpoint: str | os.PathLike | None = None,
    variants: Sequence[str] = ("full", "global"),
    precisions: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    calib_images: str | os.PathLike | None = None,
    calib_count: int = 32,
    backbone_checkpoint: str | os.PathLike | None = None,
    backends: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8),
    runs: int = 200,
    warmup: int = 20,
    baseline: str = "precision=fp32,variant=full",
    e2e_tiles: int = 100_000,
    threads: int = 0,
    work_dir: str | os.PathLike | None = None,
    opset: int | None = None,
    results_dir: str | os.PathLike | None = None,
    name: str = "latency",
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    machine = machine_info()
    base_filter = parse_filter(baseline)
    backends = list(backends or available_backends())
    unknown = [b for b in backends if b not in BACKEND_SPECS]
    if unknown:
        raise SkylocError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_SPECS)}")
    if precisions is None:  # what this machine can run: GPU backends add FP16 and TensorRT's INT8
        gpu = any(b != "ort-cpu" for b in backends)
        precisions = ["fp32", "int8-ort"] + (["fp16", "int8-trt"] if gpu else [])
    tmp = None
    if work_dir is None and (checkpoint or backbone_checkpoint or "tensorrt" in backends):
        tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-latency-")
        work_dir = tmp.name
    try:
        entries = [read_entry(Path(m)) for m in models]
        if sizes and entries:
            entries = [e for e in entries if e.size in sizes] or _no_size(models, sizes)
        if checkpoint:
            from skyloc.benchmarks.prepare import prepare_models

            paths = prepare_models(checkpoint, Path(work_dir), variants, precisions, sizes, calib_images,
                                   calib_count, opset, with_backbone=True, progress=progress)
            entries += [read_entry(p) for p in paths]
        if backbone_checkpoint and not (checkpoint and Path(backbone_checkpoint).resolve() == Path(checkpoint).resolve()):
            # (checkpoint mode already timed this checkpoint's backbone)
            from skyloc.benchmarks.prepare import prepare_backbones

            precs = sorted({e.sidecar.precision for e in entries})
            for p in prepare_backbones(backbone_checkpoint, Path(work_dir), sorted({e.size for e in entries}), opset,
                                       precs):
                entries.append(read_entry(p))
        if not entries:
            raise SkylocError("no models to time: give --models M.onnx ... or --checkpoint CKPT")
        if "tensorrt" in backends and any(e.path.suffix == ".onnx" for e in entries):
            from skyloc.benchmarks.prepare import build_engines

            engine_dir = Path(work_dir)
            onnx = [e.path for e in entries if e.path.suffix == ".onnx"]
            entries += [read_entry(p) for p in build_engines(onnx, engine_dir, max(batches), progress)]
        rows = _measure(entries, backends, batches, runs, warmup, threads, e2e_tiles, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    add_ratios(rows, base_filter)
    goals = [G.int8_speedup_goal(rows, machine), G.int8_accuracy_goal(), G.heads_overhead_goal(rows, machine),
             G.global_e2e_goal(rows, e2e_tiles, machine)]
    notes = [
        f"Each row: {warmup} warm-up calls, then {runs} timed calls of Backend.embed (runtime.backends: the "
        "session run plus the output L2 normalisation) on one fixed random uint8 batch, time.perf_counter_ns "
        "around each call. All models of a batch size are timed interleaved (one call each per round, in a "
        "shuffled order), so load changes during the run affect every row alike. Throughput = batch / mean latency.",
        f"ONNX Runtime session options (runtime.backends.onnxruntime_backend): graph optimisation ORT_ENABLE_ALL, "
        f"sequential execution, intra-op threads {threads or 'ORT default (all cores)'}; the providers column shows "
        "what actually ran the graph.",
        f"speedup_vs_baseline = p50 of the baseline row ({baseline}) / p50 of the row, within each "
        "(backend, batch, size) group; heads_overhead = p50 / p50 of the bare backbone (same backend, precision, "
        "batch, size) - 1.",
        "The bare backbone is the checkpoint's own ResNet (layer4 stride 1) with the same uint8 input contract and "
        "a global-average-pool + L2 head, exported by the same exporter (benchmarks/backbone_export.py).",
    ]
    if e2e_tiles:
        notes.append(f"e2e_* (batch-1 rows): one call = embed + top-5 search with the runtime's auto matcher over "
                     f"{e2e_tiles} random unit-vector tiles of the model's embedding size (exact search up to 100k).")
    notes += G.load_notes(machine)
    columns = ["backend", "providers", "model", "variant", "precision", "size", "batch", "dim", "status", "p50_ms",
               "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "speedup_vs_baseline", "heads_overhead",
               "e2e_tiles", "e2e_p50_ms", "e2e_p99_ms", "baseline_p50_ms", "e2e_p90_ms", "e2e_mean_ms"]
    md_columns = columns[:-3]
    return write_results(name, rows, results_dir, title="Model inference latency", columns=columns,
                         md_columns=md_columns, goals=goals, notes=notes, plot=lambda fig: _plot(fig, rows),
                         command=command, machine=machine)


def _no_size(models: Sequence[Any], sizes: Sequence[int]) -> list[ModelEntry]:
    raise SkylocError(f"none of the models {[str(m) for m in models]} has an input size in {list(sizes)}; "
                      "models have a fixed size: use --checkpoint CKPT --sizes ... to re-export per size")


def _measure(entries: list[ModelEntry], backends: list[str], batches: Sequence[int], runs: int, warmup: int,
             threads: int, e2e_tiles: int, progress: bool) -> list[dict[str, Any]]:
    """Open every (model, backend), then time each batch size with all of them interleaved."""
    from skyloc.runtime.backends import open_backend

    rows: list[dict[str, Any]] = []
    opened: list[tuple[ModelEntry, dict[str, Any], Any]] = []
    try:
        for e in entries:
            for bname in backends:
                if not _applies(bname, e.path):
                    continue
                kind, conf = BACKEND_SPECS[bname]
                conf = dict(conf)
                if kind == "onnxruntime":
                    conf["intra_op_threads"] = threads
                base = {"backend": bname, "model": e.path.name, "variant": e.variant,
                        "precision": e.sidecar.precision, "size": e.size, "dim": e.sidecar.embedding_dim}
                try:
                    be = open_backend(e.path, kind, conf)
                    be.embed(make_input(be.contract, 1))  # lazy providers (TensorRT EP) fail here, not mid-run
                    opened.append((e, base, be))
                except Exception as exc:  # a backend that cannot run this model is a row, not a crash
                    rows += [{**base, "batch": b, "status": f"skipped: {type(exc).__name__}: {exc}"[:300]}
                             for b in batches]
        for b in batches:
            if progress:
                print(f"[bench latency] batch {b}: {len(opened)} models x {runs} runs, interleaved", flush=True)
            inputs = [make_input(be.contract, b) for _, _, be in opened]
            calls = [(lambda be=be, x=x: be.embed(x)) for (_, _, be), x in zip(opened, inputs)]
            batch_rows = []
            for (e, base, be), t in zip(opened, interleaved_times(calls, runs, warmup)):
                stats = percentiles_ms(t)
                batch_rows.append({**base, "batch": b, "providers": be.providers, "status": "ok", **stats,
                                   "throughput_ips": b * 1000.0 / stats["mean_ms"]})
            if b == 1 and e2e_tiles:
                _measure_e2e(opened, batch_rows, e2e_tiles, runs, warmup, progress)
            rows += batch_rows
    finally:
        for _, _, be in opened:
            be.close()
    return rows


def _measure_e2e(opened: list[tuple[ModelEntry, dict[str, Any], Any]], rows_b1: list[dict[str, Any]],
                 tiles: int, runs: int, warmup: int, progress: bool, k: int = 5) -> None:
    """Batch-1 frame -> embedding -> top-k tiles, every model interleaved; fills e2e_* columns."""
    sel = [(i, be) for i, (e, _, be) in enumerate(opened) if e.role == "model"]
    if not sel:
        return
    if progress:
        print(f"[bench latency] end to end over {tiles} tiles: {len(sel)} models", flush=True)
    matchers = {d: random_tiles_matcher(tiles, d) for d in sorted({be.sidecar.embedding_dim for _, be in sel})}
    calls = []
    for _, be in sel:
        x, m = make_input(be.contract, 1, seed=1), matchers[be.sidecar.embedding_dim]
        calls.append(lambda be=be, x=x, m=m: m.search(be.embed(x), k))
    for (i, _), t in zip(sel, interleaved_times(calls, runs, warmup)):
        rows_b1[i].update(e2e_tiles=tiles, **{f"e2e_{n}": v for n, v in percentiles_ms(t).items()})


def _plot(fig: Any, rows: Sequence[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("status") == "ok"]
    ax1, ax2 = fig.subplots(1, 2)
    labels, vals, errs = [], [], []
    for r in sorted(ok, key=lambda r: (r["backend"], r["size"], r["batch"], r["variant"], r["precision"])):
        if r["batch"] != min(o["batch"] for o in ok):
            continue
        labels.append(f"{r['backend']} {r['size']}px {r['variant']} {r['precision']}")
        vals.append(r["p50_ms"])
        errs.append(max(0.0, r["p99_ms"] - r["p50_ms"]))
    y = np.arange(len(labels))
    ax1.barh(y, vals, xerr=[np.zeros(len(errs)), errs], color="C0", alpha=0.8)
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("latency p50 (ms), whisker to p99")
    ax1.set_title(f"batch {min((o['batch'] for o in ok), default=1)}")
    for key in sorted({(r["backend"], r["size"], r["variant"], r["precision"]) for r in ok}):
        pts = sorted((r["batch"], r["throughput_ips"]) for r in ok
                     if (r["backend"], r["size"], r["variant"], r["precision"]) == key)
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" ".join(map(str, key)))
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("batch")
    ax2.set_ylabel("images / s")
    ax2.set_title("throughput")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=6)
