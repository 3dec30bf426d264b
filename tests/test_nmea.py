"""skyloc.runtime.outputs.nmea: GGA + RMC parsed back by an independent parser written here (checksum,
fields, ddmm.mmmm -> degrees), over UDP, a serial pty and a file; unvouched fixes carry no position."""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from functools import reduce

import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.nmea import NmeaOutput, nmea_sentences

T = datetime(2025, 3, 14, 15, 9, 26, 730000, tzinfo=timezone.utc)
REC = {"frame": 1, "lat": 45.0701234, "lon": 7.6809876, "accepted": True, "verified": True, "accuracy_m": 12.5,
       "capture_unix_s": T.timestamp(), "vn_mps": 3.0, "ve_mps": -4.0}


def parse(line: str) -> dict:
    """Independent NMEA 0183 reader for GGA / RMC / HDT: checks framing and checksum, returns fields."""
    assert line.endswith("\r\n") and line.startswith("$"), repr(line)
    body, star, cs = line[1:-2].rpartition("*")
    assert star and len(cs) == 2
    assert reduce(lambda a, c: a ^ ord(c), body, 0) == int(cs, 16), "checksum"
    f = body.split(",")

    def deg(v: str, hemi: str, d: int) -> float | None:
        if not v:
            return None
        x = int(v[:d]) + float(v[d:]) / 60.0
        return -x if hemi in "SW" else x

    kind = f[0][2:]
    if kind == "GGA":
        assert len(f) == 15
        return {"kind": kind, "talker": f[0][:2], "time": f[1], "lat": deg(f[2], f[3], 2), "lat_raw": f[2],
                "lon": deg(f[4], f[5], 3), "lon_raw": f[4], "ns": f[3], "ew": f[5], "quality": int(f[6]),
                "sats": int(f[7]), "hdop": float(f[8]) if f[8] else None}
    if kind == "HDT":
        assert len(f) == 3 and f[2] == "T"
        return {"kind": kind, "heading": float(f[1])}
    assert kind == "RMC" and len(f) == 13
    return {"kind": kind, "time": f[1], "status": f[2], "lat": deg(f[3], f[4], 2), "lon": deg(f[5], f[6], 3),
            "sog_kn": float(f[7]) if f[7] else None, "cog": float(f[8]) if f[8] else None, "date": f[9],
            "mode": f[12]}


@pytest.mark.parametrize("lat,lon", [(45.0701234, 7.6809876), (-33.8567844, 151.2152967), (60.4039, -22.46044),
                                     (-0.00001, -179.99999), (89.999999, 0.0)])
def test_gga_rmc_round_trip(lat, lon):
    gga, rmc = (parse(s) for s in nmea_sentences({**REC, "lat": lat, "lon": lon}))
    for s in (gga, rmc):
        assert s["lat"] == pytest.approx(lat, abs=1e-4 / 60 / 2 + 1e-12)  # 4 decimals of minutes
        assert s["lon"] == pytest.approx(lon, abs=1e-4 / 60 / 2 + 1e-12)
        assert s["time"] == "150926.73"
    assert len(gga["lat_raw"].split(".")[0]) == 4 and len(gga["lon_raw"].split(".")[0]) == 5  # ddmm / dddmm
    assert gga["ns"] == ("N" if lat >= 0 else "S") and gga["ew"] == ("E" if lon >= 0 else "W")
    assert gga["quality"] == 1 and gga["sats"] == 10 and gga["hdop"] == pytest.approx(2.5) and gga["talker"] == "GP"
    assert rmc["status"] == "A" and rmc["mode"] == "A" and rmc["date"] == "140325"
    assert rmc["sog_kn"] == pytest.approx(5.0 * 3600 / 1852, abs=0.01)  # 5 m/s
    assert rmc["cog"] == pytest.approx(306.9, abs=0.1)  # atan2(east -4, north 3)


def test_minutes_and_seconds_carry_instead_of_reaching_60():
    gga, rmc = (parse(s) for s in nmea_sentences({**REC, "lat": 10.999999999, "lon": 20.0,
                                                   "capture_unix_s": datetime(2024, 12, 31, 23, 59, 59, 996000,
                                                                              tzinfo=timezone.utc).timestamp()}))
    assert gga["lat_raw"] == "1100.0000" and gga["time"] == "000000.00" and rmc["date"] == "010125"


@pytest.mark.parametrize("bad", [{"verified": False}, {"accepted": False}, {"lat": float("nan")},
                                 {"lon": float("inf")}, {"lat": None, "skipped": "low-texture"}, {"verified": None}])
def test_unvouched_records_say_no_fix_and_carry_no_position(bad):
    gga, rmc = (parse(s) for s in nmea_sentences({**REC, **bad}))
    assert gga["quality"] == 0 and gga["lat"] is None and gga["lon"] is None and gga["sats"] == 0
    assert rmc["status"] == "V" and rmc["mode"] == "N" and rmc["lat"] is None and rmc["sog_kn"] is None
    assert gga["time"] == "150926.73"  # the time still goes out


def test_udp_target():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    out = NmeaOutput(f"udp:127.0.0.1:{rx.getsockname()[1]}", talker="GN")
    out.write(REC)
    got = [parse(rx.recvfrom(4096)[0].decode("ascii")) for _ in range(2)]
    out.close()
    rx.close()
    assert [g["kind"] for g in got] == ["GGA", "RMC"] and got[0]["talker"] == "GN"
    assert got[0]["lat"] == pytest.approx(REC["lat"], abs=1e-6) and out.written == 1 and out.errors == 0


def test_serial_target_through_a_pty():
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    out = NmeaOutput(f"{os.ttyname(slave)}:115200")
    try:
        out.write(REC)
        os.set_blocking(master, False)
        buf = b""
        deadline = time.time() + 5.0
        while buf.count(b"\r\n") < 2 and time.time() < deadline:
            try:
                buf += os.read(master, 4096)
            except BlockingIOError:
                time.sleep(0.02)
        lines = [l + "\r\n" for l in buf.decode("ascii").split("\r\n") if l]
        got = [parse(l) for l in lines]
        assert [g["kind"] for g in got] == ["GGA", "RMC"]
        assert got[1]["lon"] == pytest.approx(REC["lon"], abs=1e-6)
    finally:
        out.close()
        os.close(master)
        os.close(slave)


def test_file_target_and_errors(tmp_path):
    path = tmp_path / "gps.nmea"
    out = NmeaOutput(f"file:{path}")
    out.write(REC)
    out.write({**REC, "accepted": False})
    out.close()
    got = [parse(l + "\r\n") for l in path.read_bytes().decode("ascii").split("\r\n") if l]
    assert [(g["kind"], g.get("quality", g.get("status"))) for g in got] == [("GGA", 1), ("RMC", "A"),
                                                                              ("GGA", 0), ("RMC", "V")]
    if os.path.exists("/dev/full"):
        full = NmeaOutput("file:/dev/full")
        full.write(REC)
        full.close()
        assert full.errors == 1 and full.lost == 1 and full.error_kinds["ENOSPC"] == 1
    for bad in ("tcp:1.2.3.4:5", "udp:host", "/dev/ttyNOPE:9600"):
        with pytest.raises(SkylocError, match="nmea"):
            NmeaOutput(bad)
    with pytest.raises(SkylocError, match="talker"):
        NmeaOutput(f"file:{path}", talker="gps")
