"""Seeds and RNG snapshots for repeatable, exactly resumable training.

Snapshots hold only tensors and builtins so a checkpoint carrying them still loads with
torch.load(weights_only=True): numpy's and Python's Mersenne-Twister states (624 words below
2**32) are stored as int64 tensors.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: torch already seeds each worker from the loader's generator
    (base seed + worker id); derive numpy's and Python's seeds from it so augmentations that use
    them are repeatable too."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def capture_rng(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_words, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(w) for w in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        for i in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[i], i)
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])
