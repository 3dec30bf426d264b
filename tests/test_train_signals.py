"""`skyloc train` on a termination signal (a real subprocess, a real signal): it stops at a safe
point, exits 128 + the signal number with a message saying what last.pt holds, leaves no scratch
file, and `--resume` then ends exactly where an uninterrupted run does. Tiny preset, CPU."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from skyloc.training.checkpoint import load_checkpoint, load_model
from test_train import (
    REPO,
    RUN_ARGS,
    _env,
    _metrics,
    _same_weights,
    _skyloc_train,
    data,  # noqa: F401  (fixture: the tiny University-1652 dataset)
    reference,  # noqa: F401  (fixture: the uninterrupted 2-epoch run)
)


def _signal_when(data: Path, run: Path, tmp: Path, sig: int, ready: str) -> tuple[subprocess.Popen, str]:
    """Start a training run, send `sig` once `run / ready` exists, wait for the exit."""
    with open(tmp / "sig.out", "w") as out, open(tmp / "sig.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "skyloc", "train", "--data", str(data), "--out", str(run),
                                 *RUN_ARGS], stdout=out, stderr=err, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 300
        while not (run / ready).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before the signal: {(tmp / 'sig.err').read_text()[-2000:]}"
        proc.send_signal(sig)
        proc.wait(120)
    return proc, (tmp / "sig.err").read_text()


def _no_scratch(run: Path) -> None:
    left = [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert not left, f"scratch files left behind: {left}"


def test_sigterm_mid_epoch_keeps_last_epoch_and_resume_matches(data: Path, reference: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc, err = _signal_when(data, run, tmp_path, signal.SIGTERM, "last.pt")  # epoch 1 saved, epoch 2 running
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err, err[-3000:]
    ckpt = load_checkpoint(run / "last.pt")  # whole: loads (checksum, weights_only)
    assert ckpt["epoch"] == 1 and "holds epoch 1" in err, err[-3000:]
    assert [r["epoch"] for r in _metrics(run)] == [1]  # the cut epoch is neither logged nor saved
    _no_scratch(run)

    res = _skyloc_train(["--resume", str(run), "--no-progress"], tmp_path, "resumed")
    assert res.returncode == 0, res.stderr_text[-3000:]
    ckpt, ref = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in _metrics(run)] == [1, 2]
    assert _same_weights(ckpt["model"], ref["model"]), "stopped + resumed run differs from the uninterrupted one"
    assert [r["loss"] for r in _metrics(run)] == [r["loss"] for r in _metrics(reference)]
    load_model(run / "best.pt")
    _no_scratch(run)


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGHUP"])
def test_other_signals_before_the_first_epoch_save_nothing(data: Path, tmp_path: Path, sig: str):
    num = getattr(signal, sig)
    run = tmp_path / "run"
    proc, err = _signal_when(data, run, tmp_path, num, "command.txt")  # handlers are up, epoch 1 not done
    assert proc.returncode == 128 + num, err[-3000:]
    assert f"stopped by {sig}" in err and "nothing saved" in err and "Traceback" not in err, err[-3000:]
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    _no_scratch(run)
