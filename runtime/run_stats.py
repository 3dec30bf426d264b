"""What a run reports: per-stage latency, counts by reason, and error against a flight's truth."""
from __future__ import annotations

import csv
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.runtime.errors import SkylocError

LATENCY_WINDOW = 100_000
STAGES = ("grab", "preprocess", "infer", "search", "filter", "total")


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


@dataclass
class RunStats:
    frames: int = 0
    fixes: int = 0  # frames that produced a match
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    errors: int = 0  # exceptions caught inside a frame (also counted in skipped["error"])
    output_errors: int = 0
    reopens: int = 0
    dropped: int = 0  # live frames replaced by newer ones before being processed
    stopped_by: str | None = None  # signal name, "max-frames", or None (source ended)
    backend: str = ""
    # the most recent LATENCY_WINDOW frames per stage: a day-long flight keeps bounded memory
    latency_ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=LATENCY_WINDOW) for s in STAGES})
    truth_errors_m: list[float] = field(default_factory=list)  # raw fix vs truth centre, every fix
    truth_accepted_errors_m: list[float] = field(default_factory=list)  # filtered, accepted fixes
    truth_aircraft_errors_m: list[float] = field(default_factory=list)  # aircraft position vs truth lat/lon

    def latency_summary(self) -> dict[str, dict[str, float | None]]:
        return {s: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for s, v in self.latency_ms.items()}

    def truth_summary(self) -> dict[str, Any] | None:
        if not self.truth_errors_m:
            return None
        return {
            "fixes": len(self.truth_errors_m),
            "median_m": _pct(self.truth_errors_m, 50), "p90_m": _pct(self.truth_errors_m, 90),
            "accepted": len(self.truth_accepted_errors_m),
            "accepted_median_m": _pct(self.truth_accepted_errors_m, 50),
            "accepted_p90_m": _pct(self.truth_accepted_errors_m, 90),
            "aircraft": len(self.truth_aircraft_errors_m),
            "aircraft_median_m": _pct(self.truth_aircraft_errors_m, 50),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "fixes": self.fixes, "accepted": self.accepted,
            "rejected": dict(self.rejected), "skipped": dict(self.skipped), "errors": self.errors,
            "output_errors": self.output_errors, "reopens": self.reopens, "dropped": self.dropped,
            "stopped_by": self.stopped_by, "backend": self.backend,
            "latency_ms": self.latency_summary(), "truth": self.truth_summary(),
        }

    def summary(self) -> str:
        def counts(c: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        lines = [
            f"frames {self.frames}, fixes {self.fixes}, accepted {self.accepted}, "
            f"rejected {sum(self.rejected.values())} ({counts(self.rejected)}), "
            f"skipped {sum(self.skipped.values())} ({counts(self.skipped)}), errors {self.errors}, "
            f"reopens {self.reopens}, dropped {self.dropped}"
            + (f", stopped by {self.stopped_by}" if self.stopped_by else ""),
        ]
        lat = self.latency_summary()
        parts = [f"{s} {v['p50']:.1f}/{v['p99']:.1f}" for s, v in lat.items() if v["p50"] is not None]
        if parts:
            lines.append("latency ms p50/p99: " + ", ".join(parts))
        t = self.truth_summary()
        if t:
            line = f"vs truth: {t['fixes']} fixes, median {t['median_m']:.1f} m, p90 {t['p90_m']:.1f} m"
            if t["accepted"]:
                line += (f"; accepted (filtered) {t['accepted']}: median {t['accepted_median_m']:.1f} m, "
                         f"p90 {t['accepted_p90_m']:.1f} m")
            if t["aircraft"]:
                line += f"; aircraft position median {t['aircraft_median_m']:.1f} m"
            lines.append(line)
        return "\n".join(lines)


def load_truth(path: str | Path) -> dict[int, tuple[float, float, float | None, float | None]]:
    """frame -> (center_lat, center_lon, aircraft lat, aircraft lon) from a flight's truth.csv."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise SkylocError(f"--truth {path} cannot be read: {exc}") from None
    try:
        return {int(r["frame"]): (float(r["center_lat"]), float(r["center_lon"]),
                                  float(r["lat"]) if r.get("lat") else None,
                                  float(r["lon"]) if r.get("lon") else None) for r in rows}
    except (KeyError, ValueError) as exc:
        raise SkylocError(f"--truth {path} is not a flight truth.csv (frame, center_lat, center_lon "
                          f"columns; made by `skyloc synth flight`): {exc}") from None
