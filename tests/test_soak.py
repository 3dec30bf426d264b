"""The soak of issue 13 in small (benchmarks/soak.py; `skyloc bench soak` runs 10k frames): black,
featureless and NaN/Inf-heading frames injected into a real run (real ONNX model, tile set, map
registration, telemetry CSV, pymavlink autopilot on 127.0.0.1, NMEA over UDP). Every 3D fix is
decoded back from each channel and checked against the flight's truth: no wrong 3D fix, ever."""
from __future__ import annotations

import math

import pytest

from skyloc.benchmarks.soak import BAD, SoakConfig, judge_channel, nmea_fixes, plan, run_soak


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("onnx")
    pytest.importorskip("pymavlink")
    return run_soak(SoakConfig(frames=150, seed=1), tmp_path_factory.mktemp("soak"))


def test_no_wrong_3d_fix_on_any_channel(soak: dict) -> None:
    assert soak["wrong_3d"] == 0, soak["channels"]
    for row in soak["channels"]:
        assert row["wrong_3d"] == 0 and row["on_black_or_featureless"] == 0, row
        assert row["max_err_m"] is not None and row["max_err_m"] <= 50.0, row


def test_the_soak_is_not_vacuous(soak: dict) -> None:
    """Good frames are localized and sent as 3D (so zero wrong fixes means something), every
    injected kind occurred, and the NaN ATTITUDE messages really reached the link."""
    good = next(r for r in soak["by_kind"] if r["kind"] == "good")
    assert good["sent_3d"] >= 0.6 * good["frames"], good
    for k in BAD:
        assert sum(x == k for x in soak["kinds"]) >= 10
    assert soak["nan_attitudes_sent"] > 0 and soak["nan_attitudes_dropped"] > 0
    assert soak["telemetry_rows_skipped"] == sum(x == "nan-heading" for x in soak["kinds"])
    # ... and the run reports those drops itself (summary / --stats-json)
    assert soak["run_telemetry_rows_skipped"] == soak["telemetry_rows_skipped"]
    assert soak["run_mavlink_nonfinite_dropped"] == soak["nan_attitudes_dropped"]


def test_bad_frames_never_sent_and_nan_heading_never_used(soak: dict) -> None:
    by = {r["kind"]: r for r in soak["by_kind"]}
    assert by["black"]["skipped"] == by["black"]["frames"]  # the gate stops every black frame
    for k in ("black", "featureless"):
        assert by[k]["sent_3d"] == 0 and by[k]["verified"] == 0, by[k]
    assert by["nan-heading"]["heading_from_pose"] == 0, by["nan-heading"]


def test_every_frame_has_one_record_and_channels_agree(soak: dict) -> None:
    assert soak["frame_records"] == list(range(150))
    assert soak["exit_code"] == 0 and soak["errors"] == 0 and soak["output_errors"] == 0
    ch = soak["channel_frames"]
    sent = ch["record send_3d"]
    assert soak["gps_input_sent"] == soak["gps_input_received"] == len(sent) == soak["sent_3d"]
    assert ch["GPS_INPUT fix_type 3"] == sent  # decoded by pymavlink, frame from time_usec
    assert ch["NMEA GGA quality 1"] == sent  # own parser, checksums checked
    # GGA + RMC for every frame, + HDT for each sent fix whose heading registration measured
    assert soak["nmea_hdt"] == soak["sent_with_registered_heading"] > 0
    assert soak["nmea_bad_checksum"] == 0 and soak["nmea_sentences"] == 2 * 150 + soak["nmea_hdt"]


def test_judge_counts_what_it_must() -> None:
    """The checker itself can fail: a far fix, a fix on a black frame, a NaN error, an unknown frame."""
    kinds = ["good", "black", "good", "nan-heading", "featureless"]
    err = {0: 3.0, 1: 1.0, 2: 80.0, 3: math.nan, 4: 2.0}
    fixes = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (9, 0, 0)]
    row = judge_channel("x", fixes, kinds, lambda f, la, lo: err[f], 50.0)
    assert row["on_black_or_featureless"] == 3  # frames 1, 4 and the unknown 9
    assert row["farther_than_wrong_m"] == 3  # 2 (80 m), 3 (NaN), 9 (unknown)
    assert row["wrong_3d"] == 5 and row["on_nan_heading"] == 1
    assert judge_channel("y", [(0, 0, 0)], kinds, lambda f, la, lo: err[f], 50.0)["wrong_3d"] == 0


def test_plan_shares_and_bursts() -> None:
    cfg = SoakConfig(frames=2000, seed=3)
    kinds = plan(cfg)
    for k in BAD:
        assert abs(kinds.count(k) - 200) <= 2
    longest = max(len(run) for run in "".join("x" if k == "black" else "." for k in kinds).split("."))
    assert longest >= 3  # bursts, not only single frames


def test_nmea_parser_reads_a_known_sentence() -> None:
    # 60 deg 24.000' N, 22 deg 27.600' E at 00:00:05 -> frame 5 at 1 fps
    got = nmea_fixes(["GPGGA,000005.00,6024.0000,N,02227.6000,E,1,10,0.2,,M,,M,,"], 1.0)
    assert got == [(5, pytest.approx(60.4), pytest.approx(22.46))]
    assert nmea_fixes(["GPGGA,000005.00,,,,,0,00,,,M,,M,,"], 1.0) == []
