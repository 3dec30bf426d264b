"""`skyloc bench faults`: the fault-injection matrix (goal: zero wrong, zero crash, zero data loss), each
case run against the real CLI and classified by what actually happened.

Verdicts:
- clear error: exit code 2 and a message that names the problem (the case's pattern);
- survived and counted: the command went on (or stopped cleanly on a signal) and the fault was
  handled: reported, skipped and counted, cleaned up, rebuilt (the case's own check says so);
- survived, not counted: the outcome was safe (no wrong fix, nothing lost) but the fault was dropped
  silently: nothing in the log, the summary or --stats-json says it happened;
- wrong: it went on as if nothing were wrong (a NaN flag accepted, a black frame's fix accepted,
  an error that does not name the problem);
- crash: a traceback or an unexpected exit code;
- data loss: a file that must survive (the previous artifact, an input) changed or vanished.

Every case works on its own copy of a small world (tiny ONNX model, synthetic map, tile set,
frames) so one case's damage cannot leak into another. `tests/test_faults.py` runs the cases that
concern artifacts, maps, sidecars, faiss and scratch files in-process and asserts their outcome;
this benchmark runs every case in a subprocess (the way a user meets it) and counts verdicts.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

VERDICTS = ("clear error", "survived and counted", "survived, not counted", "wrong", "crash", "data loss")


@dataclass
class Outcome:
    rc: int
    err: str = ""
    out: str = ""
    seconds: float = 0.0
    note: str = ""  # what a custom runner observed


@dataclass
class Case:
    name: str
    group: str  # tiles, maps, sidecar, faiss, scratch, export, calibrate, train, run
    expect: str  # "error" | "survived"
    argv: Callable[["World"], list[str]] | None = None  # the CLI command (without `skyloc`)
    message: str = ""  # regex an error must match (case-insensitive): it names the problem
    protect: tuple[str, ...] = ()  # World attributes of files that must stay byte-identical
    prepare: Callable[["World"], None] | None = None  # injects the fault into the world copy
    judge: Callable[["World", Outcome], tuple[str, str]] | None = None  # survived cases: (verdict, why)
    runner: Callable[["World", bool], Outcome] | None = None  # custom execution (signals, library calls)
    needs: str = ""  # "torch" | "rasterio": skipped (not counted) when missing
    suite: bool = True  # also in tests/test_faults.py (artifacts / maps / sidecars / faiss / scratch / run)
    known_bug: str = ""  # an open bug this case exposes (in a file the matrix does not own) ...
    bug_verdict: str = ""  # ... and the verdict it gives; tests/test_faults.py xfails on exactly that verdict


@dataclass
class World:
    """One case's copy of the small world; attributes are paths."""

    root: Path
    model: Path = field(init=False)
    sidecar: Path = field(init=False)
    map_dir: Path = field(init=False)
    map_png: Path = field(init=False)
    map_csv: Path = field(init=False)
    tiles: Path = field(init=False)
    frames: Path = field(init=False)
    fixes: Path = field(init=False)
    calib: Path = field(init=False)

    def __post_init__(self) -> None:
        r = self.root
        self.model, self.sidecar = r / "model.onnx", r / "model.json"
        self.map_dir = r / "map"
        self.map_png, self.map_csv = self.map_dir / "map.png", self.map_dir / "map.csv"
        self.tiles, self.frames, self.fixes, self.calib = r / "tiles.npz", r / "frames", r / "fixes.jsonl", r / "calib"

    def copy_to(self, dest: Path) -> "World":
        shutil.copytree(self.root, dest, symlinks=True)
        return World(dest)

    def tiles_argv(self, *extra: str, out: Path | str | None = None) -> list[str]:
        return ["tiles", "--model", str(self.model), "--map", str(self.map_png), "--out", str(out or self.root / "new.npz"),
                "--tile-m", "100", "--stride-m", "50", "--no-progress", "--providers", "cpu", *extra]

    def run_argv(self, *extra: str, source: Path | None = None, out: Path | None = None) -> list[str]:
        return ["run", "--model", str(self.model), "--tiles", str(self.tiles), "--source", str(source or self.frames),
                "--out", str(out or self.root / "run.jsonl"), "--overwrite", *extra]


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def run_cli(argv: Sequence[str], inprocess: bool, cwd: Path, timeout: float = 300) -> Outcome:
    """`skyloc ARGV`: in this process (`skyloc.cli.main`, stderr and log records captured) or as
    a subprocess (`python -m skyloc`)."""
    t0 = time.perf_counter()
    if not inprocess:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
        try:
            p = subprocess.run([sys.executable, "-m", "skyloc", *argv], cwd=cwd, env=env, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(-1, f"timed out after {timeout:.0f} s", seconds=time.perf_counter() - t0)
        return Outcome(p.returncode, p.stderr, p.stdout, time.perf_counter() - t0)
    from skyloc.cli import main

    err, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = int(main(list(argv)) or 0)
            except SystemExit as exc:  # argparse errors
                rc = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - a traceback is the verdict "crash"
                traceback.print_exc(file=err)
                rc = 1
    finally:
        root.removeHandler(handler)
    return Outcome(rc, err.getvalue(), out.getvalue(), time.perf_counter() - t0)


def execute(case: Case, base: World, work: Path, inprocess: bool) -> tuple[Outcome, list[str]]:
    """Run one case on a fresh copy of `base`; returns the outcome and the protected files that
    changed (data loss)."""
    w = base.copy_to(work / "world")
    if case.prepare is not None:
        case.prepare(w)
    before = {k: _digest(getattr(w, k)) for k in case.protect}
    if case.runner is not None:
        res = case.runner(w, inprocess)
    else:
        assert case.argv is not None
        res = run_cli(case.argv(w), inprocess, w.root)
    lost = [f"{k} ({getattr(w, k).name})" for k, d in before.items() if _digest(getattr(w, k)) != d]
    return res, lost


def classify(case: Case, w: World | None, res: Outcome, lost: list[str]) -> tuple[str, str]:
    """(verdict, why) from what happened."""
    if lost:
        return "data loss", "changed: " + ", ".join(lost)
    if "Traceback (most recent call last)" in res.err:
        last = [ln for ln in res.err.strip().splitlines() if ln.strip()][-1:] or [""]
        return "crash", last[0][:160]
    if case.judge is not None and case.expect == "survived":
        return case.judge(w, res)
    if res.rc == 2:
        msg = _error_line(res.err)
        if case.message and not re.search(case.message, res.err, re.I):
            return "wrong", f"an error, but not naming the problem: {msg[:160]}"
        return "clear error", msg[:160]
    if res.rc == 0:
        return "wrong", "exit 0: the fault was accepted silently"
    return "crash", f"exit code {res.rc}: {_error_line(res.err)[:160]}"


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    return (lines[-1] if lines else (err.strip().splitlines() or [""])[-1]).strip()


def available(needs: str) -> bool:
    if not needs:
        return True
    try:
        __import__(needs)
    except ImportError:
        return False
    return True


