"""Wrong-map flights: every cross-domain flight over one real map localized by `skyloc run` against
another real map's tile set, where every place is a wrong place.

The run's own path with its hardest selection: no start prior, heading unknown, so each frame is
matched against the whole wrong map's stored features (re-acquisition, when small enough) or its
retrieved places, at every rotation; the best wrong place of the whole map meets the gate, frame
after frame. A verified (let alone sent) fix here is a wrong fix the autopilot would have taken.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

WRONG_MAPS = ("turku", "aerovloc")


def wrong_map_rows(model: Path, pipeline_dir: Path, maps: Sequence[str], altitudes: Sequence[float],
                   progress: bool = True, run_flags: Sequence[str] = ()) -> list[dict]:
    """For each real map flown and each other real map: its flights (kept by flight.flight_rows under
    pipeline_dir/<map>-<alt>/) against the other map's tile set of the same altitude band."""
    from skyloc.cli import main as skyloc

    real = [m for m in maps if m in WRONG_MAPS]
    rows = []
    for flown in real:
        for other in (m for m in real if m != flown):
            for alt in altitudes:
                case, tiles = pipeline_dir / f"{flown}-{alt:g}", pipeline_dir / f"{other}-{alt:g}" / "tiles.npz"
                flight = case / "flight"
                if not (flight / "flight.mp4").exists() or not tiles.exists():
                    continue
                out = case / f"wrong-map-{other}.jsonl"
                rc = skyloc(["run", "--model", str(model), "--tiles", str(tiles), "--source", str(flight / "flight.mp4"),
                             "--camera", str(flight / "flight.json"), "--telemetry", str(flight / "truth.csv"),
                             "--out", str(out), "--overwrite", "--no-heading", *run_flags])
                recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
                live = [r for r in recs if "skipped" not in r]
                row = {"flown_over": flown, "registered_against": other, "altitude_m": alt, "status": f"rc {rc}",
                       "frames": len(live), "registered": sum(bool(r.get("registration")) for r in live),
                       "verified": sum(bool(r.get("verified")) for r in live),
                       "accepted": sum(bool(r.get("accepted")) for r in live),
                       "sent_3d": sum(bool(r.get("send_3d")) for r in live),
                       "max_inliers": max(((r.get("registration") or {}).get("inliers") or 0 for r in live), default=0)}
                rows.append(row)
                if progress:
                    print(f"wrong map: {flown} {alt:g} m against {other}: verified {row['verified']} of "
                          f"{row['frames']}, max inliers {row['max_inliers']}", flush=True)
    return rows


def wrong_map_goals(rows: Sequence[dict]) -> list:
    """The issue's wrong-place goal on the run path: no verified fix over a wrong map."""
    from skyloc.benchmarks.report import Goal

    ran = [r for r in rows if r.get("frames")]
    if not ran:
        return []
    frames, ver = sum(r["frames"] for r in ran), sum(r["verified"] for r in ran)
    worst = max(r["max_inliers"] for r in ran)
    return [Goal("wrong map through `skyloc run` (no prior, heading unknown)", "0 verified",
                 f"{ver} of {frames} frames (best wrong fit {worst} inliers)", ver == 0,
                 "each frame against the whole other map or its retrieved places")]
