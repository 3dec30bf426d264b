"""Which registrar the run path registers with (runtime/localize/map_match.py): the learned one on
stored map features by default when the tile set carries them, `--registrar` still picks, the
recorded matcher must be there, and the whole map is matched only when it is small enough."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.backends import open_backend
from skyloc.runtime.localize.localizer import Localizer, LocalizerOptions
from skyloc.runtime.localize.map_match import whole_map_window
from skyloc.runtime.maps.imagery import MapImagery
from skyloc.runtime.maps.tileset import TileSet

from runtime_core_helpers import make_map, make_tiny_model


@pytest.fixture(scope="module")
def case(xfeat_onnx, tmp_path_factory) -> dict:
    from skyloc.cli import main as skyloc

    d = tmp_path_factory.mktemp("mapmatch")
    src = make_map(d / "src", width_px=600, height_px=500, m_per_px=0.5, seed=4)
    model = make_tiny_model(d / "tiny.onnx", size=32, dim=16)
    matcher = d / "m" / "xfeat.onnx"
    matcher.parent.mkdir()
    shutil.copy(xfeat_onnx, matcher)
    shutil.copy(Path(xfeat_onnx).with_suffix(".json"), matcher.with_suffix(".json"))
    base = ["tiles", "--model", str(model), "--map", str(src), "--tile-m", "100", "--stride-m", "50", "--no-progress"]
    assert skyloc(base + ["--out", str(d / "feat.npz"), "--matcher", str(matcher)]) == 0
    assert skyloc(base + ["--out", str(d / "plain.npz")]) == 0
    return {"dir": d, "model": model, "matcher": matcher, "feat": d / "feat.npz", "plain": d / "plain.npz"}


def _localizer(case: dict, tiles: str, **opt) -> Localizer:
    ts = TileSet.load(case[tiles])
    return Localizer(open_backend(case["model"]), ts, LocalizerOptions(**opt), imagery=MapImagery.for_tileset(ts.path, ts.meta))


def test_auto_is_the_learned_registrar_on_stored_features(case):
    loc = _localizer(case, "feat")
    assert type(loc.registrar).__name__ == "LearnedRegistrar" and loc.registrar.name == "xfeat"
    assert loc.map_features is not None and loc.map_features.fingerprint == loc.registrar.extractor.fingerprint
    assert loc.register_px == 200  # the 100 m tile at the stored 0.5 m/px, not the NCC template's 160 px
    plain = _localizer(case, "plain")
    assert type(plain.registrar).__name__ == "NccRegistrar" and plain.map_features is None
    assert plain.register_px == LocalizerOptions().register_px


def test_registrar_flag_still_picks(case):
    ncc = _localizer(case, "feat", registrar="ncc")
    assert type(ncc.registrar).__name__ == "NccRegistrar" and ncc.map_features is None
    with pytest.raises(SkylocError, match="--matcher"):
        _localizer(case, "plain", registrar="xfeat")  # no matcher recorded, none given
    onfly = _localizer(case, "plain", registrar="xfeat", matcher=str(case["matcher"]))
    assert onfly.registrar.name == "xfeat" and onfly.map_features is None  # extracts map crops on the fly


def test_a_missing_recorded_matcher_is_a_clear_error(case, tmp_path):
    folder = case["matcher"].parent
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)  # the matcher and its sidecar
    try:
        with pytest.raises(SkylocError, match="--matcher"):
            _localizer(case, "feat")
        assert _localizer(case, "feat", matcher=str(moved / case["matcher"].name)).map_features is not None
    finally:
        shutil.move(moved, folder)


def test_whole_map_only_when_small_enough(case):
    loc = _localizer(case, "feat")
    area = loc.map_features.area_km2
    assert 0.06 < area < 0.08  # 300 m x 250 m
    lat, lon, he, hn = whole_map_window(loc)
    assert he == pytest.approx(151.0, abs=0.5) and hn == pytest.approx(126.0, abs=0.5)
    assert whole_map_window(_localizer(case, "feat", whole_map_km2=0.0)) is None
    assert whole_map_window(_localizer(case, "feat", whole_map_km2=0.05)) is None
    assert whole_map_window(_localizer(case, "plain")) is None  # no stored features: never


def test_a_nadir_patch_larger_than_the_frame_keeps_its_scale_and_marks_the_rest_invalid():
    """The learned registrar's patch spans up to two tile sides: past the frame's short side the
    square is padded (invalid), never squeezed; inside, it equals the plain crop-and-resize."""
    import cv2
    import numpy as np

    from skyloc.runtime.localize.nadir import nadir_patch

    rng = np.random.default_rng(0)
    frame = cv2.resize(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC)
    plain = nadir_patch(frame, 150, 2.0, None, 300)  # the short side: all valid
    padded = nadir_patch(frame, 300, 2.0, None, 600)  # twice the short side at the same scale
    assert plain.valid.all() and padded.mpp == plain.mpp == 2.0
    assert np.array_equal(padded.image[75:225, 75:225], plain.image)  # same pixels, same place
    rows, cols = np.flatnonzero(padded.valid.any(axis=1)), np.flatnonzero(padded.valid.any(axis=0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (75, 224, 50, 249)  # 300 x 400 px at k = 0.5
    assert (padded.image[~padded.valid] == 0).all()


def test_skyloc_run_refuses_a_changed_store_before_any_output(case, tmp_path):
    import cv2
    import numpy as np

    from skyloc.cli import main as skyloc

    d = tmp_path / "set"
    d.mkdir()
    for name in ("feat.npz", "feat.features.npz", "feat.imagery"):
        src = case["dir"] / name
        if src.is_dir():
            shutil.copytree(src, d / name)
        elif src.exists():
            shutil.copy(src, d / name)
    store = d / "feat.features.npz"
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "f0.png"), np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    out = tmp_path / "fixes.jsonl"
    rc = skyloc(["run", "--model", str(case["model"]), "--tiles", str(d / "feat.npz"), "--source", str(frames),
                 "--gsd", "0.5", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert skyloc(["run", "--model", str(case["model"]), "--tiles", str(d / "feat.npz"), "--source", str(frames),
                   "--gsd", "0.5", "--out", str(out), "--registrar", "ncc"]) == 0  # the way out the error names


def test_patch_pad_follows_the_heading_mode_and_the_pixel_cap():
    from skyloc.runtime.localize.map_match import LEARNED_MAX_SIDE_PX, patch_pad_for

    store = object()  # any map-feature store: only its presence matters
    assert patch_pad_for(None, 160) == 1.0 and patch_pad_for(None, 160, True) == 1.0  # NCC: one tile
    assert patch_pad_for(store, 160) == 2.5  # heading unknown: the frame's long side too
    assert patch_pad_for(store, 160, heading_known=True) == 2.0  # north-up: extraction cost
    assert patch_pad_for(store, 512) == LEARNED_MAX_SIDE_PX / 512  # capped at 768 px a side
    assert patch_pad_for(store, 2000) == 1.0
