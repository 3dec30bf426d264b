"""What a run reports: counts by outcome and reason, per-stage latency, and error against a flight's truth."""
from __future__ import annotations

import csv
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.schema import LATENCY_STAGES as STAGES  # one list of stage names

LATENCY_WINDOW = 100_000


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


@dataclass
class RunStats:
    frames: int = 0
    fixes: int = 0  # frames that produced a position (verified or not)
    verified: int = 0  # ... confirmed by map registration
    accepted: int = 0  # ... accepted by the filter
    sent_3d: int = 0  # verified, accepted, finite: the only fixes an autopilot gets as a 3D fix
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    heading_sources: Counter = field(default_factory=Counter)
    scale_levels: Counter = field(default_factory=Counter)
    errors: int = 0  # exceptions caught inside a frame (also counted in skipped["error"])
    output_errors: int = 0  # records an output failed to take (disk full, broken pipe, link down)
    source_failed: bool = False  # the source raised and ended the run
    reopens: int = 0
    dropped: int = 0  # live frames replaced by newer ones before being processed
    telemetry_rows_skipped: int = 0  # --telemetry rows with a bad / non-finite cell (never used)
    mavlink_nonfinite_dropped: int = 0  # MAVLink messages with NaN / Inf fields (never used)
    frames_without_telemetry: int = 0  # --telemetry given but no value of it for the frame (outside its time range)
    slow_frames: int = 0  # frames slower than run/health.SLOW_FRAME_S (each warned about)
    stopped_by: str | None = None  # signal name, "max-frames", or None (source ended)
    backend: str = ""
    registration: str = ""
    # the most recent LATENCY_WINDOW frames per stage: a day-long flight keeps bounded memory
    latency_ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=LATENCY_WINDOW) for s in STAGES})
    # errors against --truth (aircraft position), metres, with the fix's accuracy_m
    truth_raw: list[float] = field(default_factory=list)  # every fix, before the filter
    truth_accepted: list[float] = field(default_factory=list)  # accepted fixes, filtered position
    truth_verified: list[tuple[float, float]] = field(default_factory=list)  # verified fixes: (raw error, raw accuracy)
    truth_sent: list[float] = field(default_factory=list)  # fixes sent as 3D, filtered position

    def add(self, fix: Any, rec: dict[str, Any]) -> None:
        """Count one frame's outcome (`fix`: localizer.Fix, `rec`: its record)."""
        for s, v in rec.get("latency_ms", {}).items():
            if s in self.latency_ms:
                self.latency_ms[s].append(v)
        if fix.skipped is not None:
            self.skipped[fix.skipped] += 1
            return
        self.fixes += 1
        self.verified += bool(fix.verified)
        self.heading_sources[fix.heading_source or "none"] += 1
        if fix.scale_level is not None:
            self.scale_levels[f"{fix.scale_level:g}"] += 1
        if fix.accepted:
            self.accepted += 1
        else:
            self.rejected[fix.reason or "?"] += 1
        sent = bool(rec.get("send_3d"))
        self.sent_3d += sent
        err = rec.get("truth_error_m")
        if err is not None:
            self.truth_raw.append(err)
            if fix.verified and fix.raw_accuracy_m is not None and math.isfinite(fix.raw_accuracy_m):
                self.truth_verified.append((err, fix.raw_accuracy_m))
        ferr = rec.get("truth_filtered_error_m")
        if ferr is not None and fix.accepted:
            self.truth_accepted.append(ferr)
            if sent:
                self.truth_sent.append(ferr)

    @property
    def exit_code(self) -> int:
        """0: every record written; 3: some output failed (records lost); 4: the source failed."""
        if self.output_errors:
            return 3
        if self.source_failed:
            return 4
        return 0

    def latency_summary(self) -> dict[str, dict[str, float | None]]:
        return {s: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for s, v in self.latency_ms.items() if len(v)}

    def truth_summary(self) -> dict[str, Any] | None:
        if not self.truth_raw:
            return None
        ver = [e for e, _ in self.truth_verified]
        within = [e <= 2.0 * a for e, a in self.truth_verified]
        return {
            "fixes": len(self.truth_raw), "median_m": _pct(self.truth_raw, 50), "p95_m": _pct(self.truth_raw, 95),
            "verified": len(ver), "verified_median_m": _pct(ver, 50), "verified_p95_m": _pct(ver, 95),
            "verified_max_m": max(ver) if ver else None,
            "calibration_2sigma": float(np.mean(within)) if within else None,
            "accepted": len(self.truth_accepted), "accepted_median_m": _pct(self.truth_accepted, 50),
            "accepted_max_m": max(self.truth_accepted) if self.truth_accepted else None,
            "sent_3d": len(self.truth_sent), "sent_3d_max_m": max(self.truth_sent) if self.truth_sent else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "fixes": self.fixes, "verified": self.verified, "accepted": self.accepted,
            "sent_3d": self.sent_3d, "rejected": dict(self.rejected), "skipped": dict(self.skipped),
            "heading_sources": dict(self.heading_sources), "scale_levels": dict(self.scale_levels),
            "errors": self.errors, "output_errors": self.output_errors, "source_failed": self.source_failed,
            "reopens": self.reopens, "dropped": self.dropped, "stopped_by": self.stopped_by,
            "telemetry_rows_skipped": self.telemetry_rows_skipped,
            "mavlink_nonfinite_dropped": self.mavlink_nonfinite_dropped,
            "frames_without_telemetry": self.frames_without_telemetry, "slow_frames": self.slow_frames,
            "backend": self.backend, "registration": self.registration, "exit_code": self.exit_code,
            "latency_ms": self.latency_summary(), "truth": self.truth_summary(),
        }

    def summary(self) -> str:
        def counts(c: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        lines = [
            f"frames {self.frames}, fixes {self.fixes} (verified {self.verified}), accepted {self.accepted}, "
            f"sent as 3D {self.sent_3d}, rejected {sum(self.rejected.values())} ({counts(self.rejected)}), "
            f"skipped {sum(self.skipped.values())} ({counts(self.skipped)}), errors {self.errors}, "
            f"output errors {self.output_errors}, reopens {self.reopens}, dropped {self.dropped}"
            + (f", stopped by {self.stopped_by}" if self.stopped_by else "")
            + (", SOURCE FAILED" if self.source_failed else ""),
        ]
        if self.telemetry_rows_skipped:
            lines.append(f"telemetry: {self.telemetry_rows_skipped} rows skipped (bad or non-finite cells; never used)")
        if self.frames_without_telemetry:
            lines.append(f"telemetry: {self.frames_without_telemetry} frames outside its time range (no pose from it)")
        if self.slow_frames:
            lines.append(f"{self.slow_frames} frames slower than the warning threshold (see the log)")
        if self.mavlink_nonfinite_dropped:
            lines.append(f"MAVLink: {self.mavlink_nonfinite_dropped} messages dropped (NaN/Inf fields; never used)")
        lat = self.latency_summary()
        parts = [f"{s} {v['p50']:.1f}/{v['p99']:.1f}" for s, v in lat.items() if v["p50"] is not None]
        if parts:
            lines.append("latency ms p50/p99: " + ", ".join(parts))
        t = self.truth_summary()
        if t:
            line = f"vs truth: {t['fixes']} fixes, median {t['median_m']:.1f} m, p95 {t['p95_m']:.1f} m"
            if t["verified"]:
                line += (f"; verified {t['verified']}: median {t['verified_median_m']:.1f} m, "
                         f"p95 {t['verified_p95_m']:.1f} m, within 2 x accuracy {t['calibration_2sigma'] * 100:.0f} %")
            if t["accepted"]:
                line += f"; accepted (filtered) median {t['accepted_median_m']:.1f} m, max {t['accepted_max_m']:.1f} m"
            lines.append(line)
        return "\n".join(lines)


def load_truth_table(path: str | Path) -> dict[int, dict[str, float]]:
    """frame -> every numeric column of a flight's truth.csv (center_lat, center_lon required; lat,
    lon, yaw_deg, ... when present). The one truth reader: the loop, the demo and `skyloc report`."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SkylocError(f"--truth {path} cannot be read: {exc}") from None

    def num(r: dict[str, str], k: str) -> float:
        v = float(r[k])
        if not math.isfinite(v):
            raise ValueError(f"{k} = {r[k]!r} is not finite")
        return v

    table: dict[int, dict[str, float]] = {}
    try:
        for r in rows:
            row = {"center_lat": num(r, "center_lat"), "center_lon": num(r, "center_lon")}
            for k, v in r.items():
                if k and k not in row and k != "frame" and v not in (None, ""):
                    try:
                        row[k] = num(r, k)
                    except ValueError:
                        if k in ("lat", "lon", "time_s"):
                            raise
            table[int(r["frame"])] = row
    except (KeyError, ValueError, TypeError) as exc:
        raise SkylocError(f"--truth {path} is not a flight truth.csv (frame, center_lat, center_lon "
                          f"columns; made by `skyloc synth flight`): {exc}") from None
    return table


def load_truth(path: str | Path) -> dict[int, tuple[float, float, float | None, float | None]]:
    """frame -> (center_lat, center_lon, aircraft lat, aircraft lon) from a flight's truth.csv."""
    return {i: (r["center_lat"], r["center_lon"], r.get("lat"), r.get("lon"))
            for i, r in load_truth_table(path).items()}
