"""`skyloc eval`: University-1652 evaluation of a checkpoint, both directions, plus the paper's
extra tables (parts: Table 7, shift: Table 4, distance groups: Table 5) and test-time input sizes
(the paper's Table 6 trains at each size: `skyloc bench accuracy --sizes`).

No torch import at module level (the dispatcher imports this module for --help)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError

_COLS = ("R@1", "R@5", "R@10", "R@top1%", "AP")


def _int_list(values: list[str], flag: str) -> list[int]:
    out = []
    for v in values:
        for t in str(v).replace(";", ",").split(","):
            if t.strip():
                try:
                    out.append(int(t))
                except ValueError:
                    raise SkylocError(f"{flag}: {t!r} is not an integer (give e.g. {flag} 0,10,20)") from None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="dataset root holding test/{query_drone,gallery_satellite,query_satellite,gallery_drone}")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint .pt written by `skyloc train`")
    p.add_argument("--json", type=Path, default=None,
                   help="report to write (default: next to the checkpoint, <name>.eval.json)")
    p.add_argument("--parts", action="append", default=[], metavar="SPEC",
                   help="Table 7 rows: 'table7' (P1..P6, Global, All, All+RW), 'all', 'global', or head "
                        "indices like '6' or '0,1' (blocks 0..5, global 6); repeatable")
    p.add_argument("--reweight", choices=("auto", "on", "off"), default="auto",
                   help="head reweighting (global 1.5) for the main row and custom --parts rows; auto = checkpoint's")
    p.add_argument("--shift", nargs="+", default=[], metavar="PX",
                   help="Table 4: shift queries right by PX pixels (of the resized input), e.g. 0,10,20,30,40,50")
    p.add_argument("--groups", action="store_true",
                   help="Table 5: drone->satellite by distance group (short / middle / long thirds of the spiral)")
    p.add_argument("--test-size", nargs="+", default=[], metavar="PX",
                   help="test-time input sizes: also evaluate this one checkpoint with its test images resized "
                        "to PX, e.g. 224,256,320. Not the paper's Table 6, which trains at each size: "
                        "`skyloc bench accuracy --sizes`")
    p.add_argument("--size", nargs="+", default=[], metavar="PX", dest="size_deprecated",
                   help="deprecated alias of --test-size")
    p.add_argument("--save-features", type=Path, default=None, metavar="F.npz",
                   help="write query/gallery features, labels and file names (npz, no pickle)")
    p.add_argument("--visualize", type=Path, default=None, metavar="DIR", help="write top-5 retrieval grids (PNG)")
    p.add_argument("--vis-queries", type=int, default=4, help="queries per direction in the grids")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip test-time augmentation")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    from skyloc.training.evaluate import EvalOptions, run_eval

    reweight = {"auto": None, "on": True, "off": False}[args.reweight]
    out_json = args.json or args.checkpoint.with_name(args.checkpoint.stem + ".eval.json")
    if args.batch_size < 1:
        raise SkylocError("--batch-size must be >= 1")
    opts = EvalOptions(
        reweight=reweight,
        part_rows=list(args.parts),
        shifts=_int_list(args.shift, "--shift"),
        groups=args.groups,
        sizes=_int_list(args.test_size, "--test-size") + _int_list(args.size_deprecated, "--size"),
        flip=not args.no_flip,
        batch_size=args.batch_size,
        workers=max(0, args.workers),
        progress=not args.quiet,
    )
    if args.size_deprecated:
        print("warning: `skyloc eval --size` is deprecated: use --test-size (test-time resize of one checkpoint)",
              file=sys.stderr)
    if any(s < 16 for s in opts.sizes):
        raise SkylocError(f"--test-size values must be >= 16 px, got {opts.sizes}")
    path = run_eval(args.checkpoint, args.data, out_json, opts, device=args.device,
                    save_features_to=args.save_features, visualize_dir=args.visualize, vis_queries=args.vis_queries)
    print(format_report(json.loads(path.read_text())))
    print(f"wrote {path}")
    return 0
