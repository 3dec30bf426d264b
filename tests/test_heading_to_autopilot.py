"""The registered heading reaches the autopilot: a flight flown with the heading unknown, GPS_INPUT
written to a MAVLink log and decoded back by pymavlink (not by our code), NMEA HDT read by an
independent parser; both compared with the fix records and with the flight's own truth.csv.

Also: every value the records carry for a closed field is one of the schema's vocabulary (the
spelling the outputs act on), so a writer and a reader can no longer disagree on it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runtime_core_helpers import make_flight_case
from skyloc.cli import main as skyloc
from skyloc.runtime.outputs.schema import (FIELD_BY_NAME, FixStatus, HeadingSource, ScaleSource, SkipReason,
                                           validate_record)

mavutil = pytest.importorskip("pymavlink.mavutil")


@pytest.fixture(scope="module")
def flown(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("heading")
    case = make_flight_case(tmp, seconds=6.0, fps=2.0, seed=5)
    with open(case["truth"], newline="") as f:
        rows = {int(r["frame"]): r for r in csv.DictReader(f)}
    out, mav, nmea = tmp / "fixes.jsonl", tmp / "gps.mavlink", tmp / "fixes.nmea"
    first = rows[0]
    rc = skyloc(["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]),
                 "--source", str(case["video"]), "--camera", str(case["camera"]),
                 "--telemetry", str(case["truth"]), "--no-heading",  # altitude / attitude, heading unknown
                 "--start", f"{first['lat']},{first['lon']},150", "--blank-cos", "0.99",
                 "--imagery", str(case["map"]), "--out", str(out),
                 "--mavlink", f"file:{mav}", "--nmea", f"file:{nmea}"])
    assert rc == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    return {"recs": recs, "rows": rows, "mav": mav, "nmea": nmea}


def _gps_inputs(path: Path) -> list:
    log = mavutil.mavlink_connection(str(path), notimestamps=True, dialect="common")
    msgs = []
    while True:
        m = log.recv_match(type="GPS_INPUT")
        if m is None:
            return msgs
        msgs.append(m)


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_every_gps_input_of_a_heading_unknown_flight_carries_the_registered_yaw(flown):
    recs, rows = flown["recs"], flown["rows"]
    sent = [r for r in recs if r.get("send_3d")]
    assert len(sent) >= 3, [(r.get("verified"), r.get("reason")) for r in recs]
    # nothing told the run the heading: every sent fix's heading is the registration's
    assert all(r["heading_source"] == "registration" for r in sent)
    msgs = _gps_inputs(flown["mav"])
    assert len(msgs) == len(sent)  # one GPS_INPUT per vouched fix, none for the rest (default: skip)
    for r, m in zip(sent, msgs):
        assert m.fix_type == 3 and m.lat == round(r["lat"] * 1e7) and m.lon == round(r["lon"] * 1e7)
        assert 1 <= m.yaw <= 36000, "yaw 0 means 'no yaw' to the autopilot"
        want = round(r["heading_deg"] * 100) or 36000
        assert m.yaw == (36000 if want == 36000 else want)
        truth_yaw = float(rows[r["frame"]]["yaw_deg"])
        assert _angle_diff(m.yaw / 100.0, truth_yaw) <= 3.0


def test_nmea_hdt_carries_the_heading_of_every_sent_fix_only(flown):
    from test_nmea import parse

    text = flown["nmea"].read_bytes().decode("ascii")
    sentences = [parse(s + "\r\n") for s in text.split("\r\n") if s]
    # one group per record: GGA, RMC, then HDT only when the fix was sent with a registered heading
    groups, cur = [], []
    for s in sentences:
        if s["kind"] == "GGA" and cur:
            groups.append(cur)
            cur = []
        cur.append(s)
    groups.append(cur)
    recs = flown["recs"]
    assert len(groups) == len(recs)
    for r, g in zip(recs, groups):
        hdt = [s for s in g if s["kind"] == "HDT"]
        if r.get("send_3d"):
            assert len(hdt) == 1 and _angle_diff(hdt[0]["heading"], r["heading_deg"]) <= 0.051
            assert _angle_diff(hdt[0]["heading"], float(flown["rows"][r["frame"]]["yaw_deg"])) <= 3.0
        else:
            assert not hdt and g[0]["quality"] == 0


def test_records_speak_the_schema_vocabulary(flown):
    closed = {"heading_source": HeadingSource, "scale_source": ScaleSource, "skipped": SkipReason,
              "reason": FixStatus}
    for r in flown["recs"]:
        validate_record(r, strict=True)
        for name, vocab in closed.items():
            if r.get(name) is not None:
                assert r[name] in set(vocab), (name, r[name])
    for name, vocab in closed.items():
        assert FIELD_BY_NAME[name].choices == tuple(vocab)


def test_a_misspelt_value_is_refused_by_the_schema():
    from skyloc.core.errors import SkylocError

    rec = {"schema": "skyloc.fix/2", "frame": 0, "time_s": 0.0, "source": "x", "latency_ms": {}, "lat": 1.0,
           "lon": 2.0, "accepted": True}
    validate_record({**rec, "heading_source": "registration"})
    for field, bad in (("heading_source", "register"), ("scale_source", "gsd-search"), ("reason", "Init")):
        with pytest.raises(SkylocError, match=field):
            validate_record({**rec, field: bad})
    with pytest.raises(SkylocError, match="skipped"):
        validate_record({**rec, "skipped": "no_match"})


def test_every_reason_the_quality_gate_gives_is_a_skip_reason():
    from skyloc.runtime.localize.quality import REASONS

    assert set(REASONS) <= set(SkipReason)


def test_registrar_names_are_the_registry_keys():
    from skyloc.runtime.outputs.schema import REGISTRAR_NAMES
    from skyloc.runtime.register.registry import REGISTRARS, make_registrar

    assert REGISTRAR_NAMES == tuple(REGISTRARS) and "ncc" in REGISTRAR_NAMES
    assert type(make_registrar("ncc")).__name__ == REGISTRARS["ncc"][1]
