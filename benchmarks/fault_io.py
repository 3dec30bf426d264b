"""Run-side faults of benchmarks/fault_cases.py, links, outputs and signals: a pymavlink autopilot
over UDP, a serial pty, ReconnectPolicy, write limits, /dev/full, a broken pipe, SIGHUP.

Every judge reads what the run really wrote (records, stats JSON, stderr, the bytes a link carried)
and answers (verdict, why); "survived and counted" only when the fault was handled and accounted for.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from skyloc.benchmarks.faults import Outcome, World, run_cli
from skyloc.benchmarks.fault_checks import counted
from skyloc.benchmarks.fault_run import ENV, _not_ok, last
from skyloc.benchmarks.fault_world import records, spawn


# --- MAVLink --------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mavlink_attitude(yaw: float, *extra: str, all_nan: bool = False):
    """A pymavlink autopilot on udpin:127.0.0.1:PORT: once skyloc's heartbeat arrives it sends
    ATTITUDE (roll = pitch = 0, this yaw; `all_nan`: every field NaN, plus garbage bytes) every
    20 ms; skyloc runs with --mavlink udpout:...:PORT and `extra` flags."""
    def runner(w: World, inprocess: bool) -> Outcome:
        from skyloc.runtime.outputs.mavlink import mavutil

        port = _free_port()
        conn = mavutil().mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
        seen = {"heartbeat": 0, "attitude": 0}
        stop = threading.Event()

        def autopilot() -> None:
            last = 0.0
            while not stop.is_set():
                msg = conn.recv_match(blocking=True, timeout=0.01)
                if msg is not None and msg.get_type() == "HEARTBEAT":
                    seen["heartbeat"] += 1
                if seen["heartbeat"] and time.monotonic() - last > 0.02:
                    z = math.nan if all_nan else 0.0
                    conn.mav.attitude_send(int(time.monotonic() * 1000) & 0xFFFFFFFF, z, z, yaw, z, z, z)
                    if all_nan:
                        conn.write(os.urandom(64))  # line noise between messages
                    seen["attitude"] += 1
                    last = time.monotonic()

        t = threading.Thread(target=autopilot, daemon=True)
        t.start()
        try:
            # frames repeated so the run lasts while ATTITUDE flows
            for k in range(6, 12):
                shutil.copy(w.frames / f"f{k - 6:03d}.png", w.frames / f"f{k:03d}.png")
            res = run_cli(w.run_argv("--mavlink", f"udpout:127.0.0.1:{port}", "--stats-json",
                                     str(w.root / "stats.json"), *extra), inprocess, w.root)
        finally:
            stop.set()
            t.join(timeout=2)
            conn.close()
        res.note = f"autopilot heard {seen['heartbeat']} heartbeats, sent {seen['attitude']} ATTITUDE (yaw {yaw})"
        return res
    return runner


def judge_mavlink_nan(w: World, res: Outcome) -> tuple[str, str]:
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    m = re.search(r"sent (\d+) ATTITUDE", res.note)
    if not m or int(m.group(1)) == 0:
        return "wrong", "no ATTITUDE reached the run: nothing tested; " + res.note
    used = [r.get("frame") for r in recs if r.get("heading_source") == "pose" or r.get("send_3d")]
    if used:
        return "wrong", f"frames {used} took the NaN/Inf MAVLink yaw as their heading (or were sent as 3D)"
    safe = res.note + f"; {len(recs)} records, heading sources {sorted({str(r.get('heading_source')) for r in recs})}"
    return counted(w, res, r"attitude|mavlink", safe)


def judge_mavlink_control(w: World, res: Outcome) -> tuple[str, str]:
    """The same link with a finite yaw: the heading must come from it (proves the NaN case tests
    the MAVLink pose path, not a path that never reads ATTITUDE)."""
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    pose = [r for r in recs if r.get("heading_source") == "pose"]
    if not pose:
        return "wrong", "a finite MAVLink ATTITUDE yaw was never used: " + res.note
    return "survived and counted", f"{len(pose)} of {len(recs)} records took the MAVLink heading; " + res.note


def serial_pty(w: World, inprocess: bool) -> Outcome:
    """--mavlink /dev/pts/N:921600 (a pseudo-terminal as the autopilot's serial port); the bytes
    that come out of the other end are decoded by pymavlink."""
    import pty
    import tty

    from skyloc.runtime.outputs.mavlink import mavutil

    master, slave = pty.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    got: list[str] = []
    stop = threading.Event()
    mav = mavutil().mavlink.MAVLink(None)
    mav.robust_parsing = True

    def reader() -> None:
        import select

        while not stop.is_set():
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                for msg in mav.parse_buffer(data) or []:
                    got.append(f"{msg.get_type()}:{msg.get_srcSystem()}:{msg.get_srcComponent()}"
                               + (f":fix{msg.fix_type}" if msg.get_type() == "GPS_INPUT" else ""))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        res = run_cli(w.run_argv("--mavlink", f"{name}:921600", "--rejected-fix-type", "0"), inprocess, w.root)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(timeout=2)
        os.close(master)
        os.close(slave)
    kinds = sorted(set(got))
    res.note = f"{name}: decoded {len(got)} messages: {kinds}"
    return res


def judge_serial(w: World, res: Outcome) -> tuple[str, str]:
    if (bad := _not_ok(res)) is not None:
        return bad
    hb = "HEARTBEAT:1:191" in res.note
    gps = re.search(r"GPS_INPUT:1:191:fix0", res.note)
    if hb and gps and "fix3" not in res.note:
        return "survived and counted", res.note[:200]
    return "wrong", "expected HEARTBEAT and GPS_INPUT fix_type 0 from 1/191 on the serial line: " + res.note[:200]


def reconnect_policy(w: World, inprocess: bool) -> Outcome:
    from skyloc.runtime.sources.base import ReconnectPolicy

    p = ReconnectPolicy()
    try:
        got = {k: p.delay(k) for k in (1, 2, 1024, 1025, 10 ** 6, 10 ** 18)}
    except Exception as exc:  # noqa: BLE001 - the verdict
        return Outcome(1, f"Traceback (most recent call last):\n{type(exc).__name__}: {exc}")
    return Outcome(0, "", note=json.dumps(got))


def judge_reconnect(w: World, res: Outcome) -> tuple[str, str]:
    if res.rc != 0:
        return "crash", res.err[-160:]
    got = {int(k): v for k, v in json.loads(res.note).items()}
    ok = got[1] == 0.5 and got[2] == 1.0 and all(got[k] == 10.0 for k in (1024, 1025, 10 ** 6, 10 ** 18))
    return ("survived and counted" if ok else "wrong"), f"delays (s) by attempt: {got}"


# --- outputs: disk full, /dev/full, broken pipe; signals --------------------------------------------


def _more_frames(w: World, n: int) -> None:
    for k in range(6, n):
        shutil.copy(w.frames / f"f{k % 6:03d}.png", w.frames / f"f{k:03d}.png")


def run_disk_full(w: World, inprocess: bool) -> Outcome:
    """The fixes file hits a 6000-byte write limit (RLIMIT_FSIZE, as a full disk) after ~8 of 12 records.

    The limit is per file: it must let the resolved config (~3.4 KB) and --stats-json be written
    whole, so that only the fixes file runs out of room mid-run."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    _more_frames(w, 12)
    t0 = time.perf_counter()
    argv = w.run_argv("--stats-json", str(w.root / "stats.json"), out=w.root / "run.jsonl")
    p = subprocess.run([sys.executable, "-m", "skyloc", *argv], cwd=w.root, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit, env=dict(ENV, PYTHONDONTWRITEBYTECODE="1"))
    return Outcome(p.returncode, p.stderr, p.stdout, time.perf_counter() - t0)


def run_dev_full(w: World, inprocess: bool) -> Outcome:
    _more_frames(w, 12)
    return run_cli(w.run_argv("--stats-json", str(w.root / "stats.json"), out=Path("/dev/full")), inprocess, w.root)


def run_broken_pipe(w: World, inprocess: bool) -> Outcome:
    """`skyloc run --out - | (reader that exits at once)`."""
    _more_frames(w, 12)
    t0 = time.perf_counter()
    argv = ["run", "--model", str(w.model), "--tiles", str(w.tiles), "--source", str(w.frames), "--out", "-",
            "--stats-json", str(w.root / "stats.json")]
    proc = subprocess.Popen([sys.executable, "-m", "skyloc", *argv], cwd=w.root, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first record
    err = proc.stderr.read()
    proc.wait(timeout=300)
    return Outcome(proc.returncode, err, "", time.perf_counter() - t0)


def judge_output_failure(expect_rc: int = 3, fixes: bool = True):
    """Exit code 3 (documented: an output failed), failures counted in the stats and the summary,
    and the fixes file (when a file) holds only complete records."""
    def judge(w: World, res: Outcome) -> tuple[str, str]:
        if "Traceback (most recent call last)" in res.err:
            return "crash", last(res.err)
        if res.rc != expect_rc:
            return ("wrong" if res.rc == 0 else "crash"), f"exit {res.rc} (documented: {expect_rc}): {last(res.err)}"
        if "skyloc run: frames" not in res.err:
            return "wrong", "no summary on stderr"
        st = w.root / "stats.json"
        stats = json.loads(st.read_text()) if st.is_file() else {}
        if not stats.get("output_errors"):
            return "wrong", f"output errors not counted in --stats-json: {stats.get('output_errors')}"
        note = f"exit {res.rc}; output_errors {stats['output_errors']} of {stats.get('frames')} frames"
        if fixes:
            out = w.root / "run.jsonl"
            text = out.read_bytes().decode() if out.is_file() else ""
            recs = records(out)
            if isinstance(recs, str) or (text and not text.endswith("\n")):
                return "data loss", f"partial or invalid record in the fixes file: {recs if isinstance(recs, str) else text[-60:]!r}"
            note += f"; {len(recs)} complete records kept"
        return "survived and counted", note
    return judge


def run_signal(sig: int = signal.SIGHUP):
    """A run over 60 frames sent `sig` once its first record is out."""
    def runner(w: World, inprocess: bool) -> Outcome:
        _more_frames(w, 60)
        t0 = time.perf_counter()
        proc = spawn(w.run_argv("--stats-json", str(w.root / "stats.json")), w.root)
        out = w.root / "run.jsonl"
        deadline, sent = time.monotonic() + 120, False
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and out.stat().st_size:
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.01)
        o, e = proc.communicate(timeout=120)
        return Outcome(proc.returncode, e, o, time.perf_counter() - t0, f"{signal.Signals(sig).name} sent: {sent}")
    return runner


def judge_signal_stop(sig: int = signal.SIGHUP):
    name = signal.Signals(sig).name

    def judge(w: World, res: Outcome) -> tuple[str, str]:
        if "sent: False" in res.note:
            return "wrong", f"the run ended before {name} could be sent: nothing tested"
        if res.rc != 0:
            return ("crash" if res.rc not in (2, 3) else "wrong"), f"exit {res.rc}: {last(res.err)}"
        st = w.root / "stats.json"
        stats = json.loads(st.read_text()) if st.is_file() else {}
        recs = records(w.root / "run.jsonl")
        if isinstance(recs, str):
            return "data loss", recs
        if stats.get("stopped_by") != name or f"stopped by {name}" not in res.err:
            return "wrong", f"not a clean stop: stopped_by {stats.get('stopped_by')}; {last(res.err)}"
        return "survived and counted", f"stopped by {name} after {len(recs)} of 60 frames; summary and stats written"
    return judge


run_sighup, judge_sighup = run_signal(signal.SIGHUP), judge_signal_stop(signal.SIGHUP)


def judge_pose_never_valid(w: World, res: Outcome) -> tuple[str, str]:
    """A MAVLink pose that never becomes valid (all NaN, garbage between): frames go on without it,
    and the run says so (not silence)."""
    if (bad := _not_ok(res)) is not None:
        return bad
    recs = records(w.root / "run.jsonl")
    if isinstance(recs, str):
        return "wrong", recs
    used = [r.get("frame") for r in recs if "mavlink" in str(r.get("pose_source"))]
    if used:
        return "wrong", f"frames {used} took a pose from the all-NaN MAVLink stream"
    if "no valid pose from MAVLink" in res.err:
        return "survived and counted", f"said; {len(recs)} records without a MAVLink pose; " + res.note
    return "survived, not counted", "no word that MAVLink never gave a valid pose; " + res.note
