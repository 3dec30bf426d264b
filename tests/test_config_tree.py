"""One config tree: `engine`, `check`, `calibrate`, `export onnx|fp16` and every `bench` take their
options from a dataclass, so each reads a `--config FILE.toml` table named after it, a typed flag
overrides the file, a NaN / out-of-range number is refused naming the flag, and the commands that
write an output record the options used beside it (`<out>.config.json`)."""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from skyloc.benchmarks.bench_options import BENCHES
from skyloc.cli import COMMANDS
from skyloc.cli import main as skyloc
from skyloc.core.config import config_path_beside, options_from_args
from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter
from skyloc.core.sidecar import ModelSidecar, read_model_sidecar, sha256_file, write_model_sidecar


def resolve(command: str, argv: list[str]) -> Any:
    """The options a command resolves from `argv`, through its own parser and options class, as
    `skyloc COMMAND argv` would (parse only: nothing runs)."""
    p = argparse.ArgumentParser(prog=f"skyloc {command}", formatter_class=HelpFormatter)
    importlib.import_module(COMMANDS[command][0]).add_arguments(p)
    args = p.parse_args(argv)
    sub = getattr(args, "bench", None) or getattr(args, "what", None)
    if command == "bench":
        return options_from_args(BENCHES[sub][0], args, section=f"bench.{sub}")
    classes = {"engine": ("skyloc.export.engine_cli", "EngineCliOptions"),
               "check": ("skyloc.calibration.check_cli", "CheckCliOptions"),
               "calibrate": ("skyloc.calibration.cli", "CalibrateCliOptions"),
               "export onnx": ("skyloc.export.cli", "ExportOnnxOptions"),
               "export fp16": ("skyloc.export.cli", "ExportFp16Options")}
    key = f"{command} {sub}" if sub else command
    module, cls = classes[key]
    return options_from_args(getattr(importlib.import_module(module), cls), args, section=key.replace(" ", "."))


# (command, argv before the options, TOML section, option, TOML value, flag, typed value, expected typed,
#  a refused value and the word its error has)
CASES = [
    ("engine", [], "engine", "max_batch", "4", "--max-batch", "2", 2, "0", ">= 1"),
    ("engine", [], "engine", "workspace_mb", "512", "--workspace-mb", "256", 256, "nan", "integer"),
    ("calibrate", [], "calibrate", "num_images", "64", "--num-images", "32", 32, "2000000", "<= 1000000"),
    ("export", ["onnx"], "export.onnx", "opset", "19", "--opset", "20", 20, "17", ">= 18"),
    ("bench", ["latency"], "bench.latency", "runs", "50", "--runs", "7", 7, "0", ">= 1"),
    ("bench", ["search"], "bench.search", "max_gb", "2.5", "--max-gb", "0.5", 0.5, "nan", "finite"),
    ("bench", ["search"], "bench.search", "tiles", "[300, 1000]", "--tiles", "1e3,2000", (1000, 2000), "-5", ">= 1"),
    ("bench", ["accuracy"], "bench.accuracy", "lr", "0.01", "--lr", "0.002", 0.002, "inf", "finite"),
    ("bench", ["runtime"], "bench.runtime", "flight_seconds", "12.0", "--flight-seconds", "9", 9.0, "-1", "> 0"),
    ("bench", ["learned-gate"], "bench.learned-gate", "per_map", "3", "--per-map", "5", 5, "-2", ">= 0"),
    ("bench", ["flight"], "bench.flight", "altitudes", "[60.0]", "--altitudes", "90,120", (90.0, 120.0), "nan,90",
     "finite"),
    ("bench", ["flight-latency"], "bench.flight-latency", "fps", "1.5", "--fps", "3", 3.0, "nan", "finite"),
    ("bench", ["faults"], "bench.faults", "threads", "1", "--threads", "2", 2, "-1", ">= 0"),
    ("bench", ["soak"], "bench.soak", "share", "0.2", "--share", "0.05", 0.05, "0.5", "<= 0.33"),
]


def _toml(path: Path, section: str, body: str) -> Path:
    # a dotted section is a nested table: [bench.search]; other commands' tables sit beside it
    path.write_text(f"[{section}]\n{body}\n\n[somebody-else]\nx = 1\n")
    return path


@pytest.mark.parametrize("cmd,pre,section,key,toml,flag,typed,want,bad,why", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_toml_table_sets_an_option_and_a_typed_flag_overrides_it(tmp_path: Path, cmd, pre, section, key, toml, flag,
                                                                 typed, want, bad, why) -> None:
    cfg = _toml(tmp_path / "c.toml", section, f"{key} = {toml}")
    from_file = getattr(resolve(cmd, [*pre, "--config", str(cfg)]), key)
    assert from_file == pytest.approx(tuple(json.loads(toml)) if toml.startswith("[") else float(toml))
    assert from_file != getattr(resolve(cmd, pre), key)  # the table changed something
    assert getattr(resolve(cmd, [*pre, "--config", str(cfg), flag, typed]), key) == want


def _refusal(cmd: str, argv: list[str], capsys) -> str:
    """The error a command gives for `argv` (its parser's for a flag that does not parse, else the options')."""
    try:
        resolve(cmd, argv)
    except SkylocError as exc:
        return str(exc)
    except SystemExit as exc:
        assert exc.code == 2
        return capsys.readouterr().err
    raise AssertionError(f"{cmd} {argv} was accepted")


@pytest.mark.parametrize("cmd,pre,section,key,toml,flag,typed,want,bad,why", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_bad_numbers_are_refused_naming_the_flag(tmp_path: Path, capsys, cmd, pre, section, key, toml, flag, typed,
                                                 want, bad, why) -> None:
    err = _refusal(cmd, [*pre, flag, bad], capsys)
    assert flag in err and why in err, err
    # the same value from the file is refused too, naming the option
    cfg = _toml(tmp_path / "bad.toml", section, f"{key} = " + (f"[{bad}]" if toml.startswith("[") else bad))
    err = _refusal(cmd, [*pre, "--config", str(cfg)], capsys)
    assert key in err and (why in err or "integer" in err), err
    # and through `skyloc` itself: exit 2 naming the flag, before anything runs
    try:
        rc = skyloc([cmd, *pre, flag, bad])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2 and flag in capsys.readouterr().err


def test_every_bench_is_a_dataclass_with_a_table(tmp_path: Path) -> None:
    """Every `skyloc bench` subcommand resolves from its [bench.NAME] table (common options included)."""
    cfg = tmp_path / "b.toml"
    cfg.write_text("".join(f'[bench.{n}]\nname = "from-toml-{n}"\nquiet = true\n' for n in BENCHES))
    p = argparse.ArgumentParser()
    importlib.import_module(COMMANDS["bench"][0]).add_arguments(p)
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(BENCHES)
    for name in BENCHES:
        o = resolve("bench", [name, "--config", str(cfg)])
        assert (o.name, o.quiet) == (f"from-toml-{name}", True)
        assert resolve("bench", [name, "--config", str(cfg), "--no-quiet"]).quiet is False


def test_switches_and_word_lists_keep_their_spellings(tmp_path: Path) -> None:
    o = resolve("engine", ["--onnx", "m.onnx", "--out", "m.engine", "--no-verify", "--version-compatible"])
    assert (o.verify, o.version_compatible, o.onnx, o.opt_batch) == (False, True, "m.onnx", None)
    o = resolve("calibrate", ["--images", "a", "b", "--compare", "f.onnx", "--no-progress", "--method", "entropy"])
    assert (o.images, o.compare, o.progress, o.method) == (("a", "b"), ("f.onnx",), False, "entropy")
    cfg = _toml(tmp_path / "c.toml", "calibrate", 'images = ["x", "y"]\nmethod = "percentile"')
    o = resolve("calibrate", ["--config", str(cfg), "--images", "z"])
    assert (o.images, o.method) == (("z",), "percentile")
    with pytest.raises(SkylocError, match="method.*choose one of"):
        resolve("calibrate", ["--method", "median"])
    o = resolve("bench", ["flight", "--no-photo", "--no-stage", "--no-prior", "--no-photo-run", "--maps", "turku"])
    assert (o.photo, o.stage, o.prior, o.photo_run, o.maps) == (False, False, False, False, ("turku",))
    o = resolve("bench", ["latency", "--models", "a.onnx", "b.onnx", "--batches", "1", "--precisions", "fp32"])
    assert (o.models, o.batches, o.precisions, o.sizes) == (("a.onnx", "b.onnx"), (1,), ("fp32",), None)
    assert resolve("bench", ["accuracy", "--no-quant"]).quant is False
    assert resolve("bench", ["accuracy"]).ablation_data is None  # unset stays "decide from --seeds"
    assert resolve("bench", ["accuracy", "--no-ablation-data"]).ablation_data is False
    assert resolve("bench", ["learned-gate", "--rescore", "a.csv", "b.csv"]).rescore == ("a.csv", "b.csv")
    assert resolve("check", ["a.onnx", "b.onnx", "--strict"]).models == ("a.onnx", "b.onnx")


def _fp32_onnx(path: Path) -> Path:
    """A tiny exported-looking FP32 model: uint8 NHWC in, a float embedding out, with its sidecar."""
    g = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1, 2], keepdims=0)],
        "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 256, 256, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=3, precision="fp32", opset=17,
                                           model_id="0" * 16, onnx_sha256=sha256_file(path)))
    return path


def test_export_fp16_reads_its_table_and_records_the_options_beside_the_output(tmp_path: Path, capsys) -> None:
    src = _fp32_onnx(tmp_path / "m.onnx")
    out = tmp_path / "from-toml.onnx"
    cfg = _toml(tmp_path / "c.toml", "export.fp16", f"model = {str(src)!r}\nout = {str(out)!r}")
    assert skyloc(["export", "fp16", "--config", str(cfg)]) == 0
    assert read_model_sidecar(out).precision == "fp16"
    rec = json.loads(config_path_beside(out).read_text())
    assert config_path_beside(out).name == "from-toml.onnx.config.json"
    assert rec["options_type"] == "ExportFp16Options" and rec["options"] == {"model": str(src), "out": str(out)}
    typed = tmp_path / "typed.onnx"
    assert skyloc(["export", "fp16", "--config", str(cfg), "--out", str(typed)]) == 0
    assert json.loads(config_path_beside(typed).read_text())["options"]["out"] == str(typed)
    # the resolved config is itself a --config: the same options again
    again = tmp_path / "again.onnx"
    assert skyloc(["export", "fp16", "--config", str(config_path_beside(typed)), "--out", str(again)]) == 0
    assert json.loads(config_path_beside(again).read_text())["options"]["model"] == str(src)


def test_check_strict_from_its_table(tmp_path: Path, capsys) -> None:
    from test_trt_lint import _qdq_graph  # a Q/DQ placement TensorRT accepts but cannot fuse: a warning

    warn = tmp_path / "warn.onnx"
    onnx.save(_qdq_graph(relu_after_conv_q=True), str(warn))
    cfg = _toml(tmp_path / "c.toml", "check", "strict = true")
    assert skyloc(["check", str(warn)]) == 0
    assert skyloc(["check", "--config", str(cfg), str(warn)]) == 1  # the table made warnings fail
    assert skyloc(["check", "--config", str(cfg), "--no-strict", str(warn)]) == 0
    capsys.readouterr()


def test_bench_search_from_its_table_writes_its_config_beside_the_results(tmp_path: Path, capsys) -> None:
    cfg = _toml(tmp_path / "c.toml", "bench.search",
                'dims = [8]\ntiles = [300]\nkinds = ["exact"]\nqueries = 20\ntimed_queries = 5\nname = "toml"')
    res = tmp_path / "res"
    assert skyloc(["bench", "search", "--config", str(cfg), "--results-dir", str(res), "--quiet", "--k", "2"]) == 0
    assert (res / "toml.csv").is_file() and (res / "toml.md").is_file()
    rec = json.loads((res / "toml.config.json").read_text())
    assert rec["options_type"] == "SearchBench"
    assert (rec["options"]["dims"], rec["options"]["tiles"], rec["options"]["k"]) == ([8], [300], 2)
    capsys.readouterr()


def test_engine_and_calibrate_name_their_config_after_the_output(tmp_path: Path, capsys) -> None:
    """Before anything heavy runs: a missing input is refused and no config is written."""
    assert config_path_beside(tmp_path / "m.engine") == tmp_path / "m.engine.config.json"
    assert config_path_beside(tmp_path / "int8") == tmp_path / "int8.config.json"
    cfg = _toml(tmp_path / "c.toml", "engine", f"onnx = {str(tmp_path / 'none.onnx')!r}\nmax_batch = 2")
    assert skyloc(["engine", "--config", str(cfg), "--out", str(tmp_path / "m.engine")]) == 2
    assert not (tmp_path / "m.engine.config.json").exists()
    assert skyloc(["engine", "--config", str(cfg)]) == 2  # neither --out nor --adopt
    assert "exactly one of --out" in capsys.readouterr().err
    assert skyloc(["calibrate", "--out", str(tmp_path / "int8")]) == 2
    assert "missing --model, --images" in capsys.readouterr().err
    assert not (tmp_path / "int8.config.json").exists()


def test_integer_options_take_scientific_notation_only_when_whole(capsys) -> None:
    assert resolve("bench", ["search", "--tiles", "1e5,300"]).tiles == (100_000, 300)
    for bad in ("2.5", "nan", "1e400"):
        err = _refusal("bench", ["search", "--tiles", bad], capsys)
        assert "--tiles" in err and "not an integer" in err, err


@pytest.mark.gpu
def test_engine_from_its_table_records_the_options_beside_the_engine(tmp_path: Path, capsys) -> None:
    from export_helpers import gpu_skip_reason, make_tiny_checkpoint

    why = gpu_skip_reason()
    if why:
        pytest.skip(why)
    from skyloc.core.sidecar import read_engine_sidecar
    from skyloc.export.onnx_export import export_onnx

    fp32 = export_onnx(make_tiny_checkpoint(tmp_path / "tiny.pt"), tmp_path / "model.onnx")
    out = tmp_path / "model.engine"
    cfg = _toml(tmp_path / "c.toml", "engine", f"onnx = {str(fp32)!r}\nmax_batch = 4\nopt_batch = 2")
    assert skyloc(["engine", "--config", str(cfg), "--out", str(out), "--max-batch", "2", "--opt-batch", "1"]) == 0
    side = read_engine_sidecar(out)
    assert (side.max_batch, side.opt_batch) == (2, 1)  # the typed flags won over the table
    rec = json.loads(config_path_beside(out).read_text())
    assert rec["options"]["max_batch"] == 2 and rec["options"]["onnx"] == str(fp32)
    capsys.readouterr()
