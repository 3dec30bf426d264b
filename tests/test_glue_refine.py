"""The learned registrar with a glue (`--xfeat-glue`): mutual nearest neighbours find and verify the
place, the glue refines the geometry there. Real imagery: the aerovloc photo against its
other-season map, and real wrong places; the gate's numbers must be the same with and without it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.rectify import GroundPatch
from skyloc.runtime.register.registry import make_registrar
from real_data import AERO, TURKU, open_real_map
from test_learned_registrar import _aerovloc_photo, _centre, appearance


@pytest.fixture(scope="module")
def regs(xfeat_onnx: Path, glue_onnx):
    glue = glue_onnx("xfeat-lighterglue")
    return make_registrar("xfeat", onnx=str(xfeat_onnx)), make_registrar("xfeat", onnx=str(xfeat_onnx), glue=str(glue))


@pytest.mark.parametrize("off", [(-110.0, 60.0), (40.0, -30.0)])
def test_glue_refines_the_real_photo_and_keeps_the_gate(regs, off):
    plain, glued = regs
    gmap = open_real_map(AERO / "map")
    patch, lat, lon = _aerovloc_photo()
    clat, clon = geo.offset_latlon(lat, lon, *off)
    mrgb, mvalid = gmap.read_crop(clat, clon, 600.0, round(600.0 / 0.338))

    def err(r):
        glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m)
        return float(geo.haversine_m(glat, glon, lat, lon))

    a = plain.register(patch, mrgb, 600.0 / mrgb.shape[1], None, 3.0, 0.03, map_valid=mvalid)
    b = glued.register(patch, mrgb, 600.0 / mrgb.shape[1], None, 3.0, 0.03, map_valid=mvalid)
    assert a.verified and b.verified, (a, b)
    # the gate's numbers are the mutual-NN fit's either way; only the geometry is refined
    assert (a.inliers, a.second, a.matches) == (b.inliers, b.second, b.matches)
    assert err(b) < 0.5 and err(b) < err(a) + 0.1, (err(a), err(b))  # measured 0.67 -> 0.27, 1.08 -> 0.17 m
    assert abs((b.heading_deg + 180) % 360 - 180) < 2.0 and b.accuracy_m >= 2.0
    # past the deadline the one hypothesis still runs, but the refinement is not started
    late = glued.register(patch, mrgb, 600.0 / mrgb.shape[1], None, 3.0, 0.03, map_valid=mvalid,
                          deadline=time.monotonic())
    assert late.verified and (late.east_m, late.north_m) == (a.east_m, a.north_m), (late, a)


def test_glue_never_verifies_a_wrong_place(regs):
    _, glued = regs
    for where, (de, dn) in (("turku", (250.0, 200.0)), ("aerovloc", (330.0, 0.0))):
        gmap = open_real_map({"turku": TURKU, "aerovloc": AERO / "map"}[where])
        lat0, lon0 = _centre(gmap)
        img, valid = gmap.read_crop(lat0, lon0, 150.0, 300, yaw_deg=40.0)
        patch = GroundPatch(appearance(img, 1), valid, 0.5, 0.0, (0.0, 0.0))
        clat, clon = geo.offset_latlon(lat0, lon0, de, dn)
        mrgb, mvalid = gmap.read_crop(clat, clon, 300.0, 600)
        r = glued.register(patch, mrgb, 0.5, 40.0, 5.0, 0.05, map_valid=mvalid)
        assert not r.verified and r.accuracy_m == float("inf"), (where, r)


def test_glue_of_another_kind_is_refused(disk_onnx: Path, glue_onnx):
    with pytest.raises(SkylocError, match="xfeat-lighterglue matcher .* disk features"):
        make_registrar("learned", onnx=str(disk_onnx), glue=str(glue_onnx("xfeat-lighterglue")))
