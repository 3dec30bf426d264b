"""`skyloc run`: localize frames from a camera, stream, video or image folder against a tile set.

The model's sidecar supplies the input contract and the tile set is checked against it, so the
only things typed here are where frames come from and where fixes go.
"""
from __future__ import annotations

import argparse
import logging
import sys

from skyloc.runtime.errors import SkylocError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported model.onnx (sidecar beside it) or a built .engine")
    p.add_argument("--tiles", required=True, help="tile set made by this model (`skyloc tiles`)")
    p.add_argument("--source", required=True,
                   help="camera index (0), /dev/videoN, video file, rtsp://..., GStreamer pipeline "
                        "(elements joined by '!'), or an image folder")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default="-", help="JSON lines file, '-' for stdout")
    g.add_argument("--udp", metavar="HOST:PORT", help="also send each record as a JSON datagram")
    g.add_argument("--mavlink", metavar="URL",
                   help="send GPS_INPUT: udpout:HOST:PORT, udpin:HOST:PORT, tcp:HOST:PORT, /dev/ttyX:BAUD, file:PATH")
    g.add_argument("--fix-type", type=int, default=3, help="GPS_INPUT fix_type for accepted fixes (3 = 3D)")
    g.add_argument("--rejected-fix-type", type=int, default=None,
                   help="also send rejected frames with this fix_type (e.g. 0 = no fix); default: send nothing")
    g.add_argument("--satellites", type=int, default=0, help="GPS_INPUT satellites_visible")
    g.add_argument("--gps-id", type=int, default=0, help="GPS_INPUT gps_id (instance)")
    g.add_argument("--horiz-accuracy", type=float, default=None, metavar="M",
                   help="GPS_INPUT horiz_accuracy in metres (default: flagged as not provided)")
    g.add_argument("--mavlink-sysid", type=int, default=1)
    g.add_argument("--mavlink-compid", type=int, default=191, help="191 = MAV_COMP_ID_ONBOARD_COMPUTER")
    g = p.add_argument_group("inference and search")
    g.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt")
    g.add_argument("--providers", default=None, help="onnxruntime execution providers, e.g. cuda,cpu")
    g.add_argument("--index", default="auto", choices=["auto", "exact", "flat", "hnsw", "ivfpq"])
    g.add_argument("--k", type=int, default=10, help="hits per frame (confidence uses them)")
    g.add_argument("--window-m", type=float, default=None,
                   help="prefer tiles within this radius (+ max speed x elapsed) of the last accepted fix")
    g.add_argument("--window-margin", type=float, default=0.02,
                   help="...unless a tile outside the window scores higher by more than this")
    g.add_argument("--refine-m", type=float, default=None,
                   help="fix = score-weighted centre of the hits this close to the best tile "
                        "(default 1.5 x the tile stride; 0 = the best tile's centre)")
    g = p.add_argument_group("temporal filter")
    g.add_argument("--max-speed", type=float, default=30.0, help="m/s; faster implied jumps are rejected")
    g.add_argument("--smoothing", type=float, default=0.5, help="alpha of the alpha-beta filter (1 = none)")
    g.add_argument("--max-rejections", type=int, default=5, help="re-initialise after this many in a row")
    g.add_argument("--noise-m", type=float, default=None, help="position noise the speed gate allows (default: tile size)")
    g.add_argument("--distinct-m", type=float, default=None,
                   help="confidence: margin to the best tile farther than this (default: tile size)")
    g.add_argument("--min-confidence", type=float, default=None, help="reject fixes below this margin")
    g = p.add_argument_group("aircraft position (fixes are the ground point at the image centre)")
    g.add_argument("--altitude", type=float, default=None, help="metres above ground")
    g.add_argument("--pitch", type=float, default=None, help="degrees, nose up positive")
    g.add_argument("--roll", type=float, default=None, help="degrees, right wing down positive")
    g.add_argument("--yaw", type=float, default=None,
                   help="heading, degrees clockwise from north (frames are turned north-up before matching)")
    g.add_argument("--camera-tilt", type=float, default=0.0, help="camera tilt forward from nadir, degrees")
    g.add_argument("--telemetry", default=None, metavar="CSV",
                   help="per-frame attitude log: frame or time_s + any of altitude_m, roll_deg, pitch_deg, "
                        "yaw_deg, tilt_deg (a synthetic flight's truth.csv works; its positions are ignored)")
    g.add_argument("--no-north-up", dest="north_up", action="store_false",
                   help="do not rotate frames north-up even when the heading is known")
    g = p.add_argument_group("source")
    g.add_argument("--fps", type=float, default=None, help="time step for image folders (default 1) / videos without one")
    g.add_argument("--live", action="store_true", help="treat a video file as a live camera (latest frame, reopen)")
    g.add_argument("--reopen-initial", type=float, default=0.5, help="first reopen back-off, s")
    g.add_argument("--reopen-max", type=float, default=10.0, help="longest back-off, s")
    g.add_argument("--reopen-attempts", type=int, default=0, help="give up after N failed reopens (0 = never)")
    g = p.add_argument_group("run")
    g.add_argument("--max-frames", type=int, default=None)
    g.add_argument("--truth", default=None, help="truth.csv of a synthetic flight: report error vs truth")
    g.add_argument("--stats-json", default=None, help="also write the final statistics as JSON here")
    g.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING | ERROR")


def _outputs(args: argparse.Namespace) -> list:
    from skyloc.runtime.outputs import JsonLinesOutput, MavlinkOutput, UdpOutput, parse_host_port

    outs: list = []
    try:
        outs.append(JsonLinesOutput(args.out))
        if args.udp:
            outs.append(UdpOutput(*parse_host_port(args.udp)))
        if args.mavlink:
            outs.append(MavlinkOutput(args.mavlink, fix_type=args.fix_type, satellites=args.satellites,
                                      gps_id=args.gps_id, horiz_accuracy_m=args.horiz_accuracy,
                                      rejected_fix_type=args.rejected_fix_type,
                                      source_system=args.mavlink_sysid, source_component=args.mavlink_compid))
    except BaseException:
        for o in outs:
            o.close()
        raise
    return outs


def main(args: argparse.Namespace) -> int:
    from skyloc.runtime.loop import RunOptions, run
    from skyloc.runtime.pose import PoseInputs
    from skyloc.runtime.sources import ReconnectPolicy

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.max_speed <= 0:
        raise SkylocError(f"--max-speed {args.max_speed} must be > 0 (m/s)")
    if not 0 < args.smoothing <= 1:
        raise SkylocError(f"--smoothing {args.smoothing} must be in (0, 1]")
    opts = RunOptions(
        backend=args.backend,
        backend_conf={"providers": args.providers} if args.providers else None,
        index=args.index, k=args.k, window_m=args.window_m, window_margin=args.window_margin, max_speed_mps=args.max_speed,
        alpha=args.smoothing, max_rejections=args.max_rejections, noise_m=args.noise_m,
        distinct_m=args.distinct_m, refine_m=args.refine_m, min_confidence=args.min_confidence, max_frames=args.max_frames,
        fps=args.fps, live=True if args.live else None,
        reconnect=ReconnectPolicy(initial_s=args.reopen_initial, max_s=args.reopen_max,
                                  max_attempts=args.reopen_attempts or None),
        pose=PoseInputs(altitude_m=args.altitude, roll_deg=args.roll, pitch_deg=args.pitch,
                        yaw_deg=args.yaw, camera_tilt_deg=args.camera_tilt),
        telemetry=args.telemetry, north_up=args.north_up, truth=args.truth,
    )
    stats = run(args.model, args.tiles, args.source, _outputs(args), opts)
    print("skyloc run: " + stats.summary(), file=sys.stderr)
    if args.stats_json:
        from skyloc.runtime.sidecar import write_json_atomic

        write_json_atomic(args.stats_json, stats.to_dict())
    return 0
