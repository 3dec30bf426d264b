"""Device choice and torchrun / DistributedDataParallel plumbing for the trainer.

torchrun (python -m torch.distributed.run) starts one process per GPU (or per CPU slot) and sets
RANK, WORLD_SIZE and LOCAL_RANK; without them the trainer runs as a single process. CUDA uses
the nccl backend, CPU the gloo backend (so two-process training can be checked on a laptop).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from skyloc.core.errors import SkylocError

# Rank 0 evaluates alone while the others wait at a barrier; a full University-1652 test pass
# can outlast nccl's 10-minute default.
_PG_TIMEOUT = timedelta(minutes=60)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SkylocError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available, else CPU. Under torchrun each process takes GPU LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise SkylocError(f"--device {name!r} is not one of auto, cpu, cuda")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SkylocError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise SkylocError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s): start torchrun with "
                          f"--nproc_per_node <= {count}")
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _PG_TIMEOUT}
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds the communicator to this GPU (avoids guessing)
        dist.init_process_group(**kwargs)
    return env


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average each scalar over all processes (every rank must pass the same keys)."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= env.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def sum_over_ranks(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_to_all(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order (used to checkpoint each rank's RNG state)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
