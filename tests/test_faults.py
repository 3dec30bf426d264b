"""Fault injection (issue 13) for artifacts, maps, sidecars, faiss indexes, scratch files and `skyloc
run`: one case per fault, run through the real `skyloc` CLI (in-process, or a subprocess where a signal or
a write limit is needed) on its own copy of a tiny world. Each asserts the outcome itself: exit
code 2 with a message naming the problem, or the fault survived and accounted for; and in every
case the files that must survive (previous artifact, inputs) are byte-identical.

The cases are the ones `skyloc bench faults` counts (benchmarks/fault_cases.py, `suite=True`):
artifacts, maps, sidecars, faiss, scratch files, export / train / calibrate, and the run side (black / featureless frames,
NaN / Inf headings from flags, telemetry CSV and a real pymavlink autopilot over UDP, sources that
change size or lose frames, a serial MAVLink pty, disk full, /dev/full, broken pipe, SIGHUP).
Export / train / calibrate cases (about 40 s together) need torch and skip without it.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skyloc.benchmarks.fault_cases import CASES, build_world
from skyloc.benchmarks.faults import World, available, classify, execute
from skyloc.core.atomic import atomic_path, clean_stale_scratch, scratch_path, write_json_atomic
from skyloc.core.errors import SkylocError

SUITE = [c for c in CASES if c.suite]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pytest.importorskip("onnx")
    return build_world(tmp_path_factory.mktemp("faults") / "base")


@pytest.mark.parametrize("case", SUITE, ids=[c.name for c in SUITE])
def test_fault(case, world: World, tmp_path: Path) -> None:
    if not available(case.needs):
        pytest.skip(f"needs {case.needs}")
    res, lost = execute(case, world, tmp_path, inprocess=True)
    if case.known_bug:  # an open bug elsewhere: expect exactly its verdict; fail loudly once it is fixed
        verdict, why = classify(case, World(tmp_path / "world"), res, lost)
        assert verdict not in ("clear error", "survived and counted"), \
            f"fixed ({verdict}: {why}): remove known_bug from the case in benchmarks/fault_cases.py"
        assert verdict == case.bug_verdict, f"worse than the known bug: {verdict}: {why}\n{res.err[-2000:]}"
        pytest.xfail(f"open bug: {case.known_bug}")
    assert not lost, f"data loss: {lost}\n{res.err[-2000:]}"
    assert "Traceback (most recent call last)" not in res.err, res.err[-3000:]
    if case.expect == "error":
        assert res.rc == 2, f"exit {res.rc}, expected a clear error (2)\n{res.err[-2000:]}"
        assert re.search(case.message, res.err, re.I), f"the error does not name the problem ({case.message}):\n{res.err}"
        assert "error" in res.err.lower()
    else:
        assert case.judge is not None
        verdict, why = case.judge(World(tmp_path / "world"), res)
        assert verdict == "survived and counted", why


def test_matrix_covers_every_fault_class() -> None:
    groups = {c.group for c in SUITE}
    assert {"tiles", "maps", "sidecar", "faiss", "scratch", "run"} <= groups
    assert len({c.name for c in CASES}) == len(CASES)
    # the run-side classes issue 13 lists, each with a case the suite runs
    names = " | ".join(c.name for c in SUITE)
    for fault in ("black frame", "featureless frame", "--yaw nan", "NaN yaw in the telemetry CSV",
                  "ATTITUDE yaw NaN", "thumbnail first", "another resolution", "undecodable frames in the middle",
                  "missing file in the image folder", "ReconnectPolicy", "serial MAVLink /dev/pts",
                  "--out equal to the tile set", "--out equal to the model", "existing --out without --overwrite",
                  "disk full during the run", "broken pipe", "SIGHUP", "--max-speed nan", "--fps 0", "--fps nan",
                  "--mavlink-sysid 999", "binary telemetry", "--tile-m nan",
                  # flight-software integrity: stalls, silent wrongs, signals, exit codes, containers, synth
                  "telemetry 500 s off", "MAVLink pose never valid", "--no-register fixes honest",
                  "every frame is undecodable", "SIGUSR1", "absent /dev/video7", "disk full at startup",
                  "--udp to a refused port", "binary map.csv", "200000 x 200000", "sidecar input size forged",
                  "synth flight --fov -5", "synth world --lat inf", "synth dataset --distractors -5",
                  "synth flight --out naming the map CSV", "weight byte flipped", "gives up (finite default budget)"):
        assert fault in names, fault
    everything = " | ".join(c.name for c in CASES)
    for fault in ("GPS_INPUT carries the registered yaw", "SIGQUIT", "SIGUSR2", "silent RTSP", "calibrate SIGTERM",
                  "--mavlink udpout: to a refused port", "--nmea udp: to a refused port"):
        assert fault in everything, fault
    # the numeric-flag sweep: every numeric flag of run, tiles, synth, calibrate (and train) x NaN / inf / -inf
    # (/ a negative number): read from the parsers, so a new flag joins by itself
    sweep = [c for c in CASES if c.group == "sweep"]
    assert len(sweep) >= 300 and len(CASES) >= 400
    for flag in ("run --max-speed", "run --register-deadline-s", "synth flight --speed", "synth flight --photometric",
                 "synth dataset --photometric", "synth world --lat", "tiles --tile-m", "calibrate --num-images"):
        assert any(c.name.startswith(f"sweep: {flag} ") for c in sweep), flag


def test_every_numeric_flag_is_refused_out_of_range(world: World, tmp_path: Path) -> None:
    """A sample of the sweep, in-process (the whole sweep runs in `skyloc bench faults`, ~10 s)."""
    sweep = [c for c in CASES if c.group == "sweep" and available(c.needs)]
    for case in sweep[::7]:
        res, lost = execute(case, world, tmp_path / str(sweep.index(case)), inprocess=True)
        verdict, why = classify(case, World(tmp_path / str(sweep.index(case)) / "world"), res, lost)
        assert verdict == "clear error", f"{case.name}: {verdict}: {why}"


# --- the atomic-write helper itself ----------------------------------------------------------------


def test_atomic_write_keeps_previous_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    write_json_atomic(dest, {"v": 1})
    before = dest.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    with pytest.raises(SkylocError, match="non-finite"):
        write_json_atomic(dest, {"v": math.inf})
    assert dest.read_bytes() == before
    assert json.loads(before) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no scratch left behind


def test_clean_stale_scratch_only_removes_dead_writers(tmp_path: Path) -> None:
    dest = tmp_path / "tiles.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = dest.with_name(f".{dest.name}.tmp{dead_pid}-0badc0de.npy")
    old_style = dest.with_name(f".{dest.name}.tmp{dead_pid}")  # what writers before atomic.py left
    live = scratch_path(dest, ".npy")  # this process: a write in progress
    other = tmp_path / ".hidden-user-file.tmp"  # not ours: never touched
    for p in (stale, old_style, live, other):
        p.write_bytes(b"x")
    stale_dir = tmp_path / f".imagery.tmp{dead_pid}-0badc0de"  # a folder written before its rename
    stale_dir.mkdir()
    (stale_dir / "tile_0000_0000.jpg").write_bytes(b"x")
    removed = clean_stale_scratch(tmp_path)
    assert sorted(removed) == sorted([stale, old_style, stale_dir])
    assert live.exists() and other.exists() and not stale.exists()
    assert live.name.startswith(".tiles.npz.tmp") and f"tmp{os.getpid()}-" in live.name and live.suffix == ".npy"
