"""`skyloc bench runtime`: the onboard loop end to end, and a memory soak.

runtime.loop.run is driven as `skyloc run` drives it, with a looping video source and a
recording output. Per frame the loop reports its stage latencies; frame -> fix is everything
after the frame is in hand (pose .. filter), compared with the
inference stage of the same frames — so the ratio needs no second run. Resident memory is
sampled every few frames over the whole run (psutil) to show it stays flat.

Defaults are self-contained: a synthetic flight over the procedural world (skyloc.synth,
numpy/OpenCV only), its tile set built with the model, padded to 10k tiles with random unit
vectors as distractors.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skyloc.benchmarks import goals as G
from skyloc.benchmarks.report import Goal, machine_info, percentiles_ms, write_csv, write_results
from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.writers import Output
from skyloc.runtime.sources.base import Frame, FrameSource
from skyloc.runtime.sources.open import open_source


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class LoopingSource(FrameSource):
    """A video file (or image folder) replayed until `frames` frames were delivered; indices and
    times keep increasing across loops (decoding lands in the loop's 'grab' stage)."""

    def __init__(self, spec: str, frames: int, fps: float = 10.0) -> None:
        super().__init__(f"loop({spec})")
        self.spec, self.frames, self.fps = spec, int(frames), fps
        self.loops = 0

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while i < self.frames and not self._stop.is_set():
            src = open_source(self.spec, fps=self.fps, reuse_buffers=True)
            got = 0
            try:
                for f in src:
                    if i >= self.frames or self._stop.is_set():
                        return
                    yield Frame(i, i / self.fps, f.image, f.source_name, f.error)
                    self.stats.frames += 1
                    i, got = i + 1, got + 1
            finally:
                src.close()
            self.loops += 1
            if got == 0:
                raise SkylocError(f"source {self.spec} gave no frames")


class Recorder(Output):
    """Keeps each frame's stage latencies and samples resident memory every `rss_every` frames."""

    def __init__(self, rss_every: int) -> None:
        self.latency: list[dict[str, float]] = []
        self.rss: list[tuple[int, float]] = []
        self.rss_every = max(1, int(rss_every))
        self.skipped = 0

    def write(self, record: dict[str, Any]) -> None:
        n = len(self.latency)
        if "skipped" in record:
            self.skipped += 1
        self.latency.append(record.get("latency_ms", {}))
        if n % self.rss_every == 0:
            self.rss.append((n, _rss_mb()))


def pad_tileset(ts: Any, count: int, seed: int = 0) -> tuple[Any, int]:
    """Copy of `ts` with random unit-vector distractor tiles appended up to `count` tiles, placed
    at random inside the real tiles' bounding box. Returns (tile set, distractors added)."""
    from skyloc.runtime.maps.tileset import TILE_M, TileSet
    from skyloc.runtime.maps.tileset_build import footprints_for

    n = len(ts)
    extra = max(0, int(count) - n)
    if extra == 0:
        return ts, 0
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((extra, ts.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lo, hi = ts.centers.min(axis=0), ts.centers.max(axis=0)
    centers = rng.uniform(lo, hi, (extra, 2))
    side = float(ts.meta.get("tile_m") or TILE_M)
    meta = {k: v for k, v in ts.meta.items() if k not in ("checksum", "count")}
    meta["benchmark_distractors"] = extra
    return TileSet(
        embeddings=np.concatenate([ts.embeddings, emb]),
        centers=np.concatenate([ts.centers, centers]),
        footprints=np.concatenate([ts.footprints, footprints_for(centers, np.full(extra, side))]),
        scale=np.concatenate([ts.scale, np.ones(extra, np.float32)]),
        meta=meta,
    ), extra


def _prepare(model: Path | None, checkpoint: Path | None, tiles: Path | None, video: str | None, work: Path,
             backend: str, flight_seconds: float, progress: bool) -> tuple[Path, Path, str, list[str]]:
    notes: list[str] = []
    if model is None:
        from skyloc.export.onnx_export import export_onnx  # needs torch: only in --checkpoint mode

        model = export_onnx(checkpoint, work / "model.onnx", variant="full")
        notes.append(f"Model exported from {checkpoint} (FP32, full). The export loaded torch into this process, so "
                     "resident memory includes it: pass --model for the onboard (torch-free) memory figure.")
    if video is None:
        from skyloc.synth.flight import FlightConfig, make_flight

        video = str(make_flight(None, work / "flight", FlightConfig(seconds=flight_seconds, fps=10.0)))
        notes.append(f"Frames: a synthetic {flight_seconds:g} s flight (runtime.synth, 320x240, 10 fps) over "
                     "the procedural world, looped.")
    else:
        notes.append(f"Frames: {video}, looped.")
    if tiles is None:
        from skyloc.runtime.maps.tileset_build import build_tileset

        flight_map = work / "flight" / "map" / "map.csv"
        if not flight_map.is_file():
            from skyloc.synth.world import make_world

            flight_map = make_world(work / "world")
            notes.append("Tile set built on the procedural world, which is not the video's area: fixes are "
                         "meaningless, latency and memory are not affected.")
        tiles = build_tileset(model, flight_map, work / "tiles.npz", tile_m=150, stride_m=30, backend=backend,
                              progress=progress)
        notes.append("Tile set: 150 m tiles every 30 m over the flight's map, embedded with the model.")
    return Path(model), Path(tiles), str(video), notes


def bench_runtime(
    model: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    tiles: str | os.PathLike | None = None,
    pad_tiles: int = 10_000,
    video: str | None = None,
    frames: int = 10_000,
    backend: str = "auto",
    threads: int = 0,
    work_dir: str | os.PathLike | None = None,
    flight_seconds: float = 30.0,
    infer_runs: int = 200,
    results_dir: str | os.PathLike | None = None,
    name: str = "runtime",
    command: str | None = None,
    progress: bool = True,
    blank_cos: float | None = None,
) -> dict[str, Path]:
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.run.loop import RunOptions, run
    from skyloc.runtime.maps.tileset import TileSet

    if model is None and checkpoint is None:
        raise SkylocError("bench runtime needs --model M.onnx (from `skyloc export`) or --checkpoint CKPT")
    if frames < 20:
        raise SkylocError(f"--frames {frames}: use at least 20 frames")
    machine = machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="skyloc-bench-runtime-") if work_dir is None else None
    work = Path(work_dir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        mpath, tpath, vspec, notes = _prepare(Path(model) if model else None, Path(checkpoint) if checkpoint else None,
                                              Path(tiles) if tiles else None, video, work, backend, flight_seconds,
                                              progress)
        conf = {"intra_op_threads": threads} if threads else None
        be = open_backend(mpath, backend, conf)
        ts, extra = pad_tileset(TileSet.load(tpath, expect_model=be.sidecar), pad_tiles)
        real = len(ts) - extra
        notes.append(f"Tiles searched: {len(ts)} = {real} real tiles + {extra} random unit-vector distractors "
                     "(placed at random inside the map's bounds); matcher `auto` (exact up to 100k tiles).")
        rec = Recorder(rss_every=max(1, frames // 400))
        src = LoopingSource(vspec, frames)
        if progress:
            print(f"[bench runtime] {frames} frames, {len(ts)} tiles, {be.description}", flush=True)
        t0 = time.perf_counter()
        # blank_cos: a toy model (no centring) maps every frame near the blank image's embedding.
        extra_opts = {} if blank_cos is None else {"blank_cos": blank_cos}
        stats = run(be, ts, src, [rec], RunOptions(backend=backend, max_frames=frames, handle_signals=False,
                                                   **extra_opts))
        wall = time.perf_counter() - t0
        # Inference alone in a tight loop (same backend, same preprocessed frame) for reference.
        from skyloc.benchmarks.timing import time_backend

        alone = time_backend(be, 1, infer_runs, 10)
        be.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = stage_rows(rec.latency)
    rows.append({"stage": "inference alone (tight loop, 1 frame)", "frames": infer_runs, "status": "ok",
                 **{k: alone[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}})
    soak = soak_stats(rec.rss)
    rows.append({"stage": "resident memory (MB)", "frames": len(rec.latency), "status": "ok",
                 "rss_start_mb": soak["start_mb"], "rss_end_mb": soak["end_mb"], "rss_max_mb": soak["max_mb"],
                 "rss_growth": soak["growth"]})
    goals = runtime_goals(rows, soak, len(ts), frames, machine)
    notes = [*notes,
             f"Loop: runtime.loop.run with {stats.backend}; {stats.frames} frames in {wall:.1f} s, fixes "
             f"{stats.fixes}, skipped {dict(stats.skipped) or 0}, errors {stats.errors}.",
             "frame -> fix = every stage after the grab (pose .. filter) of each frame (the loop's total minus the "
             "time waiting for / decoding the frame); overhead = p50(frame -> fix) / p50(inference alone) - 1, "
             "where inference alone is the same backend timed in a tight loop right after the run; the ratio "
             "to the loop's own inference stage (same frames) is given too.",
             f"Memory: RSS sampled every {rec.rss_every} frames; growth = median of the last 10% of samples / "
             f"median of the samples between 5% and 15% of the run (after warm-up) - 1"
             + f"; samples in {name}-rss.csv.",
             *G.load_notes(machine)]
    columns = ["stage", "frames", "status", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "p99_over_p50",
               "rss_start_mb", "rss_end_mb", "rss_max_mb", "rss_growth"]
    paths = write_results(name, rows, results_dir, title="Runtime loop: frame -> fix latency and memory soak",
                          columns=columns, goals=goals, notes=notes,
                          plot=lambda fig: _plot(fig, rec.latency, rec.rss), command=command, machine=machine)
    paths["rss_csv"] = write_csv(paths["csv"].with_name(f"{name}-rss.csv"),
                                 [{"frame": f, "rss_mb": r} for f, r in rec.rss], ["frame", "rss_mb"])
    return paths


def frame_to_fix(lat: dict[str, float]) -> float | None:
    if "total" not in lat or "infer" not in lat or "retrieve" not in lat:
        return None
    return lat["total"] - lat.get("grab", 0.0)


def stage_rows(latency: Sequence[dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    from skyloc.runtime.run.stats import STAGES

    series = {s: [v[s] for v in latency if s in v] for s in STAGES}
    series["frame -> fix"] = [x for x in map(frame_to_fix, latency) if x is not None]
    for stage, vals in series.items():
        if not vals:
            continue
        st = percentiles_ms(np.asarray(vals) * 1e6)  # ms -> ns for the shared helper
        rows.append({"stage": stage, "frames": len(vals), "status": "ok", **st, "p99_over_p50": st["p99_ms"] / st["p50_ms"]})
    return rows


def soak_stats(rss: Sequence[tuple[int, float]]) -> dict[str, float]:
    if len(rss) < 4:
        return {"start_mb": float("nan"), "end_mb": float("nan"), "max_mb": float("nan"), "growth": float("nan")}
    n = rss[-1][0] + 1
    vals = np.array([r for _, r in rss])
    frames = np.array([f for f, _ in rss])
    start = vals[(frames >= 0.05 * n) & (frames <= 0.15 * n)]
    start = start if len(start) else vals[: max(1, len(vals) // 10)]
    end = vals[frames >= 0.9 * n]
    end = end if len(end) else vals[-1:]
    s, e = float(np.median(start)), float(np.median(end))
    return {"start_mb": s, "end_mb": e, "max_mb": float(vals.max()), "growth": e / s - 1.0}


def runtime_goals(rows: Sequence[dict[str, Any]], soak: dict[str, float], tiles: int, frames: int,
                  machine: dict[str, Any]) -> list[Goal]:
    by = {r["stage"]: r for r in rows}
    f2f, inf = by.get("frame -> fix"), by.get("infer")
    busy = " (the machine was busy during the run: see Notes)" if G.busy(machine) else ""
    goals = []
    target = f"frame -> fix overhead over model inference alone <= {G.RUNTIME_OVERHEAD:.0%} at 10k tiles"
    alone = next((r for r in rows if r["stage"].startswith("inference alone")), None)
    if f2f and inf and alone:
        over = f2f["p50_ms"] / alone["p50_ms"] - 1
        over_stage = f2f["p50_ms"] / inf["p50_ms"] - 1
        measured = (f"{over:+.1%} vs inference alone ({f2f['p50_ms']:.2f} vs {alone['p50_ms']:.2f} ms p50); "
                    f"{over_stage:+.1%} vs the loop's own inference stage ({inf['p50_ms']:.2f} ms); {tiles} tiles")
        met = over <= G.RUNTIME_OVERHEAD
        why = "" if met else (
            f"retrieve p50 {by['retrieve']['p50_ms']:.2f} ms and preprocess p50 {by['preprocess']['p50_ms']:.2f} ms "
            f"are large next to a {alone['p50_ms']:.2f} ms inference (a small / fast model makes the fixed "
            "per-frame costs weigh more)" + busy)
        goals.append(Goal("loop overhead", target, measured, met if tiles >= 10_000 else None,
                          why if tiles >= 10_000 else f"only {tiles} tiles (use --pad-tiles 10000)"))
    else:
        goals.append(Goal("loop overhead", target, "-", None, "no frame produced a fix"))
    target = f"frame -> fix p99 <= {G.RUNTIME_TAIL}x p50"
    if f2f:
        r = f2f["p99_ms"] / f2f["p50_ms"]
        met = r <= G.RUNTIME_TAIL
        goals.append(Goal("latency tail", target, f"{r:.2f}x ({f2f['p99_ms']:.2f} / {f2f['p50_ms']:.2f} ms)", met,
                          "" if met else "slow outliers: CPU contention, GC or thread hand-offs" + busy))
    else:
        goals.append(Goal("latency tail", target, "-", None, "no frame produced a fix"))
    target = f"10k-frame soak: resident memory growth < {G.SOAK_GROWTH:.0%}"
    g = soak["growth"]
    if np.isfinite(g):
        met = g < G.SOAK_GROWTH
        short = frames < 10_000
        goals.append(Goal("memory soak", target, f"{g:+.2%} ({soak['start_mb']:.0f} -> {soak['end_mb']:.0f} MB, "
                          f"max {soak['max_mb']:.0f} MB, {frames} frames)", None if short and met else met,
                          (f"run shortened to {frames} frames (--frames 10000 for the goal)" if short else "")
                          + ("" if met else "; memory grows over the run: look for per-frame allocations kept")))
    else:
        goals.append(Goal("memory soak", target, "-", None, "too few memory samples"))
    return goals


def _plot(fig: Any, latency: Sequence[dict[str, float]], rss: Sequence[tuple[int, float]]) -> None:
    ax1, ax2 = fig.subplots(1, 2)
    f2f = [x for x in map(frame_to_fix, latency) if x is not None]
    inf = [v["infer"] for v in latency if "infer" in v]
    if f2f:
        hi = float(np.percentile(f2f, 99.5))
        bins = np.linspace(0, hi * 1.05, 60)
        ax1.hist(inf, bins=bins, alpha=0.6, label="inference")
        ax1.hist(f2f, bins=bins, alpha=0.6, label="frame -> fix")
        ax1.axvline(float(np.median(f2f)), color="C1", ls="--", lw=1)
        ax1.axvline(float(np.median(inf)), color="C0", ls="--", lw=1)
    ax1.set_xlabel("ms per frame")
    ax1.set_ylabel("frames")
    ax1.set_title("per-frame latency")
    ax1.legend()
    if rss:
        ax2.plot([f for f, _ in rss], [r for _, r in rss])
    ax2.set_xlabel("frame")
    ax2.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax2.set_ylabel("resident memory (MB)")
    ax2.set_title("memory over the run")
    ax2.grid(True, alpha=0.3)
