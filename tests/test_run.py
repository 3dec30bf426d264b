"""`skyloc run` end to end: accuracy on a synthetic flight with a trained tiny model, and every
robustness case (bad frames, NaN embeddings, live sources that drop, mismatched tile sets,
SIGINT / SIGTERM) with its counts checked."""
from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import InputContract, ModelSidecar, sha256_file, write_model_sidecar

REPO = Path(__file__).parents[1]
R = 6378137.0


def _haversine(lat1, lon1, lat2, lon2) -> float:
    """Written out here so the error check does not lean on runtime.geo."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * R * math.asin(math.sqrt(a))


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


# --- a hand-built ONNX embedder whose output is NaN for an all-black frame -------------------


def make_sum_norm_model(path: Path, model_id: str, size: int = 32, dim: int = 16, seed: int = 0) -> Path:
    """uint8 NHWC -> 4x4 average pool -> divide by the sum of the pooled values (0/0 = NaN for
    a black frame) -> linear -> embedding. With its sidecar."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((48, dim)).astype(np.float32)
    k = size // 4
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["p"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["p"], ["flat"], axis=1),
        helper.make_node("ReduceSum", ["flat", "axes"], ["total"], keepdims=1),
        helper.make_node("Div", ["flat", "total"], ["normed"]),
        helper.make_node("MatMul", ["normed", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "sumnorm",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    write_model_sidecar(path, ModelSidecar(variant="global", embedding_dim=dim, precision="fp32", opset=17,
                                           model_id=model_id, onnx_sha256=sha256_file(path),
                                           input=InputContract(height=size, width=size), backbone="test"))
    return path


def make_noise_map(folder: Path, size_px: int = 300, lat0: float = 46.95, lon0: float = 7.30) -> Path:
    from skyloc.core import geo
    from skyloc.runtime.maps.mosaic import write_corners_csv

    rng = np.random.default_rng(1)
    img = cv2.resize(rng.integers(30, 230, (size_px // 10, size_px // 10, 3), dtype=np.uint8), (size_px, size_px),
                     interpolation=cv2.INTER_CUBIC)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "map.png"), img)
    return write_corners_csv(folder / "map.csv", [("map.png", *geo.corners_for_centre(lat0, lon0, size_px, size_px))])


@pytest.fixture(scope="module")
def nan_setup(tmp_path_factory) -> dict[str, Path]:
    from skyloc.runtime.maps.tileset_build import build_tileset

    d = tmp_path_factory.mktemp("nanrun")
    map_csv = make_noise_map(d / "map")
    a = make_sum_norm_model(d / "a.onnx", "model-a", seed=0)
    b = make_sum_norm_model(d / "b.onnx", "model-b", seed=1)
    ta = build_tileset(a, map_csv, d / "tiles_a.npz", tile_m=60, stride_m=30, progress=False)
    tb = build_tileset(b, map_csv, d / "tiles_b.npz", tile_m=60, stride_m=30, progress=False)
    return {"dir": d, "model": a, "tiles": ta, "other_tiles": tb}


def test_bad_frames_are_skipped_and_counted(nan_setup, tmp_path):
    from pymavlink import mavutil

    rng = np.random.default_rng(0)
    good = lambda: cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "01.png"), good())
    jpg = cv2.imencode(".jpg", good())[1].tobytes()
    (folder / "02.jpg").write_bytes(jpg[:30] + bytes(range(200)))  # corrupt
    (folder / "03.jpg").write_bytes(b"")  # empty
    cv2.imwrite(str(folder / "04.png"), good()[:, :, 0])  # grayscale
    cv2.imwrite(str(folder / "05.png"), good()[:48])  # another size: frames may change size mid-run
    cv2.imwrite(str(folder / "06.png"), np.zeros((64, 64, 3), np.uint8))  # black: the quality gate stops it
    cv2.imwrite(str(folder / "07.png"), good())
    out, stats_path, mav = tmp_path / "fixes.jsonl", tmp_path / "stats.json", tmp_path / "gps.mavlink"
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]),
                 "--source", str(folder), "--out", str(out), "--stats-json", str(stats_path),
                 "--mavlink", f"file:{mav}", "--max-speed", "1000", "--blank-cos", "0.99999"])
    assert rc == 0
    lines = _lines(out)
    assert [l["source"] for l in lines] == sorted(p.name for p in folder.iterdir())
    assert [l.get("skipped") for l in lines] == [None, "corrupt", "empty", "grayscale", None, "low-contrast", None]
    assert all(set(l["latency_ms"]) >= {"grab", "total"} for l in lines)
    assert {"grab", "pose", "quality", "rectify", "preprocess", "infer", "retrieve", "register", "filter",
            "total"} <= set(lines[0]["latency_ms"])
    stats = json.loads(stats_path.read_text())
    assert stats["frames"] == 7 and stats["fixes"] == 3 and stats["errors"] == 0
    assert stats["skipped"] == {"corrupt": 1, "empty": 1, "grayscale": 1, "low-contrast": 1}
    # no map imagery: retrieval only, so every fix is unverified and none goes out as a GPS fix
    fixes = [l for l in lines if "skipped" not in l]
    assert all(l["verified"] is False and l["send_3d"] is False for l in fixes)
    assert stats["registration"] == "off" and stats["sent_3d"] == 0
    log = mavutil.mavlink_connection(str(mav), notimestamps=True)
    sent = []
    while (m := log.recv_match(type="GPS_INPUT", blocking=False)) is not None:
        sent.append(m)
    assert sent == []


def test_mismatched_tile_set_is_refused(nan_setup, tmp_path, capsys):
    from skyloc.runtime.run.loop import run

    with pytest.raises(SkylocError, match="rebuild"):
        run(nan_setup["model"], nan_setup["other_tiles"], str(tmp_path), [])
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["other_tiles"]),
                 "--source", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2 and "rebuild" in capsys.readouterr().err


def test_live_source_that_never_opens_is_retried_then_given_up(nan_setup, tmp_path):
    stats_path = tmp_path / "stats.json"
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]),
                 "--source", "rtsp://127.0.0.1:9/none", "--reopen-initial", "0.01", "--reopen-attempts", "3",
                 "--out", str(tmp_path / "f.jsonl"), "--stats-json", str(stats_path)])
    stats = json.loads(stats_path.read_text())
    # a source that never gave a frame has failed: exit 4, as the README's table says
    assert rc == 4 and stats["frames"] == 0 and stats["reopens"] == 3 and stats["source_failed"]
    assert stats["exit_code"] == 4


def test_live_reopen_budget_is_finite_by_default_and_said():
    from skyloc.runtime.run.loop import RunOptions

    policy = RunOptions().reconnect
    assert policy.max_attempts is not None and policy.max_attempts > 0
    total = sum(policy.delay(k) for k in range(1, policy.max_attempts + 1))
    assert 60 <= total <= 600  # minutes of outage ridden out, never forever
    p = subprocess.run([sys.executable, "-m", "skyloc", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert "--reopen-attempts" in p.stdout and "exit 4" in " ".join(p.stdout.split())


def _video(path: Path, n: int, size: int = 64) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
    rng = np.random.default_rng(2)
    base = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    for i in range(n):
        w.write(np.roll(base, i, axis=1))
    w.release()
    return path


def test_live_video_that_ends_is_reopened(nan_setup, tmp_path):
    video = _video(tmp_path / "short.avi", 4)
    stats_path = tmp_path / "stats.json"
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]),
                 "--source", str(video), "--live", "--reopen-initial", "0.01", "--max-frames", "12",
                 "--out", str(tmp_path / "f.jsonl"), "--stats-json", str(stats_path)])
    stats = json.loads(stats_path.read_text())
    # one play-through gives at most 4 frames, so 12 frames need at least 2 reopens
    assert rc == 0 and stats["frames"] == 12 and stats["reopens"] >= 2
    assert stats["stopped_by"] == "max-frames"
    assert len(_lines(tmp_path / "f.jsonl")) == 12


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                                 signal.SIGUSR2])
def test_signal_stops_cleanly_with_complete_output(nan_setup, tmp_path, sig):
    video = _video(tmp_path / "long.avi", 3000)
    out, stats_path = tmp_path / "f.jsonl", tmp_path / "stats.json"
    cmd = [sys.executable, "-m", "skyloc", "run", "--model", str(nan_setup["model"]),
           "--tiles", str(nan_setup["tiles"]), "--source", str(video), "--out", str(out),
           "--stats-json", str(stats_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "run ended before the signal: " + proc.stderr.read()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    text = out.read_text()
    assert text.endswith("\n")
    lines = [json.loads(l) for l in text.splitlines()]  # every line complete
    stats = json.loads(stats_path.read_text())
    assert 5 <= len(lines) == stats["frames"] < 3000
    assert [l["frame"] for l in lines] == list(range(len(lines)))
    assert stats["stopped_by"] == sig.name and f"stopped by {sig.name}" in err


# --- accuracy: a trained tiny model on a synthetic flight ------------------------------------

@pytest.fixture(scope="session")
def flight_pipeline(demo_run) -> dict:
    """The quick demo's artifacts: procedural world -> synthetic dataset -> trained tiny MSBA ->
    ONNX -> INT8 -> tile set of the same map (recording its imagery) -> a flight with the altitude
    wandering, the camera tilted and the heading changing (tests/conftest.py trains it once)."""
    out = demo_run["out"]
    return {"model": out / "int8" / "model.int8-ort.onnx", "tiles": out / "tiles.npz",
            "video": out / "flight" / "flight.mp4", "truth": out / "flight" / "truth.csv",
            "camera": out / "flight" / "flight.json", "dir": out}


@pytest.mark.slow
def test_run_on_a_synthetic_flight_with_the_trained_model(flight_pipeline, tmp_path):
    p = flight_pipeline
    with open(p["truth"], newline="") as f:
        truth = {int(r["frame"]): r for r in csv.DictReader(f)}
    base = ["run", "--model", str(p["model"]), "--tiles", str(p["tiles"]), "--source", str(p["video"]),
            "--camera", str(p["camera"]), "--max-frames", "12",
            # a compass and a baro would give these; the log's positions are never read
            "--telemetry", str(p["truth"]),
            # the take-off point is known to 200 m (the quick model's retrieval is weak map-wide)
            "--start", f"{truth[0]['lat']},{truth[0]['lon']},200"]
    out, stats_path = tmp_path / "fixes.jsonl", tmp_path / "stats.json"
    # heading known, the tile set's own map imagery for registration (checked by its sha256)
    assert skyloc(base + ["--out", str(out), "--stats-json", str(stats_path), "--truth", str(p["truth"])]) == 0
    lines = _lines(out)
    assert len(lines) == 12 and all("skipped" not in l for l in lines)
    err = {l["frame"]: _haversine(float(truth[l["frame"]]["lat"]), float(truth[l["frame"]]["lon"]),
                                  l["raw_lat"], l["raw_lon"]) for l in lines}
    verified = [l for l in lines if l["verified"]]
    assert len(verified) >= 9 and float(np.median([err[l["frame"]] for l in verified])) <= 5.0
    assert all(_haversine(float(truth[l["frame"]]["lat"]), float(truth[l["frame"]]["lon"]), l["lat"], l["lon"]) <= 50
               for l in lines if l["accepted"])
    stats = json.loads(stats_path.read_text())
    # `--registrar auto`: the learned registrar when the tile set carries map features (the demo's does)
    from skyloc.runtime.maps.tileset import TileSet

    learned = bool(TileSet.load(p["tiles"]).meta.get("map_features"))
    assert stats["truth"]["verified"] == len(verified) and stats["registration"] == ("xfeat" if learned else "ncc")
    assert stats["truth"]["verified_median_m"] == pytest.approx(float(np.median([err[l["frame"]] for l in verified])),
                                                                abs=0.02)

    # retrieval only: the same flight still gives positions, every one labelled unverified, none sent
    out2 = tmp_path / "retrieval.jsonl"
    assert skyloc(base + ["--out", str(out2), "--no-register"]) == 0
    lines2 = _lines(out2)
    assert len(lines2) == 12 and all(l["verified"] is False and l["send_3d"] is False for l in lines2)


# --- options, outputs and exit codes -------------------------------------------------------------


def test_cli_defaults_equal_the_dataclass_defaults():
    import argparse
    import dataclasses

    from skyloc.runtime.run import cli as run_cli
    from skyloc.runtime.run.loop import RunOptions
    from skyloc.core.config import options_from_args

    p = argparse.ArgumentParser()
    run_cli.add_arguments(p)
    args = p.parse_args(["--model", "m.onnx", "--tiles", "t.npz", "--source", "v.mp4"])
    assert options_from_args(RunOptions, args) == RunOptions()
    flags = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(RunOptions):
        if f.metadata.get("cli", True):
            assert flags[f.name].default == getattr(RunOptions(), f.name), f.name
    assert "default: None" not in p.format_help()


@pytest.mark.parametrize("flag,value", [("--max-speed", "nan"), ("--max-speed", "0"), ("--fps", "nan"),
                                        ("--start", "60.1,nan"), ("--start", "95,22"), ("--rotations", "0"),
                                        ("--satellites", "-1"), ("--yaw", "inf")])
def test_bad_numbers_are_refused_before_anything_opens(nan_setup, tmp_path, flag, value, capsys):
    out = tmp_path / "f.jsonl"
    try:
        rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]),
                     "--source", str(tmp_path), "--out", str(out), flag, value])
    except SystemExit as exc:  # argparse's own error exit
        rc = exc.code
    assert rc == 2 and not out.exists()
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("which", ["tiles", "model", "source"])
def test_out_equal_to_an_input_is_refused_and_the_input_untouched(nan_setup, tmp_path, which):
    video = _video(tmp_path / "v.avi", 3)
    paths = {"model": nan_setup["model"], "tiles": nan_setup["tiles"], "source": video}
    before = paths[which].read_bytes()
    rc = skyloc(["run", "--model", str(paths["model"]), "--tiles", str(paths["tiles"]), "--source", str(video),
                 "--out", str(paths[which]), "--overwrite"])
    assert rc == 2 and paths[which].read_bytes() == before


def test_existing_output_is_kept_without_overwrite(nan_setup, tmp_path, capsys):
    video = _video(tmp_path / "v.avi", 3)
    out = tmp_path / "fixes.jsonl"
    out.write_text("previous run\n")
    base = ["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]), "--source", str(video),
            "--out", str(out), "--blank-cos", "0.99999"]
    assert skyloc(base) == 2 and out.read_text() == "previous run\n"
    assert "--overwrite" in capsys.readouterr().err
    assert skyloc(base + ["--overwrite"]) == 0
    assert [json.loads(l)["frame"] for l in out.read_text().splitlines()] == [0, 1, 2]
    # the resolved config beside it, and --config reads it back
    cfg = tmp_path / "fixes.jsonl.config.json"
    assert json.loads(cfg.read_text())["options"]["blank_cos"] == 0.99999
    out2 = tmp_path / "again.jsonl"
    assert skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]), "--source",
                   str(video), "--config", str(cfg), "--out", str(out2)]) == 0
    assert json.loads((tmp_path / "again.jsonl.config.json").read_text())["options"]["blank_cos"] == 0.99999


def test_a_startup_error_leaves_the_old_output_alone(nan_setup, tmp_path):
    out = tmp_path / "fixes.jsonl"
    out.write_text("previous run\n")
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["other_tiles"]),
                 "--source", str(tmp_path), "--out", str(out), "--overwrite"])
    assert rc == 2 and out.read_text() == "previous run\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill the disk")
def test_output_failures_are_counted_and_give_exit_code_3(nan_setup, tmp_path):
    video = _video(tmp_path / "v.avi", 4)
    stats_path = tmp_path / "stats.json"
    rc = skyloc(["run", "--model", str(nan_setup["model"]), "--tiles", str(nan_setup["tiles"]), "--source",
                 str(video), "--out", "/dev/full", "--stats-json", str(stats_path), "--overwrite"])
    stats = json.loads(stats_path.read_text())
    assert rc == 3 and stats["exit_code"] == 3 and stats["output_errors"] >= 4 and stats["frames"] == 4
