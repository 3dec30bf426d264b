"""`skyloc run`: localize frames from a camera, stream, video or image folder against a tile set.

The flags are derived from `RunOptions` (runtime/run/loop.py), the one place their defaults and checks
live; each registrar's own options are flags too, generated from its Conf (`--ncc-min-ratio`,
`--xfeat-min-inliers`, ...; only the chosen registrar's apply). `--config FILE.toml` sets any of
them (`[run]`, and `[run.ncc]`-style tables per registrar; flags typed on the command line win), and the options
the run actually used are written beside the fixes: `--out fixes.jsonl` -> `fixes.jsonl.config.json`
(with `--out -`: beside `--stats-json`, else not written); `--config` reads that file back.

Exit codes: 0 the run ended normally (source ended, --max-frames, or a termination signal: INT,
TERM, HUP, QUIT, USR1, USR2, ...) and every record was written; 2 a startup error (bad input or
option: nothing was written); 3 an output failed (disk full, also at startup; broken pipe; a
refused UDP / MAVLink / NMEA endpoint; MAVLink link error: records were lost, see
`output_errors`); 4 the source failed: it never gave a frame (never opened, undecodable), a live
source gave up reopening, or it failed mid-run (see the log). A summary is always
printed to stderr once the run has started, and --stats-json written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from skyloc.core.errors import SkylocError

EXIT_OK, EXIT_STARTUP, EXIT_OUTPUT_ERRORS, EXIT_SOURCE_FAILED = 0, 2, 3, 4


class OutputWriteError(SkylocError):
    """An output file could not be written at startup (disk full, quota, read-only): exit 3, as
    for an output that fails mid-run, not 2 (the inputs and options were fine)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from skyloc.runtime.run.loop import RunOptions
    from skyloc.core.options import add_options

    p.epilog = ("Exit codes: 0 ok; 2 startup error (nothing written); 3 an output failed (records lost, disk full, "
                "refused endpoint); 4 the source failed (never opened, undecodable, gave up reopening). Only "
                "verified, accepted fixes are ever sent as a 3D fix.")
    p.add_argument("--model", required=True, help="exported model.onnx (sidecar beside it) or a built .engine")
    p.add_argument("--tiles", required=True, help="tile set made by this model (`skyloc tiles`)")
    p.add_argument("--source", required=True,
                   help="camera index (0), /dev/videoN, video file, rtsp://..., GStreamer pipeline "
                        "(elements joined by '!'), or an image folder")
    add_options(p, RunOptions)


def config_path_for(out: str, stats_json: str | None) -> Path | None:
    """Where the resolved config goes: beside --out (fixes.jsonl -> fixes.jsonl.config.json: named after
    the whole output, so `skyloc tiles --out area.npz` and `--out area.jsonl` do not collide), else beside
    --stats-json, else nowhere (stdout run without stats)."""
    base = Path(out) if out not in ("-", "") else (Path(stats_json) if stats_json else None)
    if base is None:
        return None
    return base.with_name(base.name + ".config.json")


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def check_paths(args: argparse.Namespace, opt: object) -> list[Path]:
    """Refuse an output that is an input, two outputs on one file, or an existing output without
    --overwrite. Returns the output files. Runs before anything is opened."""
    model = Path(args.model)
    inputs = {"--model": model, "model sidecar": model.with_suffix(".json"), "--tiles": Path(args.tiles),
              "--source": Path(args.source)}
    for name in ("telemetry", "truth", "camera", "imagery", "matcher", "config"):
        v = getattr(opt, name, None) if name != "config" else getattr(args, "config", None)
        if v:
            inputs[f"--{name}"] = Path(v)
    outputs: dict[str, Path] = {}
    if opt.out not in ("-", ""):
        outputs["--out"] = Path(opt.out)
    if opt.stats_json:
        outputs["--stats-json"] = Path(opt.stats_json)
    if opt.mavlink and str(opt.mavlink).startswith("file:"):
        outputs["--mavlink file"] = Path(str(opt.mavlink)[5:])
    if opt.nmea and str(opt.nmea).startswith("file:"):
        outputs["--nmea file"] = Path(str(opt.nmea)[5:])
    cfg = config_path_for(opt.out, opt.stats_json)
    if cfg is not None:
        outputs["resolved config"] = cfg
    for oname, o in outputs.items():
        for iname, i in inputs.items():
            if _same(o, i):
                raise SkylocError(f"{oname} {o} is the same file as {iname} {i}: refusing to overwrite an "
                                  f"input; choose another {oname.split()[0]}")
    names = list(outputs.items())
    for j, (a, pa) in enumerate(names):
        for b, pb in names[j + 1:]:
            if _same(pa, pb):
                raise SkylocError(f"{a} and {b} are the same file {pa}: give them different paths")
    if not opt.overwrite:
        for oname, o in outputs.items():
            if o.exists() and oname not in ("--mavlink file", "--nmea file"):  # logs: appended to
                raise SkylocError(f"{oname} {o} already exists: pass --overwrite to replace it, or choose "
                                  f"another path (an existing output is never truncated silently)")
    return list(outputs.values())


def _open_outputs(opt: object) -> list:
    from skyloc.runtime.outputs.nmea import NmeaOutput
    from skyloc.runtime.outputs.writers import JsonLinesOutput, MavlinkOutput, UdpOutput, parse_host_port

    outs: list = []
    try:
        # links first: when one cannot open, the fixes file has not been touched (nor truncated)
        if opt.udp:
            outs.append(UdpOutput(*parse_host_port(opt.udp)))
        if opt.mavlink:
            outs.append(MavlinkOutput(opt.mavlink, fix_type=opt.fix_type, satellites=opt.satellites,
                                      gps_id=opt.gps_id, rejected_fix_type=opt.rejected_fix_type,
                                      source_system=opt.mavlink_sysid, source_component=opt.mavlink_compid))
        if opt.nmea:
            outs.append(NmeaOutput(opt.nmea, satellites=min(opt.satellites, 99)))
        outs.insert(0, JsonLinesOutput(opt.out, overwrite=opt.overwrite))  # existing files: checked above
    except BaseException:
        for o in outs:
            o.close()
        raise
    return outs


def main(args: argparse.Namespace) -> int:
    from skyloc.runtime.run.loop import RunOptions, run
    from skyloc.core.config import options_from_args, write_resolved_config
    from skyloc.runtime.run.stats import RunStats

    opt = options_from_args(RunOptions, args, section="run")
    check_paths(args, opt)
    cfg_path = config_path_for(opt.out, opt.stats_json)

    def outputs() -> list:  # called by run() once every input has been opened and checked
        fresh = opt.out not in ("-", "") and not Path(opt.out).exists()
        outs = _open_outputs(opt)
        if cfg_path is not None:
            try:
                write_resolved_config(opt, cfg_path, model=str(args.model), tiles=str(args.tiles),
                                      source=str(args.source))
            except (SkylocError, OSError) as exc:
                for o in outs:
                    o.close()
                if fresh and Path(opt.out).is_file() and Path(opt.out).stat().st_size == 0:
                    Path(opt.out).unlink()  # ours, empty: a failed start leaves no trace
                raise OutputWriteError(str(exc)) from None
        return outs

    stats = RunStats()
    started = False
    try:
        stats = run(args.model, args.tiles, args.source, outputs, opt, stats=stats)
        started = True
    except OutputWriteError as exc:
        print(f"skyloc run: error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_ERRORS
    finally:
        started = started or bool(stats.backend)
        if started:
            print("skyloc run: " + stats.summary(), file=sys.stderr)
            if opt.stats_json:
                from skyloc.core.atomic import write_json_atomic

                try:
                    write_json_atomic(opt.stats_json, stats.to_dict())
                except (SkylocError, OSError) as exc:  # disk full at the end: an output failed (exit 3)
                    stats.output_errors += 1
                    print(f"skyloc run: error: --stats-json not written: {exc}", file=sys.stderr)
            if stats.output_errors and opt.out in ("-", ""):
                # stdout is gone (broken pipe): do not let the interpreter's final flush fail again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
    return stats.exit_code
