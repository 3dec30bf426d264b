"""`skyloc bench flight-latency`: a CI-sized run end to end (tiny ONNX model, 3 frames) whose
summary is recomputed from the per-frame CSV it writes, and the CLI's input checks."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from skyloc.benchmarks.flight_latency import bench_flight_latency
from skyloc.cli import main

from runtime_core_helpers import make_tiny_model


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV the benchmark wrote, read with the standard library alone."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_flight_latency_end_to_end(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx", size=32, dim=16)
    res = tmp_path / "results"
    paths = bench_flight_latency(model=model, frames=3, infer_runs=3, results_dir=res, work_dir=tmp_path / "work",
                                 command="skyloc bench flight-latency --model tiny.onnx", progress=False)
    for key in ("csv", "md", "frames_csv", "stages_csv"):
        assert paths[key].is_file() and paths[key].parent == res
    rows = read_csv(paths["csv"])
    frames = read_csv(paths["frames_csv"])
    cases = {(r["heading"], r["registration"]) for r in rows}
    assert cases == {("known", "on"), ("known", "off"), ("unknown", "on"), ("unknown", "off")}
    assert {r["batch"] for r in rows if r["heading"] == "unknown"} == {"8"}  # the rotations, one batch
    assert {r["batch"] for r in rows if r["heading"] == "known"} == {"1"}
    for r in rows:
        mine = [f for f in frames if (f["heading"], f["registration"]) == (r["heading"], r["registration"])]
        assert len(mine) == int(r["frames"]) == 3
        # frame -> fix of every frame is total - grab, and the row's p50 is their median
        f2f = []
        for f in mine:
            if f["frame_to_fix_ms"]:
                assert float(f["frame_to_fix_ms"]) == pytest.approx(float(f["total"]) - float(f["grab"]))
                f2f.append(float(f["frame_to_fix_ms"]))
        assert len(f2f) == int(r["fix_frames"]) > 0
        assert float(r["frame_to_fix_p50_ms"]) == pytest.approx(float(np.median(f2f)))
        assert float(r["infer_p50_ms"]) == pytest.approx(float(np.median([float(f["infer"]) for f in mine if f["infer"]])))
        ratio = float(r["frame_to_fix_p50_ms"]) / float(r["infer_alone_p50_ms"])
        assert float(r["ratio"]) == pytest.approx(ratio)
        target = 2.0 if r["registration"] == "on" else 1.15
        assert float(r["target"]) == target and r["met"] == str(ratio <= target)
    md = paths["md"].read_text()
    assert "skyloc bench flight-latency --model tiny.onnx" in md and "## Machine" in md
    assert md.count("**met**") + md.count("**missed**") == 4


@pytest.mark.parametrize("bad", [["--frames", "1"], ["--fps", "nan"], ["--infer-runs", "1"]])
def test_cli_refuses_bad_input(tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "flight-latency", "--model", str(tmp_path / "none.onnx"),
               "--results-dir", str(tmp_path / "r"), "--quiet", *bad])
    assert rc != 0
    assert bad[0] in capsys.readouterr().err
    assert not (tmp_path / "r" / "flight-latency.csv").exists()
