"""Statistics and data for a Table 3 ablation that can tell its steps apart.

`ablation_dataset` builds one University-1652-layout dataset from several maps (procedural worlds
and, when present, ../shared/data/turku-satellite), each location with both flight-like nadir
views and University-1652-like oblique spiral views ("mixed"), so rows are compared on more, and
more varied, queries than one small world gives. `row_summary` / `step_tests` turn per-seed
results into means with a 95 % t-interval and paired t-tests between consecutive rows (the same
seed means the same data, initialisation and data order, so the pairing removes their variance).
Torch-free.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.core.errors import SkylocError

SHARED_MAP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "turku-satellite"
SHARED_MAP_SCALE = 0.25
ALPHA = 0.05


def t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % Student-t interval); half-width None for fewer than 2 values."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), None
    half = float(stats.t.ppf(1 - ALPHA / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()), half


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """b - a over paired seeds: mean difference, 95 % interval, two-sided p of the paired t-test."""
    from scipy import stats

    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    mean, half = t_interval(d)
    if half is None:
        return {"diff": mean, "ci95": None, "p": None, "significant": None}
    sd = d.std(ddof=1)
    if sd <= 1e-9 * max(1.0, abs(mean)):
        # the same difference on every seed (retrieval metrics move in steps of one query): the
        # t statistic is infinite, so use the exact two-sided sign test, which needs >= 6 seeds
        # to reach p < 0.05 (4 seeds of one sign: p = 0.125)
        return {"diff": mean, "ci95": 0.0, "p": 1.0 if mean == 0 else min(1.0, 2 * 0.5 ** len(d)),
                "significant": mean != 0 and 2 * 0.5 ** len(d) < ALPHA, "test": "sign"}
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(d))), len(d) - 1))
    return {"diff": mean, "ci95": half, "p": p, "significant": p < ALPHA, "test": "t"}


def row_summary(per_seed: dict[int, dict[str, float]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean and 95 % half-width of each key over the seeds of one row."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for k in keys:
        mean, half = t_interval([r[k] for r in per_seed.values()])
        out[k] = mean
        out[f"{k}_ci95"] = half
    return out


def step_tests(rows: Sequence[str], per_seed: dict[str, dict[int, dict[str, float]]],
               keys: Sequence[str]) -> list[dict[str, Any]]:
    """One line per consecutive pair of rows and metric: the paired difference over common seeds."""
    out = []
    for prev, cur in zip(rows, rows[1:]):
        seeds = sorted(set(per_seed[prev]) & set(per_seed[cur]))
        for k in keys:
            t = paired_t([per_seed[prev][s][k] for s in seeds], [per_seed[cur][s][k] for s in seeds])
            out.append({"step": f"{prev} -> {cur}", "metric": k, "seeds": len(seeds), **t})
    return out


def _link_tree(src: Path, dst: Path, prefix: str) -> int:
    """Hard-link (or copy) src/<split>/<view>/<loc>/* to dst/<split>/<view>/<prefix><loc>/*."""
    n = 0
    for split in ("train", "test"):
        if not (src / split).is_dir():
            continue
        for view in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            for loc in sorted(p for p in view.iterdir() if p.is_dir()):
                out = dst / split / view.name / f"{prefix}{loc.name}"
                out.mkdir(parents=True, exist_ok=True)
                for f in sorted(loc.iterdir()):
                    if f.is_file():
                        try:
                            os.link(f, out / f.name)
                        except OSError:
                            shutil.copy2(f, out / f.name)
                        n += 1
    return n


def ablation_dataset(work: Path, *, worlds: int = 2, use_shared_map: bool = True, locations_per_map: int = 40,
                     drones: int = 8, image_px: int = 64, seed: int = 0, progress: bool = True) -> tuple[Path, str]:
    """A University-1652-layout dataset from `worlds` procedural worlds plus the shared Turku map
    (when present and `use_shared_map`), `locations_per_map` locations each (half train, half
    test), `drones` views per location, half nadir (flight-like) and half spiral
    (University-1652-like). Written under work/ablation-data; reused when already complete."""
    from skyloc.synth.camera import SpiralConfig
    from skyloc.synth.dataset import SynthDatasetConfig, make_dataset
    from skyloc.synth.nadir import NadirViewConfig

    # (name, map, view scale): the Turku map is ~600 x 860 m with holes, so its spirals and
    # flight altitudes are shrunk to a quarter (views reach ~80 m instead of ~310 m).
    maps: list[tuple[str, Path | None, float]] = [(f"world{i}", None, 1.0) for i in range(worlds)]
    if use_shared_map and SHARED_MAP.is_dir():
        maps.append(("turku", SHARED_MAP, SHARED_MAP_SCALE))
    if not maps:
        raise SkylocError("ablation dataset: no maps (worlds 0 and the shared Turku map absent or disabled)")
    out = work / "ablation-data"
    done = out / "DONE"
    note = (f"ablation dataset: {len(maps)} maps ({', '.join(n for n, _, _ in maps)}), {locations_per_map} locations "
            f"each (half train, half test), {drones} drone views per location (half nadir, half spiral), "
            f"{image_px} px, seed {seed}")
    if done.is_file() and done.read_text() == note:
        return out, note
    if out.exists():
        shutil.rmtree(out)
    for i, (name, path, scale) in enumerate(maps):
        part = work / f"ablation-{name}"
        if progress:
            print(f"[bench accuracy] rendering {name} ({locations_per_map} locations)", flush=True)
        make_dataset(path, part, SynthDatasetConfig(
            locations=locations_per_map, drone_per_location=drones, image_px=image_px, views="mixed", seed=seed + i,
            overwrite=True, spiral=SpiralConfig(scale=scale), nadir=NadirViewConfig(scale=scale)))
        _link_tree(part, out, f"{i}")
    done.write_text(note)
    return out, note
