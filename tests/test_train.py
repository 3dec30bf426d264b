"""`skyloc train`: loss goes down, SIGKILL + --resume equals an uninterrupted run, a crash during
a checkpoint write never replaces a good one, torchrun (2 x gloo on CPU) writes one checkpoint,
local ImageNet weights load (and a corrupt file fails clearly), best.pt never depends on the test
split, and bad numbers / a diverged loss stop training cleanly.

The data is a tiny University-1652 tree of 64 px images: each location is its own random 4x4
colour-block pattern; its drone images are shifted, noisy copies of it.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skyloc import cli
from skyloc.core.errors import SkylocError
from skyloc.training.checkpoint import load_checkpoint, load_model
from skyloc.training.config import PRESETS, preset
from skyloc.training.seeding import capture_rng, restore_rng

REPO = Path(__file__).resolve().parents[1]
N_LOC, N_DRONE, SIZE = 6, 3, 64
# tiny preset, 6 locations x 4 rows = 24 paired rows -> 3 batches of 8 per epoch
RUN_ARGS = ["--preset", "tiny", "--epochs", "2", "--drones-per-location", "4", "--seed", "0", "--no-progress",
            "--device", "cpu"]


def _pattern(rng: np.random.Generator) -> np.ndarray:
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((SIZE // 4, SIZE // 4, 1), dtype=np.uint8))


def _variant(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.roll(base, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)).astype(np.int16)
    return np.clip(img + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_dataset(root: Path, with_test: bool = False) -> Path:
    rng = np.random.default_rng(1652)
    for i in range(N_LOC):
        loc = f"{i:04d}"
        base = _pattern(rng)
        _save(base, root / "train" / "satellite" / loc / f"{loc}.png")
        for j in range(N_DRONE):
            _save(_variant(base, rng), root / "train" / "drone" / loc / f"image-{j + 1:02d}.png")
        if with_test:  # test locations reuse the patterns: evaluation then measures something
            _save(base, root / "test" / "gallery_satellite" / loc / f"{loc}.png")
            _save(base, root / "test" / "query_satellite" / loc / f"{loc}.png")
            for j in range(2):
                img = _variant(base, rng)
                _save(img, root / "test" / "query_drone" / loc / f"image-{j + 1:02d}.png")
                _save(img, root / "test" / "gallery_drone" / loc / f"image-{j + 1:02d}.png")
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # One intra-op thread per child: on 2 cores shared with other work, OpenMP threads spinning
    # at barriers make these tiny runs several times slower. The same setting for the reference
    # and the resumed run keeps their float reductions identical.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _skyloc_train(args: list[str], tmp: Path, name: str, **kw) -> subprocess.CompletedProcess:
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "skyloc", "train", *args], stdout=out, stderr=err,
                              env=_env(), cwd=REPO, timeout=600, **kw)
    proc.stdout_text = (tmp / f"{name}.out").read_text()  # type: ignore[attr-defined]
    proc.stderr_text = (tmp / f"{name}.err").read_text()  # type: ignore[attr-defined]
    return proc


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Checkpoints are only ever replaced by rename, so a hard link is a safe, free copy."""
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("u1652") / "data")


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch tiny run through the CLI (a fresh process, as the resumed run)."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = _skyloc_train(["--data", str(data), "--out", str(tmp / "run"), *RUN_ARGS], tmp, "ref")
    assert proc.returncode == 0, proc.stderr_text[-3000:]
    return tmp / "run"


def test_tiny_run_lowers_loss_and_logs_everything(reference: Path):
    rows = _metrics(reference)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["batches"] == N_LOC * 4 // 8 for r in rows)  # drop_last: full batches only
    first, second = rows[0]["loss"]["total"], rows[1]["loss"]["total"]
    assert second < first, f"epoch loss did not go down: {first} -> {second}"
    # split learning rates, as logged: backbone = heads x 0.1
    assert rows[0]["lr"]["heads"] == pytest.approx(PRESETS["tiny"][1]["lr"])
    assert rows[0]["lr"]["backbone"] == pytest.approx(0.1 * rows[0]["lr"]["heads"])

    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["model"]["num_classes"] == N_LOC and cfg["model"]["image_size"] == 64
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["drones_per_location"] == 4
    assert "skyloc train" in (reference / "command.txt").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/ce_satellite", "train/ce_drone", "train/kl", "epoch/total",
            "lr/backbone", "lr/heads"} <= tags
    assert len(acc.Scalars("train/total")) == 2 * (N_LOC * 4 // 8)  # one per optimizer step
    assert [e.value for e in acc.Scalars("epoch/total")] == pytest.approx([first, second], rel=1e-5)

    # The checkpoint is plain tensors / builtins: weights_only=True reads it, with the RNG state.
    ckpt = torch.load(reference / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * (N_LOC * 4 // 8) and len(ckpt["rng"]) == 1
    assert {"torch", "numpy", "python", "loader"} <= set(ckpt["rng"][0])
    assert ckpt["model_config"]["num_classes"] == N_LOC and ckpt["classes"] == [f"{i:04d}" for i in range(N_LOC)]
    assert ckpt["best"]["epoch"] == 2  # the last epoch (no model selection by default)
    assert _same_weights(load_checkpoint(reference / "best.pt")["model"], ckpt["model"])
    model, mcfg, _ = load_model(reference / "best.pt")
    assert mcfg.num_classes == N_LOC and model.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 512 * mcfg.num_heads)


def test_rng_state_round_trips_through_weights_only_load():
    gen = torch.Generator().manual_seed(7)
    state = capture_rng(gen)
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(1),
             torch.rand(3, generator=gen))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restore_rng(torch.load(buf, weights_only=True), gen)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(1),
             torch.rand(3, generator=gen))
    assert torch.equal(draws[0], again[0]) and torch.equal(draws[4], again[4])
    assert np.array_equal(draws[1], again[1]) and np.array_equal(draws[3], again[3]) and draws[2] == again[2]


def test_sigkill_then_resume_equals_uninterrupted_run(data: Path, reference: Path, tmp_path: Path):
    run = tmp_path / "run"
    with open(tmp_path / "killed.out", "w") as out, open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "skyloc", "train", "--data", str(data), "--out", str(run),
                                 *RUN_ARGS], stdout=out, stderr=err, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 300
        while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {(tmp_path / 'killed.err').read_text()[-2000:]}"
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert killed_at == 1

    res = _skyloc_train(["--resume", str(run), "--no-progress"], tmp_path, "resumed")
    assert res.returncode == 0, res.stderr_text[-3000:]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in _metrics(run)] == [1, 2]
    ref = load_checkpoint(reference / "last.pt")
    assert _same_weights(ckpt["model"], ref["model"]), "resumed run differs from the uninterrupted one"
    assert ckpt["model_id"] == ref["model_id"]
    assert _same_weights(ckpt["optimizer"]["state"][0], ref["optimizer"]["state"][0])
    assert [r["loss"] for r in _metrics(run)] == [r["loss"] for r in _metrics(reference)]
    assert len((run / "command.txt").read_text().splitlines()) == 2
    load_model(run / "best.pt")  # loads; eval / export need no flags


_CRASH_DURING_SAVE = """
import os, signal, sys
from skyloc.training.checkpoint import load_model, save_checkpoint

class DieWhilePickled:  # SIGKILL ourselves in the middle of torch.save
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

model, cfg, _ = load_model(sys.argv[1])
save_checkpoint(sys.argv[1], model, cfg, None, epoch=99, crash=DieWhilePickled())
"""


def test_crash_while_writing_checkpoint_keeps_last_good(data: Path, reference: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "config.json", "metrics.jsonl"):
        _link_or_copy(reference / name, run / name)
    before = load_checkpoint(run / "last.pt")
    proc = subprocess.run([sys.executable, "-c", _CRASH_DURING_SAVE, str(run / "last.pt")], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = list(run.glob(".last.pt.tmp*"))
    assert len(partial) == 1  # the interrupted write went to a temp file...
    with pytest.raises(Exception):
        torch.load(partial[0], weights_only=True)
    after = load_checkpoint(run / "last.pt")  # ...and last.pt is the previous good checkpoint
    assert after["epoch"] == before["epoch"] == 2 and after["model_id"] == before["model_id"]

    # Resuming a finished run does nothing but clears the debris.
    res = _skyloc_train(["--resume", str(run), "--no-progress"], tmp_path, "resume")
    assert res.returncode == 0, res.stderr_text[-3000:]
    assert "nothing to do" in res.stdout_text
    assert not list(run.glob(".*.tmp*"))
    assert load_checkpoint(run / "last.pt")["model_id"] == before["model_id"]
    assert (run / "best.pt").is_file()


def test_torchrun_two_gloo_processes_write_one_checkpoint(data: Path, tmp_path: Path):
    run, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "skyloc", "train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--epochs", "1",
           "--drones-per-location", "4", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pt")) == ["run/best.pt", "run/last.pt"]
    assert not list(cwd.iterdir()), "a rank wrote into the working directory"
    assert not list(run.glob(".*"))
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer: rank 0
    assert proc.stdout.count("epoch 1/1") == 1
    command = (run / "command.txt").read_text().splitlines()
    assert len(command) == 1 and "world_size=2" in command[0]
    rows = _metrics(run)
    # 24 rows shared by 2 ranks -> 12 each -> 3 batches of 4 per rank (one process would take 6)
    assert len(rows) == 1 and rows[0]["batches"] == 3
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2  # both ranks' RNG states, gathered by rank 0
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    load_model(run / "last.pt")


def _torchvision_to_backbone(key: str) -> str:
    for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
        if key.startswith(old):
            return "backbone." + new + key[len(old):]
    return "backbone." + key


def test_pretrained_file_is_loaded_and_corrupt_file_is_rejected(data: Path, tmp_path: Path, capsys):
    import torchvision

    torch.manual_seed(1234)
    reference_net = torchvision.models.resnet18(weights=None)
    state = reference_net.state_dict()
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, weights)
    run = tmp_path / "run"
    # lr 0: training leaves every parameter as loaded (BN running statistics still move)
    proc = _skyloc_train(["--data", str(data), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                          "--drones-per-location", "1", "--lr", "0", "--pretrained", str(weights), "--no-progress",
                          "--device", "cpu"], tmp_path, "pretrained")
    assert proc.returncode == 0, proc.stderr_text[-3000:]
    trained = load_checkpoint(run / "last.pt")["model"]
    compared = 0
    for key, tensor in state.items():
        if key.startswith("fc.") or key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        assert torch.equal(trained[_torchvision_to_backbone(key)], tensor), key
        compared += 1
    # every parameter of the torchvision net but its fc layer was checked
    assert compared == sum(1 for k, _ in reference_net.named_parameters() if not k.startswith("fc."))
    assert json.loads((run / "config.json").read_text())["model"]["pretrained"] == str(weights.resolve())

    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00not a torch file" * 64)
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(data), "--out", str(tmp_path / "bad_run"), "--preset", "tiny",
                   "--pretrained", str(bad), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "bad_run" / "last.pt").exists()


def _permute_test_labels(data: Path) -> None:
    """Rename the test query folders cyclically: every test query now carries a wrong label."""
    for view in ("query_drone", "query_satellite"):
        root = data / "test" / view
        locs = sorted(d.name for d in root.iterdir())
        for loc in locs:
            (root / loc).rename(root / f"tmp-{loc}")
        for i, loc in enumerate(locs):
            (root / f"tmp-{loc}").rename(root / locs[(i + 1) % len(locs)])


def test_best_pt_never_depends_on_test_labels(tmp_path: Path):
    # Three runs of the same seed with validation locations held out: test evaluation with the
    # true labels, with permuted labels, and none. best.pt must be the same bytes of weights.
    args = ["--preset", "tiny", "--epochs", "2", "--drones-per-location", "2", "--seed", "3", "--no-progress",
            "--device", "cpu", "--selection", "val", "--val-locations", "2"]
    runs = {}
    for name, test_labels in (("true", "true"), ("permuted", "permuted"), ("no-eval", None)):
        data = make_dataset(tmp_path / f"data-{name}", with_test=True)
        if test_labels == "permuted":
            _permute_test_labels(data)
        extra = ["--eval-every", "1"] if test_labels else []
        proc = _skyloc_train(["--data", str(data), "--out", str(tmp_path / name), *args, *extra], tmp_path, name)
        assert proc.returncode == 0, proc.stderr_text[-3000:]
        runs[name] = tmp_path / name
    rows = {k: _metrics(v) for k, v in runs.items()}
    ev = lambda r: [x["eval"]["drone->satellite"] for x in r]  # noqa: E731
    assert ev(rows["true"]) != ev(rows["permuted"])  # the test metrics did see the labels...
    best = {k: load_checkpoint(v / "best.pt") for k, v in runs.items()}
    for k in ("permuted", "no-eval"):  # ...best.pt did not
        assert _same_weights(best[k]["model"], best["true"]["model"]), k
        assert best[k]["epoch"] == best["true"]["epoch"]
        assert [x["val"] for x in rows[k]] == [x["val"] for x in rows["true"]]
    assert "eval" not in rows["no-eval"][0]
    # Selection by validation R@1 on held-out training locations, recorded in the run.
    val_r1 = [x["val"]["R@1"] for x in rows["true"]]
    assert best["true"]["epoch"] == 1 + int(np.argmax(val_r1))
    assert best["true"]["best"]["criterion"] == "val R@1 drone->satellite"
    cfg = json.loads((runs["true"] / "config.json").read_text())
    held = cfg["validation_locations"]
    assert len(held) == 2 and not set(held) & set(cfg["classes"]) and len(cfg["classes"]) == N_LOC - 2
    assert "held out" in cfg["selection"] and cfg["train"]["selection"] == "val"
    assert rows["true"][0]["val"]["num_queries"] == 2 * N_DRONE and rows["true"][0]["val"]["num_gallery"] == 2
    assert all(x["selection"] == "val" for x in rows["true"])


def test_last_epoch_selection_is_the_default(reference: Path):
    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["train"]["selection"] == "last" and "last epoch" in cfg["selection"]
    assert cfg["validation_locations"] == []
    last, best = load_checkpoint(reference / "last.pt"), load_checkpoint(reference / "best.pt")
    assert best["epoch"] == last["epoch"] == 2 and _same_weights(best["model"], last["model"])


@pytest.mark.parametrize("flag, value, word", [("--lr", "nan", "lr"), ("--lr", "inf", "lr"), ("--lr", "11", "lr"),
                                               ("--lr", "-1e-3", "lr"), ("--epochs", "0", "epochs"),
                                               ("--batch-size", "0", "batch_size"), ("--size", "8", "image_size"),
                                               ("--seed", "-1", "seed"), ("--val-locations", "-2", "val_locations"),
                                               ("--drones-per-location", "0", "drones_per_location"),
                                               ("--lr-steps", "0", "lr_step_epochs")])
def test_out_of_range_numbers_are_refused(data: Path, tmp_path: Path, flag: str, value: str, word: str):
    import argparse

    from skyloc.training import train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    out = tmp_path / "run"
    with pytest.raises(SkylocError, match=word):
        train_cli.main(parser.parse_args(["--data", str(data), "--out", str(out), *RUN_ARGS, f"{flag}={value}"]))
    assert not out.exists()


def test_diverging_run_stops_and_checkpoints_no_non_finite_state(data: Path, tmp_path: Path):
    # A real divergence: lr 10 on the heads and 100 on the backbone blows the weights up within
    # a few epochs. Training must stop with a clear error; what is on disk is the last good epoch.
    from skyloc.training.train import train

    mcfg, tcfg = preset("tiny", epochs=4, lr=10.0, backbone_lr_mult=10.0, weight_decay=0.0, drones_per_location=4)
    run = tmp_path / "run"
    with pytest.raises(SkylocError, match="diverged|loss became") as exc:
        train(data, run, mcfg, tcfg, progress=False, device="cpu")
    assert "--lr" in str(exc.value)
    if (run / "last.pt").exists():
        ckpt = load_checkpoint(run / "last.pt")
        assert ckpt["epoch"] < 4
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
        assert all(np.isfinite(r["loss"]["total"]) for r in _metrics(run))
    assert not (run / "best.pt").exists()  # selection "last": best.pt only for a finished run


def test_small_preset_decays_inside_its_epochs():
    for name, (_, t) in PRESETS.items():
        _, tcfg = preset(name)
        assert all(1 <= e < tcfg.epochs for e in tcfg.lr_step_epochs), (name, tcfg.lr_step_epochs, tcfg.epochs)
    assert preset("small")[1].lr_step_epochs == [12]


def test_cli_guards(data: Path, reference: Path, tmp_path: Path):
    import argparse

    from skyloc.training import train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    help_text = parser.format_help()
    assert all(name in help_text for name in PRESETS)
    # A finished run is never overwritten by a fresh start...
    run = tmp_path / "run"
    run.mkdir()
    _link_or_copy(reference / "last.pt", run / "last.pt")
    with pytest.raises(SkylocError, match="--resume"):
        train_cli.main(parser.parse_args(["--data", str(data), "--out", str(run), *RUN_ARGS]))
    # ...and a resumed run keeps its optimisation settings.
    with pytest.raises(SkylocError, match="--lr"):
        train_cli.main(parser.parse_args(["--resume", str(reference), "--lr", "0.5"]))
    with pytest.raises(SkylocError, match="not a `skyloc train` run"):
        train_cli.main(parser.parse_args(["--resume", str(tmp_path / "nothing")]))


def test_paper_preset_optimizer():
    from skyloc.training.model import build_model
    from skyloc.training.train import make_optimizer

    model_cfg, train_cfg = preset("msba", backbone="resnet18", image_size=64, num_classes=5)
    model = build_model(model_cfg)
    opt = make_optimizer(model, train_cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["heads"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    for g in groups.values():
        assert g["momentum"] == 0.9 and g["nesterov"] and g["weight_decay"] == pytest.approx(5e-4)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    assert train_cfg.epochs == 140 and train_cfg.lr_step_epochs == [80] and train_cfg.lr_gamma == 0.1
    assert train_cfg.batch_size == 8 and model_cfg.image_size == 64  # the override; preset says 256
    assert PRESETS["msba"][0]["image_size"] == 256
