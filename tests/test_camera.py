"""skyloc.runtime.pose.camera: CameraModel validation, resolution scaling and the camera-file readers."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from skyloc.runtime.pose.camera import CameraModel, load_camera
from skyloc.core.errors import SkylocError


def test_from_hfov_matches_the_field_of_view():
    cam = CameraModel.from_hfov(60.0, 640, 480)
    assert cam.fx == cam.fy == pytest.approx(320 / math.tan(math.radians(30)))
    assert (cam.cx, cam.cy) == (319.5, 239.5)
    assert cam.hfov_deg == pytest.approx(60.0)
    assert np.allclose(cam.K(), [[cam.fx, 0, 319.5], [0, cam.fy, 239.5], [0, 0, 1]])
    with pytest.raises(SkylocError, match="hfov"):
        CameraModel.from_hfov(float("nan"), 640, 480)


def test_scaled_to_keeps_the_rays():
    """A point seen at pixel p of the full frame is seen at the matching place of the half frame."""
    cam = CameraModel(800.0, 810.0, 330.0, 250.0, 640, 480)
    half = cam.scaled_to(320, 240)
    # ray through the full frame's pixel centre (0, 0) covers [-0.5, 0.5]; half-frame pixel (0,0) covers 2x2
    x, y = (-0.5 - cam.cx) / cam.fx, (-0.5 - cam.cy) / cam.fy  # top-left image corner ray
    assert (half.fx * x + half.cx, half.fy * y + half.cy) == pytest.approx((-0.5, -0.5))
    assert cam.scaled_to(640, 480) is cam
    with pytest.raises(SkylocError, match="aspect"):
        cam.scaled_to(320, 320)


@pytest.mark.parametrize("bad", [dict(fx=float("nan")), dict(fx=-1.0), dict(width=1), dict(cy=float("inf")),
                                 dict(dist=(0.1, 0.2, 0.3)), dict(dist=(0.1, float("nan"), 0, 0))])
def test_rejects_bad_values(bad):
    kw = dict(fx=500.0, fy=500.0, cx=160.0, cy=120.0, width=320, height=240) | bad
    with pytest.raises(SkylocError):
        CameraModel(**kw)


def test_json_camera_file(tmp_path):
    p = tmp_path / "cam.json"
    p.write_text(json.dumps({"fx": 900, "fy": 905.5, "cx": 640.2, "cy": 359.1, "width": 1280, "height": 720,
                             "dist": [-0.1, 0.02, 0.0, 0.0, 0.001]}))
    cam = load_camera(p)
    assert cam == CameraModel(900.0, 905.5, 640.2, 359.1, 1280, 720, (-0.1, 0.02, 0.0, 0.0, 0.001))
    p.write_text(json.dumps({"fx": 900, "fy": 905.5, "cx": 640.2, "width": 1280, "height": 720}))
    with pytest.raises(SkylocError, match=str(p.name)):
        load_camera(p)
    p.write_text("{not json")
    with pytest.raises(SkylocError, match="invalid JSON"):
        load_camera(p)


@pytest.mark.parametrize("ext", ["yaml", "xml"])
def test_opencv_calibration_file_written_by_filestorage(tmp_path, ext):
    K = np.array([[1000.0, 0, 955.0], [0, 1002.0, 540.5], [0, 0, 1]])
    D = np.array([[-0.21, 0.05, 0.0007, -0.0003, -0.004]])
    p = tmp_path / f"calib.{ext}"
    fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 1920)
    fs.write("image_height", 1080)
    fs.write("camera_matrix", K)
    fs.write("distortion_coefficients", D)
    fs.release()
    cam = load_camera(p)
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (1000.0, 1002.0, 955.0, 540.5, 1920, 1080)
    assert cam.dist == pytest.approx(tuple(D.ravel()))


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(SkylocError, match="cannot be read"):
        load_camera(tmp_path / "nope.json")
    p = tmp_path / "x.txt"
    p.write_text("hello")
    with pytest.raises(SkylocError, match="neither JSON"):
        load_camera(p)


def test_flight_json_from_synth_flight(tmp_path):
    """The flight.json `skyloc synth flight` writes is a camera file (its 'camera' block)."""
    from skyloc.synth.flight import FlightConfig, make_flight

    cfg = FlightConfig(seconds=0.3, fps=10, width=64, height=48, fov_deg=50.0, altitude_m=60.0,
                       world_size_m=400.0, world_mpp=2.0)
    video = make_flight(None, tmp_path / "f", cfg)
    cam = load_camera(video.with_name("flight.json"))
    assert cam == CameraModel.from_hfov(50.0, 64, 48)
