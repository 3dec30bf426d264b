"""Options derived from dataclasses (skyloc.core.options): the CLI's defaults are the dataclass's,
a TOML config merges under typed flags, NaN / out-of-range values are refused, the resolved config
round-trips; and `skyloc tiles` uses all of it."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from skyloc.cli import HelpFormatter, main as skyloc_main
from skyloc.core.errors import SkylocError
from skyloc.core.options import add_options, check_options, opt
from skyloc.core.config import load_config, options_from_args, write_resolved_config
from skyloc.runtime.maps.tiles_cli import TilesOptions, add_arguments, resolved_config_path


@dataclasses.dataclass
class Demo:
    k: int = opt(10, "hits per frame", ge=1)
    alpha: float = opt(0.5, "smoothing", gt=0, le=1)
    window_m: float | None = opt(None, "search window radius, metres", gt=0)
    index: str = opt("auto", "matcher", choices=("auto", "flat", "hnsw"))
    scales: tuple[float, ...] = opt((1.0,), "multipliers", gt=0)
    north_up: bool = opt(True, "turn frames north-up")
    max_speed_mps: float = opt(30.0, "m/s", gt=0, flag="--max-speed")
    path: str | Path | None = opt(None, "a file")
    internal: int = 3  # no opt(): never a flag

    def __post_init__(self) -> None:
        check_options(self)


def _parser(cls: type, fn=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, exit_on_error=False)
    (fn or (lambda parser: add_options(parser, cls)))(p)
    return p


def _parse(cls: type, argv: list[str], fn=None):
    return options_from_args(cls, _parser(cls, fn).parse_args(argv))


def _run_options():
    from skyloc.runtime.run import cli as run_cli
    from skyloc.runtime.run.loop import RunOptions

    return RunOptions, run_cli.add_arguments, ["--model", "m.onnx", "--tiles", "t.npz", "--source", "0"]


@pytest.mark.parametrize("case", ["demo", "tiles", "run"])
def test_cli_defaults_equal_dataclass_defaults(case):
    cls, fn, required = {"demo": lambda: (Demo, None, []), "tiles": lambda: (TilesOptions, add_arguments, []),
                         "run": _run_options}[case]()
    parser = _parser(cls, fn)
    by_dest = {a.dest: a for a in parser._actions}
    flags = 0
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if case == "demo" and not f.metadata.get("skyloc_opt"):
            assert f.name not in by_dest  # a plain field stays off the command line
        if not f.metadata.get("skyloc_opt") or not f.metadata.get("cli", True):
            continue
        if f.name not in by_dest:  # a structured field (dict, nested dataclass): config-file only
            continue
        action = by_dest[f.name]
        assert action.default == default, f.name
        assert action.help == f.metadata["help"]
        flags += 1
    assert flags >= 7
    # parsing nothing gives exactly the dataclass defaults, and so does the plain namespace
    args = parser.parse_args(required)
    assert options_from_args(cls, args) == cls()
    for f in dataclasses.fields(cls):
        if f.name in by_dest and f.metadata.get("skyloc_opt"):
            assert getattr(args, f.name) == getattr(cls(), f.name)


def test_typed_flags_convert_and_rename():
    o = _parse(Demo, ["--k", "7", "--window-m", "120", "--scales", "1.0,1.5", "--no-north-up",
                      "--max-speed", "12.5", "--index", "hnsw", "--path", "x/y.csv"])
    assert o == Demo(k=7, window_m=120.0, scales=(1.0, 1.5), north_up=False, max_speed_mps=12.5,
                     index="hnsw", path="x/y.csv")
    assert _parse(Demo, ["--north-up"]).north_up is True


@pytest.mark.parametrize("argv,what", [
    (["--alpha", "nan"], "finite"), (["--alpha", "NaN"], "finite"), (["--alpha", "inf"], "finite"),
    (["--window-m", "nan"], "finite"), (["--scales", "1.0,nan"], "finite"),
    (["--alpha", "0"], "> 0"), (["--alpha", "1.5"], "<= 1"), (["--k", "0"], ">= 1"),
    (["--window-m", "-5"], "> 0"), (["--scales", "1,-1"], "> 0"), (["--index", "kdtree"], "choose one of"),
])
def test_bad_values_are_refused_with_the_flag_named(argv, what):
    with pytest.raises(SkylocError) as e:
        _parse(Demo, argv)
    assert what in str(e.value)
    assert argv[0] in str(e.value)  # the message names the flag the user typed


def test_unparsable_values_are_a_usage_error():
    p = _parser(Demo)
    p.exit_on_error = True
    for argv in (["--k", "2.5"], ["--alpha", "half"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


def test_dataclass_checks_on_construction():
    with pytest.raises(SkylocError, match="finite"):
        Demo(alpha=math.nan)
    with pytest.raises(SkylocError, match="finite"):
        TilesOptions(tile_m=float("nan"))
    with pytest.raises(SkylocError, match="expected int"):
        Demo(k=True)
    with pytest.raises(SkylocError, match="expected float"):
        Demo(alpha="0.5")
    with pytest.raises(SkylocError, match="<= 1"):
        TilesOptions(min_valid=1.01)
    assert Demo(alpha=1).alpha == 1.0 and isinstance(Demo(alpha=1).alpha, float)


def test_toml_config_merges_under_typed_flags(tmp_path):
    cfg = tmp_path / "opts.toml"
    cfg.write_text('k = 4\nalpha = 0.25\nmax_speed = 20\nscales = [1.0, 2.0]\nnorth-up = false\n'
                   '[other]\nk = 99\n')
    o = _parse(Demo, ["--config", str(cfg), "--alpha", "0.75"])
    # config beats defaults, typed flags beat the config, untouched fields keep their defaults
    assert o == Demo(k=4, alpha=0.75, max_speed_mps=20.0, scales=(1.0, 2.0), north_up=False)
    # "none" on the command line clears an optional value the config set
    cfg.write_text("window_m = 50.0\n")
    assert _parse(Demo, ["--config", str(cfg)]).window_m == 50.0
    assert _parse(Demo, ["--config", str(cfg), "--window-m", "none"]).window_m is None


def test_toml_section_and_bad_configs(tmp_path):
    cfg = tmp_path / "all.toml"
    cfg.write_text("[tiles]\ntile_m = 200.0\nstride_m = 40\n[run]\nk = 3\n")
    args = _parser(TilesOptions, add_arguments).parse_args(["--config", str(cfg), "--stride-m", "50"])
    assert options_from_args(TilesOptions, args, section="tiles") == TilesOptions(tile_m=200.0, stride_m=50.0)
    bad = tmp_path / "bad.toml"
    for text, what in [("tile_m = nan\n", "finite"), ("tile_m = inf\n", "finite"), ("tile_m = 'big'\n", "number"),
                       ("tile_size = 3\n", "unknown option 'tile_size'"), ("tile_m = [\n", "not valid TOML"),
                       ("batch = 2.5\n", "integer"), ("backend = 'cuda'\n", "choose one of")]:
        bad.write_text(text)
        args = _parser(TilesOptions, add_arguments).parse_args(["--config", str(bad)])
        with pytest.raises(SkylocError) as e:
            options_from_args(TilesOptions, args, section="tiles")
        assert what in str(e.value), text
        if "TOML" in what or "unknown" in what:
            assert str(bad) in str(e.value)
    with pytest.raises(SkylocError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_resolved_config_round_trips(tmp_path):
    o = Demo(k=3, window_m=80.0, scales=(1.0, 1.25), north_up=False, path=Path("a/b.csv"))
    out = write_resolved_config(o, tmp_path / "run" / "config.json", command="demo")
    data = json.loads(out.read_text())
    assert data["format"] == "skyloc.options/1" and data["options_type"] == "Demo" and data["command"] == "demo"
    assert data["options"]["scales"] == [1.0, 1.25] and data["options"]["path"] == "a/b.csv"
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.json"]  # no scratch left behind
    back = _parse(Demo, ["--config", str(out)])
    assert back == dataclasses.replace(o, path="a/b.csv")
    # a JSON that is not a resolved config is refused (hand-written options are TOML)
    other = tmp_path / "x.json"
    other.write_text('{"k": 3}')
    with pytest.raises(SkylocError, match="resolved config"):
        load_config(other)


def test_help_has_no_default_none_noise():
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit):
        skyloc_main(["tiles", "--help"])
    text = " ".join(buf.getvalue().split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 150.0)" in text and "(default: 1.0)" in text and "(default: --progress)" in text


def test_skyloc_tiles_uses_config_and_writes_resolved_config(tmp_path):
    from runtime_core_helpers import make_map, make_tiny_model

    from skyloc.runtime.maps.tileset import TileSet

    model = make_tiny_model(tmp_path / "m.onnx")
    mp = make_map(tmp_path / "map", width_px=240, height_px=200)
    cfg = tmp_path / "tiles.toml"
    cfg.write_text(f'[tiles]\nmodel = "{model}"\nmap = "{mp}"\ntile_m = 60.0\nstride_m = 30.0\nbatch = 8\n'
                   f'progress = false\n')
    out = tmp_path / "t" / "tiles.npz"
    assert skyloc_main(["tiles", "--config", str(cfg), "--out", str(out), "--stride-m", "40"]) == 0
    ts = TileSet.load(out)
    resolved = json.loads(resolved_config_path(out).read_text())
    assert resolved["options"]["stride_m"] == 40.0 and resolved["options"]["tile_m"] == 60.0
    assert resolved["options"]["out"] == str(out) and resolved["options"]["batch"] == 8
    # the grid the tile set holds is the one those options describe (40 m apart)
    from skyloc.core.geo import haversine_m

    c = ts.centers[ts.scale == ts.scale.max()]  # one scale level's grid (each level starts tile/2 in)
    d = min(haversine_m(c[0, 0], c[0, 1], c[i, 0], c[i, 1]) for i in range(1, len(c)))
    assert d == pytest.approx(40.0, rel=0.02)
    # and a NaN typed on the command line stops it with exit code 2, nothing written
    out2 = tmp_path / "t2" / "tiles.npz"
    assert skyloc_main(["tiles", "--config", str(cfg), "--out", str(out2), "--tile-m", "nan"]) == 2
    assert not out2.exists()
