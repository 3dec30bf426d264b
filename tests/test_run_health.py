"""`skyloc run` never stalls or ends silently: telemetry that misses the frames is said at start and
each record says what its pose fell back to; the register stage keeps to its per-frame deadline;
a video that cannot be decoded and a MAVLink pose that never becomes valid are said, the former
with exit 4. Real components throughout: the tiny ONNX model, a synthetic flight's MP4, the CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runtime_core_helpers import make_flight_case
from skyloc.cli import main as skyloc


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    c = make_flight_case(tmp_path_factory.mktemp("health"), seconds=3.0, fps=2.0, seed=7)
    with open(c["truth"], newline="") as f:
        rows = list(csv.DictReader(f))
    c["first"] = rows[0]
    shifted = c["dir"] / "shifted.csv"  # the same log, its clock 500 s off the frames'
    with open(shifted, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "time_s": f"{float(r['time_s']) + 500.0:.3f}"})
    c["shifted"] = shifted
    return c


def _argv(c: dict, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(c["model"]), "--tiles", str(c["tiles"]), "--source", str(c["video"]),
            "--camera", str(c["camera"]), "--blank-cos", "0.99", "--out", str(out), "--overwrite", *extra]


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_telemetry_that_misses_the_frames_is_said_and_each_frame_records_its_fallback(case, tmp_path, capsys):
    out, stats_path = tmp_path / "f.jsonl", tmp_path / "s.json"
    rc = skyloc(_argv(case, out, "--telemetry", str(case["shifted"]), "--altitude", "120", "--no-register",
                      "--max-frames", "3", "--stats-json", str(stats_path)))
    err = capsys.readouterr().err
    assert rc == 0
    # said before the first frame (the video's length is known), with both time ranges
    assert "covers time_s 500.0" in err and "frames span time_s 0.0" in err
    recs = _lines(out)
    assert len(recs) == 3 and all(r["pose_source"] == "altitude_m=flags" for r in recs)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_without_telemetry"] == 3 and "3 frames outside its time range" in err

    # the control: the same log on the right clock feeds every frame
    out2 = tmp_path / "g.jsonl"
    assert skyloc(_argv(case, out2, "--telemetry", str(case["truth"]), "--no-register", "--max-frames", "2")) == 0
    assert all("altitude_m=telemetry" in r["pose_source"] for r in _lines(out2))
    assert "covers time_s" not in capsys.readouterr().err


def test_register_deadline_bounds_the_candidates_and_never_vouches_for_an_unchecked_place(case, tmp_path):
    f = case["first"]
    out = tmp_path / "f.jsonl"
    base = ("--telemetry", str(case["truth"]), "--no-heading", "--imagery", str(case["map"]),
            "--start", f"{f['lat']},{f['lon']},150", "--scan-m", "0", "--max-frames", "2")
    assert skyloc(_argv(case, out, *base, "--register-deadline-s", "0.000001")) == 0
    for r in _lines(out):
        reg = r["registration"]
        assert reg["tried"] == 1 and reg["deadline_left"] >= 1
        if reg["candidate"] == "retrieval":  # one retrieved place alone: its look-alikes were never looked at
            assert not r["verified"] and reg["reason"].startswith("deadline") and not r["send_3d"]
    # without the deadline the same frames register every candidate place
    out2 = tmp_path / "g.jsonl"
    assert skyloc(_argv(case, out2, *base, "--register-deadline-s", "0")) == 0
    assert all(r["registration"]["tried"] > 1 and "deadline_left" not in r["registration"] for r in _lines(out2))


def test_a_video_that_cannot_be_decoded_exits_4_with_the_reason(case, tmp_path, capsys):
    import cv2
    import numpy as np

    good = tmp_path / "good.avi"
    w = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for k in range(20):
        w.write(np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    w.release()
    data = bytearray(good.read_bytes())
    at = data.find(b"\xff\xd8\xff")  # every frame's JPEG header zeroed; the AVI container intact
    while at >= 0:
        data[at:at + 300] = bytes(300)
        at = data.find(b"\xff\xd8\xff", at + 300)
    bad = tmp_path / "damaged.avi"
    bad.write_bytes(bytes(data))
    cap = cv2.VideoCapture(str(bad))  # OpenCV alone, the reference: it opens, nothing decodes
    assert cap.isOpened() and not any(cap.read()[0] for _ in range(30))
    cap.release()
    stats_path = tmp_path / "s.json"
    rc = skyloc(["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]), "--source", str(bad),
                 "--out", str(tmp_path / "f.jsonl"), "--stats-json", str(stats_path)])
    err = capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert stats["frames"] == 0, "the damaged file must give no frame for this case to mean anything"
    assert rc == 4 and stats["source_failed"] and "cannot be decoded" in err and "damaged.avi" in err


def test_a_mavlink_pose_that_never_becomes_valid_is_said(case, tmp_path, caplog):
    """RunHealth on its own clock: a MAVLink pose source that never gave a value, frames going on."""
    from skyloc.runtime.run.health import RunHealth
    from skyloc.runtime.run.stats import RunStats
    from skyloc.runtime.pose.frame_pose import FramePose

    now = [0.0]

    class Poses:  # the shape run/inputs.Poses has: a MAVLink listener attached, no telemetry
        mavlink = object()
        telemetry = None

    stats = RunStats()
    h = RunHealth(Poses(), object(), stats, mavlink_url="udpin:0.0.0.0:14550", mavlink_pose_wait_s=5.0,
                  clock=lambda: now[0])
    pose = FramePose(time_s=0.0, source="")
    with caplog.at_level("WARNING"):
        for i in range(10):
            now[0] = i * 1.0
            h.frame(i, i * 1.0, pose, None, 0.01)
    said = [r.getMessage() for r in caplog.records if "no valid pose from MAVLink" in r.getMessage()]
    assert len(said) == 1 and "udpin:0.0.0.0:14550" in said[0]
    # a pose that does arrive in time silences it
    caplog.clear()
    h2 = RunHealth(Poses(), object(), RunStats(), mavlink_url="udpin:0.0.0.0:14550", clock=lambda: now[0])
    with caplog.at_level("WARNING"):
        for i in range(10):
            now[0] = 100.0 + i
            h2.frame(i, 0.0, FramePose(time_s=0.0, source="altitude_m=mavlink", altitude_m=100.0), None, 0.01)
    assert not [r for r in caplog.records if "no valid pose" in r.getMessage()]
