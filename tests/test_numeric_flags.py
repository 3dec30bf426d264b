"""Every numeric flag goes through the one validator (core.options): NaN / inf / out of range refused
with the flag's name and exit 2, before anything is written. `synth` flags are swept here from the
parser itself, so a flag added later without a check fails this test."""
from __future__ import annotations

import argparse
import math

import pytest

from skyloc.cli import main as skyloc
from skyloc.core.options import number

BAD = ("nan", "inf", "-inf")


def _synth_parser() -> argparse.ArgumentParser:
    from skyloc.synth.cli import add_arguments

    p = argparse.ArgumentParser(prog="skyloc synth")
    add_arguments(p)
    return p


def _numeric_flags() -> list[tuple[str, str]]:
    """(subcommand, flag) for every synth flag whose type is not a string / path / choice."""
    p = _synth_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, sp in sub.choices.items():
        for a in sp._actions:
            if not a.option_strings or a.choices or a.type in (None, str) or getattr(a.type, "__name__", "") == "Path":
                continue
            out.append((name, a.option_strings[0]))
    return out


FLAGS = _numeric_flags()


def test_the_sweep_sees_the_synth_flags():
    names = {f for _, f in FLAGS}
    assert {"--speed", "--photometric", "--fov", "--seed", "--lat", "--lon", "--size-m", "--mpp", "--distractors",
            "--margin"} <= names and len(FLAGS) >= 40


@pytest.mark.parametrize("cmd,flag", FLAGS, ids=[f"{c}{f}" for c, f in FLAGS])
def test_every_synth_numeric_flag_refuses_non_finite_values(cmd, flag, tmp_path, capsys):
    for bad in BAD:
        value = f"{bad},{bad}" if flag.endswith("range") else bad
        with pytest.raises(SystemExit) as exc:
            skyloc(["synth", cmd, "--out", str(tmp_path / "o"), flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}" in err, err
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
    with pytest.raises(SystemExit) as exc:
        skyloc(argv + ["--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
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
