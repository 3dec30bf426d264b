"""`skyloc bench accuracy --seeds/--sizes`: the statistics against hand values and scipy's
independent paired test, and a tiny multi-seed, multi-size run on the multi-map dataset."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from skyloc.benchmarks.ablation import SHARED_MAP, paired_t, row_summary, step_tests, t_interval


def test_t_interval_hand_values():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.48414
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert t_interval([5.0]) == (5.0, None)


def test_paired_t_against_scipy_and_hand_values():
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.normal(30, 3, 5)
    b = a + rng.normal(1.0, 0.5, 5)
    got = paired_t(a, b)
    ref = stats.ttest_rel(b, a)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["diff"] == pytest.approx(float(np.mean(b - a)))
    assert got["significant"] == (ref.pvalue < 0.05)
    # A difference within the noise: b - a = (+1, -1, +1, -1) has mean 0 -> p = 1, not significant.
    noise = paired_t([10, 10, 10, 10], [11, 9, 11, 9])
    assert noise["diff"] == 0 and noise["p"] == pytest.approx(1.0) and noise["significant"] is False
    # One seed: no interval, no test.
    assert paired_t([1.0], [2.0])["p"] is None
    # The same difference on every seed (floating-point equal, not bit-equal): no spread for a t-test;
    # the exact sign test says 4 seeds of one sign is p = 2 / 2**4 = 0.125, 6 seeds 0.03125
    a4 = [46.666666666666664, 38.333333333333336, 36.666666666666664, 46.666666666666664]
    same = paired_t(a4, [x - 25 / 3 for x in a4])
    assert same["test"] == "sign" and same["p"] == pytest.approx(0.125) and same["significant"] is False
    six = paired_t(list(range(6)), [x + 1.5 for x in range(6)])
    assert six["p"] == pytest.approx(1 / 32) and six["significant"] is True


def test_row_summary_and_steps():
    per_seed = {"a": {0: {"m": 10.0}, 1: {"m": 12.0}, 2: {"m": 11.0}},
                "b": {0: {"m": 20.0}, 1: {"m": 22.1}, 2: {"m": 20.9}}}
    s = row_summary(per_seed["a"], ["m"])
    assert s["seeds"] == 3 and s["m"] == pytest.approx(11.0) and s["m_ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    (step,) = step_tests(["a", "b"], per_seed, ["m"])
    assert step["step"] == "a -> b" and step["seeds"] == 3 and step["diff"] == pytest.approx(10.0)
    assert step["significant"] is True and step["p"] < 1e-3


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_accuracy_seeds_and_sizes_tiny(tmp_path: Path):
    pytest.importorskip("torch")
    import torch

    from skyloc.benchmarks.accuracy import bench_accuracy

    torch.set_num_threads(1)
    paths = bench_accuracy(presets=["lpn+ms+global+ba+kl", "msba"], epochs=1, size=32, batch_size=8, locations=6,
                           drones_per_location=2, seeds=2, sizes=[32, 48], worlds=1, drone_views=2, quant=False,
                           work_dir=tmp_path / "work", results_dir=tmp_path / "res", progress=False)
    rows = {r["row"]: r for r in _read(paths["csv"])}
    assert set(rows) == {"lpn+ms+global+ba+kl", "msba"}
    for r in rows.values():
        assert r["seeds"] == "2"
        assert 0 <= float(r["d2s_R@1"]) <= 100 and float(r["d2s_R@1_ci95"]) >= 0
    runs = sorted(p.name for p in (tmp_path / "work" / "runs").iterdir())
    # Table 3 at 32 px for both seeds; Table 6 trains again at 48 px (32 px is reused): train-and-test.
    assert runs == ["lpn+ms+global+ba+kl-32px-seed0", "lpn+ms+global+ba+kl-32px-seed1",
                    "lpn+ms+global+ba+kl-48px-seed0", "lpn+ms+global+ba+kl-48px-seed1"]
    import json

    cfg48 = json.loads((tmp_path / "work" / "runs" / "lpn+ms+global+ba+kl-48px-seed1" / "config.json").read_text())
    assert cfg48["model"]["image_size"] == 48 and cfg48["train"]["seed"] == 1
    t6 = _read(paths["table6_csv"])
    assert [r["size"] for r in t6] == ["32", "48"]
    for k in ("d2s_R@1", "d2s_AP", "s2d_AP"):  # the 32 px row of Table 6 is the msba row of Table 3
        assert float(t6[0][k]) == pytest.approx(float(rows["msba"][k]), abs=1e-9)
    steps = _read(paths["steps_csv"])
    assert {s["step"] for s in steps} == {"lpn+ms+global+ba+kl -> msba"} and {s["seeds"] for s in steps} == {"2"}
    # every seed's value is written, and the rows' means are their means
    per_seed = _read(paths["seeds_csv"])
    assert sorted((r["row"], r["seed"]) for r in per_seed) == [(p, s) for p in sorted(rows) for s in ("0", "1")]
    for name, r in rows.items():
        vals = [float(x["d2s_AP"]) for x in per_seed if x["row"] == name]
        assert float(r["d2s_AP"]) == pytest.approx(sum(vals) / len(vals), abs=1e-9)
    md = paths["md"].read_text()
    assert "Significant steps" in md and "Table 6: trained and tested" in md
    # The data: one procedural world plus the shared Turku map when present, nadir + spiral views.
    data = tmp_path / "work" / "ablation-data"
    maps = {p.name[0] for p in (data / "train" / "drone").iterdir()}
    assert maps == ({"0", "1"} if SHARED_MAP.is_dir() else {"0"})
