"""Every numeric flag goes through the one validator (core.options): NaN / inf / out of range refused
with the flag's name and exit 2, before anything is written. `synth` flags are swept here from the
parser itself (as `skyloc bench faults` reads it: benchmarks.fault_sweep), so a flag added later without
a check fails this test."""
from __future__ import annotations

import argparse
import math
import re

import pytest

from skyloc.cli import main as skyloc
from skyloc.core.options import number

BAD = ("nan", "inf", "-inf")


def _numeric_flags() -> list[tuple[str, str]]:
    """(subcommand, flag) for every synth flag that takes a number (dataclass options or argparse types)."""
    from skyloc.benchmarks.fault_sweep import numeric_flags

    return [(name, flag) for name in ("world", "dataset", "flight") for flag, _, _ in numeric_flags(f"synth {name}")]


def _names(flag: str, err: str) -> bool:
    """The error names this flag (argparse's "argument --x", or the options' "(--x)"), not a longer one."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", err) is not None


def _rc(argv: list[str]) -> int:
    """`skyloc argv`'s exit status: argparse exits 2 for a value that does not parse, the options' check
    (a SkylocError) returns 2."""
    try:
        return skyloc(argv)
    except SystemExit as exc:
        return exc.code


FLAGS = _numeric_flags()


def test_the_sweep_sees_the_synth_flags():
    names = {f for _, f in FLAGS}
    assert {"--speed", "--photometric", "--fov", "--seed", "--lat", "--lon", "--size-m", "--mpp", "--distractors",
            "--margin"} <= names and len(FLAGS) >= 40


@pytest.mark.parametrize("cmd,flag", FLAGS, ids=[f"{c}{f}" for c, f in FLAGS])
def test_every_synth_numeric_flag_refuses_non_finite_values(cmd, flag, tmp_path, capsys):
    for bad in BAD:
        value = f"{bad},{bad}" if flag.endswith("range") else bad
        assert _rc(["synth", cmd, "--out", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err
        assert _names(flag, err), err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("argv,flag", [
    (["synth", "flight", "--fov", "0"], "--fov"), (["synth", "flight", "--fov", "-5"], "--fov"),
    (["synth", "flight", "--seed", "-5"], "--seed"), (["synth", "world", "--seed", "-5"], "--seed"),
    (["synth", "world", "--lat", "91"], "--lat"), (["synth", "dataset", "--distractors", "-5"], "--distractors"),
    (["synth", "dataset", "--fov", "180"], "--fov"), (["synth", "flight", "--altitude-range", "50,20"],
                                                     "--altitude-range"),
    (["synth", "flight", "--width", "2.5"], "--width"),
])
def test_out_of_range_synth_values_are_refused_before_writing(argv, flag, tmp_path, capsys):
    assert _rc(argv + ["--out", str(tmp_path / "o")]) == 2 and _names(flag, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_synth_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    f = tmp_path / "map.csv"
    f.write_text("keep me\n")
    assert skyloc(["synth", "flight", "--out", str(f), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "keep me\n"


def test_number_is_the_options_check():
    """The argparse type and the dataclass options share one check: same verdicts on the same values."""
    from skyloc.core.errors import SkylocError
    from skyloc.core.options import check_number

    parse = number(float, gt=0, le=10)
    for text in ("0", "10", "10.5", "nan", "inf", "-1", "1e-9"):
        v = float(text)
        try:
            check_number(v, "--x", gt=0, le=10)
            ok = True
        except SkylocError:
            ok = False
        try:
            parse(text)
            ok2 = True
        except argparse.ArgumentTypeError:
            ok2 = False
        assert ok == ok2 == (math.isfinite(v) and 0 < v <= 10), text
