"""MSBA training loss: cross-entropy over every head and both views, plus mutual learning."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mutual_kl(drone_logits: torch.Tensor, sat_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(drone) || softmax(sat)), 'batchmean' (sum over classes, mean over rows)."""
    return F.kl_div(F.log_softmax(sat_logits, dim=1), F.log_softmax(drone_logits, dim=1),
                    reduction="batchmean", log_target=True)


def msba_loss(sat_logits: list[torch.Tensor], drone_logits: list[torch.Tensor], labels: torch.Tensor,
              use_kl: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of CE over heads and views, plus the mean over heads of the mutual KL.

    Rows are paired: row i of `sat_logits` and `drone_logits` show the same location `labels[i]`.
    Returns the total and its terms (for logging)."""
    ce_sat = sum(F.cross_entropy(s, labels) for s in sat_logits)
    ce_drone = sum(F.cross_entropy(d, labels) for d in drone_logits)
    total = ce_sat + ce_drone
    terms = {"ce_satellite": float(ce_sat.detach()), "ce_drone": float(ce_drone.detach())}
    if use_kl:
        kl = sum(mutual_kl(d, s) for d, s in zip(drone_logits, sat_logits)) / len(sat_logits)
        total = total + kl
        terms["kl"] = float(kl.detach())
    terms["total"] = float(total.detach())
    return total, terms
