"""Files of a training run directory other than checkpoints (rank 0 only writes them).

config.json   resolved model + train config, dataset path, world size, device
command.txt   one line per invocation (time, world size, the exact command)
metrics.jsonl one JSON object per finished epoch (loss terms, learning rates, speed, eval)
tb/           TensorBoard scalars
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from skyloc.core.atomic import clean_stale_scratch, scratch_path, write_json_atomic, write_text_atomic  # noqa: F401


def copy_atomic(src: Path, dst: Path) -> None:
    """best.pt from last.pt; a crash midway leaves the previous best.pt intact.

    A hard link costs nothing for a multi-hundred-MB checkpoint and stays correct because
    last.pt is only ever replaced by rename (a new inode), never rewritten in place. Filesystems
    without hard links get a real copy."""
    tmp = scratch_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:  # interrupted or failed: no scratch link left beside best.pt
        tmp.unlink(missing_ok=True)


def start_run(out_dir: Path, config: dict[str, Any], world_size: int, resumed_epoch: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_scratch(out_dir)  # left by a crash mid-write; never read them
    write_json_atomic(out_dir / "config.json", config)
    argv = getattr(sys, "orig_argv", sys.argv)
    with open(out_dir / "command.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} world_size={world_size} {shlex.join(argv)}\n")
    _trim_metrics(out_dir / "metrics.jsonl", resumed_epoch)


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """A run killed between logging an epoch and checkpointing it re-runs that epoch: drop the
    lines after the checkpoint it resumes from."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["epoch"] <= last_epoch:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):  # a line cut short by the crash
            continue
    write_lines = "".join(ln + "\n" for ln in keep)
    write_text_atomic(path, write_lines)


def _tb_tag(direction: str, metric: str) -> str:
    return f"eval/{direction.replace('->', '_to_')}/{metric.replace('@', '').replace('%', 'pct')}"


def log_epoch(out_dir: Path, writer: Any, record: dict[str, Any]) -> None:
    """TensorBoard epoch scalars (x = optimizer step) and one metrics.jsonl line."""
    step = record["step"]
    for k, v in record["loss"].items():
        writer.add_scalar(f"epoch/{k}", v, step)
    for name, lr in record["lr"].items():
        writer.add_scalar(f"lr/{name}", lr, step)
    writer.add_scalar("epoch/img_per_s", record["img_per_s"], step)
    for direction, metrics in record.get("eval", {}).items():
        for metric, value in metrics.items():
            if (metric.startswith("R@") or metric == "AP") and value is not None:
                writer.add_scalar(_tb_tag(direction, metric), value, step)
    for metric, value in record.get("val", {}).items():
        if (metric.startswith("R@") or metric == "AP") and value is not None:
            writer.add_scalar(_tb_tag("val-drone->satellite", metric), value, step)
    writer.flush()
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def summary_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    ev = record.get("eval", {}).get("drone->satellite")
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']['total']:.4f}"]
    parts += [f"lr[{k}] {v:.2e}" for k, v in record["lr"].items()]
    parts.append(f"{record['img_per_s']:.1f} img/s")
    if ev and ev.get("R@1") is not None:
        parts.append(f"test R@1 {ev['R@1']:.2f} AP {ev['AP']:.2f}")
    val = record.get("val")
    if val and val.get("R@1") is not None:
        parts.append(f"val R@1 {val['R@1']:.2f} AP {val['AP']:.2f}")
    if improved:
        parts.append("*best*")
    return "  ".join(parts)
