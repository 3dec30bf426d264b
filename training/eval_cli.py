"""`skyloc eval`: University-1652 evaluation of a checkpoint, both directions, plus the paper's
extra tables (parts: Table 7, shift: Table 4, distance groups: Table 5) and test-time input sizes
(the paper's Table 6 trains at each size: `skyloc bench accuracy --sizes`).

No torch import at module level (the dispatcher imports this module for --help)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.core.options import add_options, check_options, opt

_COLS = ("R@1", "R@5", "R@10", "R@top1%", "AP")


@dataclass
class EvalCliOptions:
    """`skyloc eval` options (flags and the `[eval]` table of a `--config` TOML)."""

    data: Path | None = opt(None, "dataset root holding test/{query_drone,gallery_satellite,query_satellite,"
                                  "gallery_drone} (required)")
    checkpoint: Path | None = opt(None, "checkpoint .pt written by `skyloc train` (required)")
    json: Path | None = opt(None, "report to write (default: next to the checkpoint, <name>.eval.json)")
    parts: tuple[str, ...] = opt((), "Table 7 rows separated by ';': 'table7' (P1..P6, Global, All, All+RW), 'all', "
                                     "'global', or head indices like '6' or '0,1' (blocks 0..5, global 6); e.g. "
                                     "--parts 'table7;0,6'", sep=";", metavar="SPEC;SPEC")
    reweight: str = opt("auto", "head reweighting (global 1.5) for the main row and custom --parts rows; auto = the "
                                "checkpoint's", choices=("auto", "on", "off"))
    shift: tuple[int, ...] = opt((), "Table 4: shift queries right by PX pixels (of the resized input), e.g. "
                                     "0,10,20,30,40,50", metavar="PX,PX")
    groups: bool = opt(False, "Table 5: drone->satellite by distance group (short / middle / long thirds of the "
                              "spiral)")
    test_size: tuple[int, ...] = opt((), "test-time input sizes: also evaluate this one checkpoint with its test "
                                         "images resized to PX, e.g. 224,256,320. Not the paper's Table 6, which "
                                         "trains at each size: `skyloc bench accuracy --sizes`", metavar="PX,PX")
    size_deprecated: tuple[int, ...] = opt((), "deprecated alias of --test-size", flag="--size", metavar="PX,PX")
    save_features: Path | None = opt(None, "write query/gallery features, labels and file names (npz, no pickle)",
                                     metavar="F.npz")
    visualize: Path | None = opt(None, "write top-5 retrieval grids (PNG)", metavar="DIR")
    vis_queries: int = opt(4, "queries per direction in the grids", ge=1)
    flip: bool = opt(True, "horizontal-flip test-time augmentation")
    batch_size: int = opt(32, "images per inference batch", ge=1)
    workers: int = opt(2, "DataLoader worker processes", ge=0)
    device: str = opt("auto", "where to evaluate", choices=("auto", "cpu", "cuda"))
    progress: bool = opt(True, "progress bars (--no-progress, or --quiet, for logs)")

    def __post_init__(self) -> None:
        check_options(self)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, EvalCliOptions)
    # the old spelling of --no-progress, kept for scripts that use it
    p.add_argument("--quiet", action="store_true", help="same as --no-progress")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


_W = 8  # column width


def format_report(report: dict[str, Any]) -> str:
    """Text tables: one line per row, both directions side by side."""
    span = len(_COLS) * _W
    title = f"{'':<16}{'Drone -> Satellite':^{span}}  {'Satellite -> Drone':^{span}}"
    cols = "".join(f"{c:>{_W}}" for c in _COLS)
    head = f"{'row':<16}{cols}  {cols}"
    o = report["options"]
    lines = [f"model {report.get('model_id')}  size {o['image_size']}  flip {o['flip']}  reweight {o['reweight']}",
             title, head, "-" * len(head)]

    def line(name: str, row: dict[str, Any]) -> str:
        cells = []
        for d in ("drone->satellite", "satellite->drone"):
            m = row.get(d)
            cells.append("".join(f"{_fmt(m.get(c)) if m else '':>{_W}}" for c in _COLS))
        return f"{name:<16}" + "  ".join(cells)

    lines.append(line("main", report["results"]))
    titles = {"parts": "Table 7: parts", "shift": "Table 4: query shift", "groups": "Table 5: drone distance",
              "size": "test-time input size (one checkpoint)"}
    for key, rows in report["tables"].items():
        lines.append(f"-- {titles.get(key, key)}")
        for r in rows:
            if key == "shift":
                name = f"{r['shift_px']} px"
            elif key == "size":
                name = f"{r['image_size']} px"
            elif key == "groups":
                name = f"{r['name']} ({r['drone->satellite']['num_queries']})"
            else:
                name = r["name"]
            lines.append(line(name, r))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import options_from_args
    from skyloc.training.evaluate import EvalOptions, run_eval

    o = options_from_args(EvalCliOptions, args, section="eval")
    if o.data is None or o.checkpoint is None:
        raise SkylocError("skyloc eval: give --data DIR and --checkpoint FILE.pt")
    checkpoint = Path(o.checkpoint)
    reweight = {"auto": None, "on": True, "off": False}[o.reweight]
    out_json = Path(o.json) if o.json else checkpoint.with_name(checkpoint.stem + ".eval.json")
    opts = EvalOptions(
        reweight=reweight,
        part_rows=list(o.parts),
        shifts=list(o.shift),
        groups=o.groups,
        sizes=list(o.test_size) + list(o.size_deprecated),
        flip=o.flip,
        batch_size=o.batch_size,
        workers=o.workers,
        progress=o.progress and not getattr(args, "quiet", False),
    )
    if o.size_deprecated:
        print("warning: `skyloc eval --size` is deprecated: use --test-size (test-time resize of one checkpoint)",
              file=sys.stderr)
    if any(s < 16 for s in opts.sizes):
        raise SkylocError(f"--test-size values must be >= 16 px, got {opts.sizes}")
    path = run_eval(checkpoint, Path(o.data), out_json, opts, device=o.device,
                    save_features_to=Path(o.save_features) if o.save_features else None,
                    visualize_dir=Path(o.visualize) if o.visualize else None, vis_queries=o.vis_queries)
    print(format_report(json.loads(path.read_text())))
    print(f"wrote {path}")
    return 0
