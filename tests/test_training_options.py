"""`skyloc train` / `skyloc eval` take their options from dataclasses like `run` and `tiles`: every flag
reachable from a `--config` TOML table too, typed flags over the file, numbers checked with the flag's name."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from skyloc.core.config import options_from_args
from skyloc.core.errors import SkylocError
from skyloc.training import eval_cli, train_cli


def _parse(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_train_options_from_toml_under_typed_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\npreset = "tiny"\nepochs = 3\nlr = 0.01\nlr_steps = [2]\nprogress = false\n'
                   'amp = true\n')
    o = options_from_args(train_cli.TrainCliOptions, _parse(train_cli, ["--config", str(cfg), "--epochs", "5"]),
                          section="train")
    assert (o.preset, o.epochs, o.lr, o.lr_steps, o.progress, o.amp) == ("tiny", 5, 0.01, (2,), False, True)
    # left out: the preset's value (None); a switch can turn a config value off
    o = options_from_args(train_cli.TrainCliOptions, _parse(train_cli, ["--config", str(cfg), "--no-amp"]),
                          section="train")
    assert o.amp is False and o.batch_size is None and o.size is None
    o = options_from_args(train_cli.TrainCliOptions, _parse(train_cli, []), section="train")
    assert o.amp is None and o.preset == "msba" and o.progress is True
    # '' = never decay the lr
    o = options_from_args(train_cli.TrainCliOptions, _parse(train_cli, ["--lr-steps", ""]), section="train")
    assert o.lr_steps == ()


def test_train_flags_refuse_bad_values_by_name(capsys) -> None:
    with pytest.raises(SystemExit) as exc:  # not a number: argparse, at parse time
        _parse(train_cli, ["--epochs", "x"])
    assert exc.value.code == 2 and "--epochs" in capsys.readouterr().err
    for argv, flag in ((["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--preset", "huge"], "--preset")):
        with pytest.raises(SkylocError, match=flag):  # out of range / not a choice: when the options resolve
            options_from_args(train_cli.TrainCliOptions, _parse(train_cli, argv), section="train")


def test_train_config_refuses_unknown_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\nepoch = 3\n')
    with pytest.raises(SkylocError, match="unknown option 'epoch'"):
        options_from_args(train_cli.TrainCliOptions, _parse(train_cli, ["--config", str(cfg)]), section="train")


def test_eval_options_rows_and_toml(tmp_path: Path) -> None:
    o = options_from_args(eval_cli.EvalCliOptions, _parse(eval_cli, ["--parts", "table7;0,6", "--shift", "0,10",
                                                                      "--test-size", "64,48", "--no-flip"]),
                          section="eval")
    assert o.parts == ("table7", "0,6") and o.shift == (0, 10) and o.test_size == (64, 48) and o.flip is False
    cfg = tmp_path / "eval.toml"
    cfg.write_text('[eval]\nparts = ["table7", "0,1"]\nbatch_size = 8\nreweight = "on"\n')
    o = options_from_args(eval_cli.EvalCliOptions, _parse(eval_cli, ["--config", str(cfg)]), section="eval")
    assert (o.parts, o.batch_size, o.reweight) == (("table7", "0,1"), 8, "on")
    with pytest.raises(SkylocError, match="--batch-size"):
        options_from_args(eval_cli.EvalCliOptions, _parse(eval_cli, ["--batch-size", "0"]), section="eval")
