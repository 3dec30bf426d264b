"""Tile sets vs the camera's footprint: `skyloc run` refuses tiles no frame covers, warns when only part
of the altitudes is served, and its advice works; `skyloc tiles` builds scale levels by default;
`skyloc tiles` and `skyloc run` with one stem write separate resolved configs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime_core_helpers import make_map, make_tiny_model
from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.rectify import ground_coverage_m, pick_scale_level
from skyloc.runtime.maps.coverage import check_tile_sides, coverage_range_m
from skyloc.runtime.maps.tiles_cli import TilesOptions
from skyloc.runtime.maps.tileset import TileSet
from skyloc.runtime.pose.camera import CameraModel
from skyloc.runtime.pose.frame_pose import FramePose

CAM = CameraModel.from_hfov(60.0, 320, 240)


def sides_from(advice: str) -> list[float]:
    t = float(re.search(r"--tile-m ([0-9.]+)", advice).group(1))
    return [t * float(s) for s in re.search(r"--scales ([0-9.,]*[0-9])", advice).group(1).split(",")]


def served(sides: list[float], alt: float, heading: bool = True) -> bool:
    """The localizer's own rule (some level fits inside what the frame covers), at every heading."""
    yaws = np.arange(0.0, 360.0, 5.0) if heading else [None]
    return all(pick_scale_level(ground_coverage_m(CAM, FramePose(altitude_m=alt, yaw_deg=y)), sides) is not None
               for y in yaws)


@pytest.mark.parametrize("heading", [True, False])
def test_tiles_larger_than_every_frame_are_refused_with_advice_that_works(heading):
    alts = (80.0, 250.0)
    with pytest.raises(SkylocError, match="no-coverage") as err:
        check_tile_sides([400.0], CAM, alts, 0.0, heading, "t.npz")
    msg = str(err.value)
    assert "t.npz" in msg and "--tile-m" in msg
    sides = sides_from(msg)
    assert check_tile_sides(sides, CAM, alts, 0.0, heading, "t.npz") is None  # the advice serves the range
    assert all(served(sides, a, heading) for a in np.linspace(*alts, 40))
    cov_best = ground_coverage_m(CAM, FramePose(altitude_m=alts[1], yaw_deg=0.0))
    assert cov_best < 400.0  # not even the highest frame at its best heading covers a 400 m tile


def test_part_of_the_range_is_a_warning_naming_the_altitude():
    alts = (80.0, 250.0)
    lo, hi = coverage_range_m(CAM, alts)
    side = 0.5 * (lo + hi)
    warning = check_tile_sides([side], CAM, alts, 0.0, True, "t.npz")
    assert warning is not None and "no-coverage" in warning
    need = float(re.search(r"frames below (\d+) m", warning).group(1))
    assert not served([side], need - 2.0) and served([side], need + 2.0)
    assert check_tile_sides(sides_from(warning), CAM, alts, 0.0, True, "t.npz") is None


def test_tiles_builds_scale_levels_by_default():
    assert len(TilesOptions().scales) >= 3 and min(TilesOptions().scales) <= 0.5 and 1.0 == max(TilesOptions().scales)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cover")
    png = make_map(d / "map", 400, 400, 1.0)
    model = make_tiny_model(d / "m.onnx")
    rng = np.random.default_rng(0)
    frames = d / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i:02d}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return {"dir": d, "map": png.with_name("map.csv"), "model": model, "frames": frames}


def test_run_refuses_oversized_tiles_before_writing_anything(world, tmp_path, capsys):
    tiles = tmp_path / "big.npz"
    assert skyloc(["tiles", "--model", str(world["model"]), "--map", str(world["map"]), "--out", str(tiles),
                   "--tile-m", "200", "--stride-m", "100", "--scales", "1", "--no-progress"]) == 0
    out = tmp_path / "fixes.jsonl"
    # 60 deg hfov at 100 m covers about 87 m north-up (at most 115 m even for a square frame)
    args = ["run", "--model", str(world["model"]), "--tiles", str(tiles), "--source", str(world["frames"]),
            "--out", str(out), "--hfov", "60", "--altitude", "100", "--no-register"]
    capsys.readouterr()
    assert skyloc(args) == 2
    err = capsys.readouterr().err
    assert "no-coverage" in err and "--tile-m" in err, err
    assert not out.exists() and not out.with_name(out.name + ".config.json").exists()


def test_default_tiles_serve_and_one_stem_keeps_both_configs(world, tmp_path):
    """`skyloc tiles --out area.npz` then `skyloc run --tiles area.npz --out area.jsonl`: both
    resolved configs survive, each named after its own output."""
    area = tmp_path / "area.npz"
    assert skyloc(["tiles", "--model", str(world["model"]), "--map", str(world["map"]), "--out", str(area),
                   "--tile-m", "150", "--stride-m", "75", "--no-progress"]) == 0
    ts = TileSet.load(area)
    assert sorted({round(float(s), 3) for s in ts.scale}) == sorted(round(s, 3) for s in TilesOptions().scales)
    fixes = tmp_path / "area.jsonl"
    # 100 m: a 4:3 frame covers ~87 m, which only the default 0.5 level (75 m) serves
    assert skyloc(["run", "--model", str(world["model"]), "--tiles", str(area), "--source", str(world["frames"]),
                   "--out", str(fixes), "--hfov", "60", "--altitude", "100", "--yaw", "0", "--no-register"]) == 0
    tiles_cfg = json.loads((tmp_path / "area.npz.config.json").read_text())
    run_cfg = json.loads((tmp_path / "area.jsonl.config.json").read_text())
    assert tiles_cfg["options"]["out"] == str(area) and run_cfg["options"]["out"] == str(fixes)
    recs = [json.loads(line) for line in fixes.read_text().splitlines()]
    assert len(recs) == 2 and all(r.get("skipped") != "no-coverage" for r in recs), recs
