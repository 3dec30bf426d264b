"""`skyloc synth world|dataset|flight`: the procedural map, a University-1652-layout dataset, a flight.

A thin layer over make_world / make_dataset / make_flight. Options: synth.options (one dataclass per
subcommand; `--config FILE.toml` reads its `[synth.world]` / `[synth.dataset]` / `[synth.flight]` table,
typed flags override it; every number is checked finite and in range, naming its flag, before anything
is written). The options used are recorded beside the output folder as OUT.config.json. Without --map,
dataset and flight generate the built-in procedural world into OUT/map and use it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter, add_options
from skyloc.synth.options import OPTIONS

HELP = {"world": "write the procedural world (map.png + map.csv)",
        "dataset": "University-1652-layout dataset rendered from a map",
        "flight": "simulated flight video + truth.csv over a map"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_command", required=True, metavar="{world,dataset,flight}")
    for name, cls in OPTIONS.items():
        # defaults shown only when they say something
        add_options(sub.add_parser(name, help=HELP[name], formatter_class=HelpFormatter), cls)


def _check_out(out: Path | None, command: str) -> Path:
    """--out is a folder: an existing file there (the map's CSV, an image) is refused before anything is written."""
    if out is None:
        raise SkylocError(f"{command}: give --out DIR, the folder to write into (or `out` in the "
                          f"[synth.{command}] table of --config); nothing was written")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SkylocError(f"--out {out} is a file, not a folder: give the folder to write the "
                          f"{command} into (nothing was written)")
    return out


def main(args: argparse.Namespace) -> int:
    from skyloc.core.config import config_path_beside, options_from_args, write_resolved_config

    command = args.synth_command
    o = options_from_args(OPTIONS[command], args, section=f"synth.{command}")
    out = _check_out(o.out, command)
    # OUT.config.json beside the folder (absolute, so `--out .` is named after the folder too)
    record = config_path_beside(out.resolve())
    if command == "world":
        from skyloc.synth.world import make_world

        path = make_world(out, seed=o.seed, size_m=o.size_m, mpp=o.mpp, lat=o.lat, lon=o.lon)
        write_resolved_config(o, record)
        print(f"wrote {path}, {path.with_name('map.png')} and {record}")
        return 0
    if command == "dataset":
        import json

        from skyloc.synth.dataset import make_dataset

        cfg = o.to_config()
        done = make_dataset(o.map, out, cfg)
        write_resolved_config(o, record, synth_config=cfg)
        meta = json.loads((done / "synth.json").read_text())
        print(f"wrote dataset {done}: {meta['train_locations']} train + {meta['test_locations']} test locations "
              f"(of {meta['requested_locations']} asked), {meta['distractors']} distractors "
              f"(locations.csv, poses.csv, synth.json, map/); options in {record}")
        return 0
    from skyloc.synth.flight import make_flight

    cfg = o.to_config()
    video = make_flight(o.map, out, cfg)
    write_resolved_config(o, record, synth_config=cfg)
    print(f"wrote {video}, {video.with_name('truth.csv')}, {video.with_name('flight.json')} and {record}")
    return 0
