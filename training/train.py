"""The MSBA training loop: resumable, logged, single process or torchrun (DDP).

RUN_DIR gets: config.json (resolved model + train config, data dir, how best.pt is selected and
the held-out validation locations), command.txt (one line per invocation), metrics.jsonl (one
line per epoch), tb/ (TensorBoard scalars), last.pt (every epoch) and best.pt.

best.pt never looks at the test split. `selection="last"` (default, as LPN) makes it the last
epoch; `selection="val"` holds `val_locations` training locations out of training (chosen by the
seed) and keeps the epoch with the best drone->satellite R@1 on them. `--eval-every N` evaluates
on DIR/test for the log only. A non-finite loss or weight stops training with an error and no
checkpoint of that state.
Checkpoints carry optimizer, scheduler, AMP scaler, epoch, step and every rank's RNG state, so
`--resume` continues bit-for-bit on CPU. Only rank 0 writes anything.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from skyloc.core.errors import SkylocError
from skyloc.training import distributed as D
from skyloc.training import run_dir
from skyloc.training.checkpoint import load_checkpoint, save_checkpoint
from skyloc.training.config import ModelConfig, TrainConfig
from skyloc.training.data import PairedTrainSet, unwrap_worker_error
from skyloc.training.losses import msba_loss
from skyloc.training.model import MSBA, build_model
from skyloc.training.stop import StopFlag, TrainingStopped, stop_on_signals
from skyloc.training.seeding import (
    capture_rng,
    restore_rng,
    seed_everything,
    seed_worker,
)
from skyloc.training.validate import (
    _evaluate,
    _validate,
    selection_note,
    validation_locations,
)


class _PairForward(nn.Module):
    """Both views in one forward, so DDP sees one forward per backward while BatchNorm still
    normalises each view over its own batch (as the paper's code does)."""

    def __init__(self, net: MSBA):
        super().__init__()
        self.net = net

    def forward(self, sat: torch.Tensor, drone: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.net(sat), self.net(drone)


def make_optimizer(model: MSBA, cfg: TrainConfig) -> torch.optim.SGD:
    """Split learning rates: heads at lr, the (ImageNet-initialised) backbone at lr * mult."""
    groups = [
        {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"},
        {"params": list(model.heads.parameters()), "lr": cfg.lr, "name": "heads"},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _arch(cfg: ModelConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k != "pretrained"}


def _has_test_split(data_dir: Path) -> bool:
    return all((data_dir / "test" / v).is_dir() for v in ("query_drone", "gallery_satellite"))


def _is_better(score: float, criterion: str, best: dict[str, Any] | None) -> bool:
    # A resumed run may switch criterion (e.g. --eval-every added): scores are then not comparable.
    return best is None or best.get("criterion") != criterion or score > best["score"]


def train(data_dir: Path, out_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False,
          progress: bool = True, *, device: str = "auto") -> Path:
    """Train (or, with `resume`, continue) a run in `out_dir`; returns out_dir/best.pt.

    With `resume` and no out_dir/last.pt yet (killed before its first epoch ended) training
    starts from scratch; without `resume` an existing last.pt is an error (never overwritten).

    `model_cfg.num_classes` is taken from the data. Under torchrun every process calls this;
    `train_cfg.batch_size` is per process. A termination signal stops it at a safe point and
    raises TrainingStopped (training/stop.py)."""
    env = D.setup(device)
    try:
        with stop_on_signals() as stop:
            return _train(env, Path(data_dir), Path(out_dir), model_cfg, train_cfg, resume, progress, stop)
    finally:
        D.cleanup(env)


def _train(env: D.DistEnv, data_dir: Path, out_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
           resume: bool, progress: bool, stop: StopFlag) -> Path:
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    seed_everything(train_cfg.seed + env.rank)  # ranks differ in the per-row random drone picks

    val_locs = validation_locations(data_dir, train_cfg)
    dataset = PairedTrainSet(data_dir, model_cfg.image_size, train_cfg, exclude=val_locs)
    model_cfg = dataclasses.replace(model_cfg, num_classes=dataset.num_classes)

    ckpt = None
    if last_path.is_file():
        if not resume:
            raise SkylocError(f"{out_dir} already holds a training run ({last_path}); pass --resume {out_dir} "
                              "to continue it, or choose another --out")
        ckpt = load_checkpoint(last_path)
        saved = ModelConfig.from_dict(ckpt["model_config"])
        if _arch(saved) != _arch(model_cfg):
            diff = sorted(k for k in _arch(saved) if _arch(saved)[k] != _arch(model_cfg).get(k))
            raise SkylocError(f"cannot resume {last_path}: model config differs in {diff} "
                              f"(checkpoint classes {saved.num_classes}, data {data_dir} has {dataset.num_classes})")
        if list(ckpt.get("classes", dataset.classes)) != list(dataset.classes):
            raise SkylocError(f"cannot resume {last_path}: the training locations in {data_dir} differ from the run's")

    # On resume the checkpoint holds the trained weights: don't re-read the ImageNet file.
    model = build_model(dataclasses.replace(model_cfg, pretrained="") if ckpt else model_cfg)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    model.to(env.device)
    use_amp = train_cfg.amp and env.device.type == "cuda"
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    optimizer = make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train_cfg.lr_step_epochs),
                                                     gamma=train_cfg.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, step, best = 0, 0, None
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), ckpt.get("best")

    per_rank = math.ceil(len(dataset) / env.world_size)
    if per_rank < 2:
        raise SkylocError(f"{data_dir}/train gives {len(dataset)} paired rows for {env.world_size} process(es); "
                          "BatchNorm needs >= 2 per batch: add locations or raise drones_per_location")
    drop_last = per_rank >= train_cfg.batch_size  # never a 1-row batch, never an empty epoch
    generator = torch.Generator()
    generator.manual_seed(train_cfg.seed + env.rank)
    sampler = (DistributedSampler(dataset, env.world_size, env.rank, shuffle=True, seed=train_cfg.seed,
                                  drop_last=drop_last) if env.distributed else None)
    loader = DataLoader(dataset, batch_size=train_cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=train_cfg.workers, drop_last=drop_last, generator=generator,
                        worker_init_fn=seed_worker, pin_memory=env.device.type == "cuda")

    rank_rng = None
    if ckpt and "rng" in ckpt:
        saved_rng = ckpt["rng"]
        if len(saved_rng) == env.world_size:
            rank_rng = saved_rng[env.rank]
        elif env.is_main:
            print(f"warning: run saved with {len(saved_rng)} process(es), resumed with {env.world_size}: "
                  "data order will differ from an uninterrupted run", file=sys.stderr)
    if rank_rng is not None:
        restore_rng(rank_rng, generator)  # last, after everything that consumes random numbers at set-up

    net = _PairForward(model)
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    evaluating = train_cfg.eval_every > 0 and _has_test_split(data_dir)
    writer = None
    if env.is_main:
        if train_cfg.eval_every > 0 and not evaluating:
            print(f"warning: --eval-every {train_cfg.eval_every} but {data_dir}/test has no query_drone + "
                  "gallery_satellite: no test metrics in the log", file=sys.stderr)
        run_dir.start_run(out_dir, {
            "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data_dir": str(data_dir.resolve()),
            "world_size": env.world_size, "device": env.device.type, "amp": use_amp,
            "classes": list(dataset.classes), "selection": selection_note(train_cfg),
            "validation_locations": list(val_locs)}, env.world_size, start_epoch)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events logged after the checkpoint by a run that later crashed.
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=step if ckpt else None)
        if start_epoch >= train_cfg.epochs:
            print(f"{out_dir}: already trained {start_epoch} of {train_cfg.epochs} epochs; nothing to do")

    try:
        for epoch in range(start_epoch, train_cfg.epochs):
            step, stats = _run_epoch(net, loader, sampler, optimizer, scaler, use_amp, model_cfg, train_cfg,
                                     env, epoch, step, writer, progress, stop)
            if stats is None:  # stopped mid-epoch: dropped, last.pt keeps the last finished epoch
                raise _stopped(stop, out_dir, epoch, finished=False)
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
            scheduler.step()
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step, **stats, "lr": lrs}
            if evaluating and ((epoch + 1) % train_cfg.eval_every == 0 or epoch + 1 == train_cfg.epochs):
                if env.is_main:  # test metrics for the log only: never used to pick best.pt
                    with _rng_untouched(env):
                        record["eval"] = _evaluate(model, data_dir, model_cfg, progress)
                    model.train()
                D.barrier(env)
            if val_locs and ((epoch + 1) % max(1, train_cfg.eval_every) == 0 or epoch + 1 == train_cfg.epochs):
                if env.is_main:
                    with _rng_untouched(env):
                        record["val"] = _validate(model, data_dir, val_locs, model_cfg, progress)
                    model.train()
                D.barrier(env)
            _check_finite(model, record, epoch)
            rng = D.gather_to_all(capture_rng(generator), env)
            if env.is_main:
                best = _finish_epoch(out_dir, model, model_cfg, train_cfg, optimizer, scheduler, scaler, rng,
                                     record, best, dataset.classes, data_dir, writer)
            D.barrier(env)
            if epoch + 1 < train_cfg.epochs and stop.requested(env):
                raise _stopped(stop, out_dir, epoch + 1, finished=True)
    finally:
        if writer is not None:
            writer.close()
    if env.is_main and last_path.is_file() and (train_cfg.selection == "last" or not best_path.is_file()):
        run_dir.copy_atomic(last_path, best_path)
    D.barrier(env)
    return best_path


def _run_epoch(net: nn.Module, loader: DataLoader, sampler: DistributedSampler | None, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, use_amp: bool, model_cfg: ModelConfig, train_cfg: TrainConfig,
               env: D.DistEnv, epoch: int, step: int, writer: Any, progress: bool,
               stop: StopFlag) -> tuple[int, dict[str, Any] | None]:
    if sampler is not None:
        sampler.set_epoch(epoch)
    net.train()
    sums: dict[str, float] = {}
    n_batches, n_images, t0, skipped = 0, 0, time.perf_counter(), 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", unit="batch", leave=True,
               disable=not (progress and env.is_main), dynamic_ncols=True)
    try:
        for sat, drone, labels in bar:
            if stop.requested(env):
                return step, None
            sat = sat.to(env.device, non_blocking=True)
            drone = drone.to(env.device, non_blocking=True)
            labels = torch.as_tensor(labels).to(env.device, non_blocking=True)
            with torch.autocast(env.device.type, dtype=torch.float16, enabled=use_amp):
                sat_logits, drone_logits = net(sat, drone)
            # The loss in FP32: softmax / KL over many classes is where FP16 overflows.
            loss, terms = msba_loss([s.float() for s in sat_logits], [d.float() for d in drone_logits], labels,
                                    use_kl=model_cfg.kl_loss)
            if not math.isfinite(terms["total"]):
                # FP32: the run diverged. AMP: an FP16 overflow now and then is skipped (as
                # GradScaler skips such steps); a run of them means it diverged too.
                skipped += 1
                if not use_amp or skipped > _MAX_SKIPPED_STEPS:
                    raise SkylocError(f"training loss became {terms['total']} at epoch {epoch + 1}, step {step + 1}; "
                                      f"nothing was saved for this epoch (last.pt holds the last good one): lower "
                                      f"the learning rate (--lr, now {train_cfg.lr})" + (" or train without --amp" if use_amp else ""))
                optimizer.zero_grad(set_to_none=True)
                continue
            skipped = 0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            step += 1
            n_batches += 1
            n_images += 2 * sat.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            speed = n_images / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{sums['total'] / n_batches:.3f}", img_s=f"{speed:.1f}")
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f"train/{k}", v, step)
    except SkylocError as exc:
        raise unwrap_worker_error(exc) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    means = D.mean_over_ranks({k: v / max(n_batches, 1) for k, v in sums.items()}, env)
    images = D.sum_over_ranks(float(n_images), env)
    return step, {"loss": means, "batches": n_batches, "seconds": round(seconds, 3),
                  "img_per_s": images / max(seconds, 1e-9)}


def _stopped(stop: StopFlag, out_dir: Path, epochs_done: int, finished: bool) -> TrainingStopped:
    where = f"after epoch {epochs_done}" if finished else f"during epoch {epochs_done + 1} (dropped)"
    kept = f"{out_dir / 'last.pt'} holds epoch {epochs_done}" if epochs_done else "no epoch finished, nothing saved"
    return TrainingStopped(stop.signum or 0, f"stopped by {stop.name} {where}; {kept}; continue with "
                                             f"`skyloc train --resume {out_dir}`")


def _rng_untouched(env: D.DistEnv):
    """Evaluation draws from torch's RNG (each DataLoader iterator takes a seed): fork it, so
    evaluating (or not) never changes the training that follows."""
    return torch.random.fork_rng(devices=[env.device.index or 0] if env.device.type == "cuda" else [])


_MAX_SKIPPED_STEPS = 20  # consecutive non-finite AMP steps before the run counts as diverged


def _check_finite(model: MSBA, record: dict[str, Any], epoch: int) -> None:
    """Refuse to checkpoint a diverged model: NaN/inf loss mean or weights."""
    loss = record["loss"].get("total", float("nan")) if record.get("batches") else 0.0
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if not math.isfinite(loss) or bad:
        raise SkylocError(f"training diverged in epoch {epoch + 1} (mean loss {loss}, non-finite weights "
                          f"{bad[:3]}); nothing was saved for this epoch (last.pt holds the last good one): "
                          "lower the learning rate (--lr)")


def _finish_epoch(out_dir: Path, model: MSBA, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler, rng: list[Any],
                  record: dict[str, Any], best: dict[str, Any] | None, classes: list[str],
                  data_dir: Path, writer: Any) -> dict[str, Any] | None:
    """Rank 0: log the epoch, write last.pt (and best.pt when it improved on validation)."""
    epoch, step = record["epoch"], record["step"]
    improved = False
    if train_cfg.selection == "val":
        val = record.get("val")
        criterion = "val R@1 drone->satellite"
        score = None if not val or val.get("R@1") is None else float(val["R@1"])
        improved = score is not None and _is_better(score, criterion, best)
        if improved:
            best = {"epoch": epoch, "score": score, "criterion": criterion}
    else:  # "last": best.pt becomes last.pt when training ends
        best = {"epoch": epoch, "score": None, "criterion": "last epoch"}
    record["selection"] = train_cfg.selection
    record["best_epoch"] = best["epoch"] if best else None

    run_dir.log_epoch(out_dir, writer, record)

    save_checkpoint(out_dir / "last.pt", model, model_cfg, train_cfg, epoch=epoch, step=step,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), rng=rng, best=best, classes=list(classes),
                    data_dir=str(data_dir.resolve()), metrics=json.loads(json.dumps(record)))
    if improved:
        run_dir.copy_atomic(out_dir / "last.pt", out_dir / "best.pt")
    print(run_dir.summary_line(record, train_cfg.epochs, improved), flush=True)
    return best
