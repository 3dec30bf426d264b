"""skyloc.training.data: University-1652 folder layout, paired sampler, transforms, image reading."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from skyloc.core.errors import SkylocError
from skyloc.training.config import preset
from skyloc.training.data import (IMAGE_EXTS, PairedTrainSet, U1652Folder, distance_groups, eval_transform, read_rgb,
                           spiral_index, train_transform)

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TRAIN_LOCS = ["0003", "0010", "0022"]
COLOURS = {"0003": (200, 30, 30), "0010": (30, 200, 30), "0022": (30, 30, 200), "0100": (200, 200, 40),
           "0101": (40, 200, 200), "0900": (120, 120, 120)}
EXTS = [".jpg", ".jpeg", ".png"]


def _write(path: Path, colour, rng, size=(40, 52)) -> None:
    """A flat colour with mild noise, so a location can be recognised after augmentation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.clip(np.array(colour)[None, None] + rng.integers(-8, 9, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=95)


def make_tree(root: Path, drones: int = 4) -> dict[str, list[str]]:
    """University-1652 layout with colour-coded locations; returns {view folder: expected files}."""
    rng = np.random.default_rng(0)
    expected: dict[str, list[str]] = {}
    for view in ("drone", "satellite", "street", "google"):
        for loc in TRAIN_LOCS:
            n = 1 if view == "satellite" else drones
            for i in range(n):
                name = f"image-{i + 1:02d}{EXTS[i % 3]}" if view != "satellite" else f"{loc}.jpg"
                _write(root / "train" / view / loc / name, COLOURS[loc], rng)
                expected.setdefault(view, []).append(f"{loc}/{name}")
        (root / "train" / view / TRAIN_LOCS[0] / "notes.txt").write_text("not an image")
    for view, locs, n in (("query_drone", ["0100", "0101"], 6), ("gallery_drone", ["0100", "0101"], 6),
                          ("query_satellite", ["0100", "0101"], 1), ("gallery_satellite", ["0100", "0101", "0900"], 1)):
        for loc in locs:
            for i in range(n):
                name = f"image-{i + 1:02d}.jpeg" if "drone" in view else f"{loc}.png"
                _write(root / "test" / view / loc / name, COLOURS[loc], rng)
                expected.setdefault(view, []).append(f"{loc}/{name}")
    return expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("u1652")
    return root, make_tree(root)


def _unnormalise_mean(x: torch.Tensor) -> np.ndarray:
    """Mean RGB (0..255) of a normalised CHW tensor."""
    return (x.numpy().reshape(3, -1).mean(1) * STD + MEAN) * 255


def test_folder_reads_every_view_of_the_layout(tree):
    root, expected = tree
    for split, views in (("train", ("drone", "satellite", "street", "google")),
                         ("test", ("query_drone", "gallery_satellite", "query_satellite", "gallery_drone"))):
        for view in views:
            ds = U1652Folder(root / split, view)
            got = [f"{loc}/{p.name}" for p, loc in ds.samples]
            assert got == sorted(expected[view]), view  # zero-padded names: natural = plain order
            assert all(p.suffix.lower() in IMAGE_EXTS for p, _ in ds.samples)
            assert ds.classes == sorted({e.split("/")[0] for e in expected[view]})
            for i in (0, len(ds) - 1):
                x, label = ds[i]
                loc = ds.samples[i][1]
                assert ds.classes[label] == loc and ds.class_to_idx[loc] == label
                assert x.shape == (3, 40, 52) and x.dtype == torch.float32
                # Without a transform: RGB in [0, 1]; the mean is the location's colour.
                assert np.allclose(x.numpy().reshape(3, -1).mean(1) * 255, COLOURS[loc], atol=4)


def test_natural_order_keeps_the_spiral(tmp_path):
    rng = np.random.default_rng(3)
    names = ["image-10.jpeg", "image-2.jpeg", "image-1.jpeg", "image-9.png"]
    for n in names:
        _write(tmp_path / "query_drone" / "7" / n, (10, 20, 30), rng, size=(8, 8))
    _write(tmp_path / "query_drone" / "10" / "a.jpg", (10, 20, 30), rng, size=(8, 8))
    ds = U1652Folder(tmp_path, "query_drone")
    assert [p.name for p, _ in ds.samples] == ["image-1.jpeg", "image-2.jpeg", "image-9.png", "image-10.jpeg", "a.jpg"]
    assert ds.classes == ["7", "10"]


def test_missing_or_empty_folder_says_the_layout(tmp_path):
    with pytest.raises(SkylocError, match="University-1652 layout"):
        U1652Folder(tmp_path, "query_drone")
    (tmp_path / "query_drone" / "0001").mkdir(parents=True)
    with pytest.raises(SkylocError, match="no images"):
        U1652Folder(tmp_path, "query_drone")
    with pytest.raises(SkylocError, match="train/satellite"):
        PairedTrainSet(tmp_path, 32, preset("tiny")[1])


def test_paired_sampler_gives_same_location_pairs(tree):
    root, _ = tree
    _, tcfg = preset("tiny", drones_per_location=3, sat_rotation=0.0)
    ds = PairedTrainSet(root, 32, tcfg)
    assert ds.classes == TRAIN_LOCS and ds.num_classes == 3 and len(ds) == 9
    torch.manual_seed(0)
    seen_drones = set()
    for i in range(len(ds)):
        sat, drone, label = ds[i]
        assert sat.shape == drone.shape == (3, 32, 32)
        loc = ds.classes[label]
        assert label == i % 3
        # Independent of the sampler's bookkeeping: the pixels show the labelled location.
        assert np.allclose(_unnormalise_mean(sat), COLOURS[loc], atol=6)
        assert np.allclose(_unnormalise_mean(drone), COLOURS[loc], atol=6)
    for _ in range(40):
        s, d, label = ds.pair(1)
        assert s.parent.name == d.parent.name == ds.classes[label] == TRAIN_LOCS[1]
        assert s.parent.parent.name == "satellite" and d.parent.parent.name == "drone"
        seen_drones.add(d.name)
    assert len(seen_drones) == 4  # the drone image is drawn at random among the location's 4


def test_paired_sampler_is_reproducible_with_a_seed(tree):
    root, _ = tree
    ds = PairedTrainSet(root, 32, preset("tiny", drones_per_location=4)[1])
    torch.manual_seed(123)
    a = [ds.pair(i)[1] for i in range(len(ds))]
    xa = ds[0]
    torch.manual_seed(123)
    b = [ds.pair(i)[1] for i in range(len(ds))]
    xb = ds[0]
    assert a == b
    assert torch.equal(xa[0], xb[0]) and torch.equal(xa[1], xb[1])


def test_location_mismatch_between_views_is_reported(tmp_path):
    rng = np.random.default_rng(4)
    _write(tmp_path / "train" / "satellite" / "0001" / "0001.jpg", (1, 2, 3), rng)
    _write(tmp_path / "train" / "drone" / "0002" / "image-01.jpeg", (1, 2, 3), rng)
    with pytest.raises(SkylocError, match="satellite-only \\['0001'\\].*drone-only \\['0002'\\]"):
        PairedTrainSet(tmp_path, 32, preset("tiny")[1])


def test_unreadable_image_names_its_path(tree, tmp_path):
    bad = tmp_path / "gallery_satellite" / "0001" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    trunc = tmp_path / "gallery_satellite" / "0001" / "truncated.png"
    buf = tmp_path / "full.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(buf)
    trunc.write_bytes(buf.read_bytes()[:60])
    ds = U1652Folder(tmp_path, "gallery_satellite")
    for i, path in enumerate([bad, trunc]):
        assert ds.samples[i][0] == path
        with pytest.raises(SkylocError) as exc:
            ds[i]
        assert str(path) in str(exc.value)
    with pytest.raises(SkylocError, match="not found"):
        read_rgb(tmp_path / "nope.png")
    # A JPEG cut short decodes to a grey-filled picture in most decoders: refused instead.
    jpg = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) * 2 // 3])
    assert read_rgb(jpg).shape == (64, 64, 3)
    with pytest.raises(SkylocError, match="cut.jpg"):
        read_rgb(cut)


def test_read_rgb_matches_opencv_and_honours_exif(tmp_path):
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 255, (30, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = read_rgb(tmp_path / "a.png")
    ref = cv2.cvtColor(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert got.dtype == np.uint8 and got.shape == (30, 50, 3)
    assert np.array_equal(got, ref) and np.array_equal(got, rgba[..., :3])
    # EXIF orientation 6 = "rotate 90 CW to display": the stored 30x50 picture reads as 50x30.
    smooth = np.zeros((30, 50, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 50)[None, :]
    smooth[..., 1] = np.linspace(0, 255, 30)[:, None]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth).save(tmp_path / "r.jpg", exif=exif, quality=95)
    got = read_rgb(tmp_path / "r.jpg")
    ref = cv2.cvtColor(cv2.imread(str(tmp_path / "r.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert got.shape == ref.shape == (50, 30, 3)
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3
    assert np.abs(got.astype(int) - np.rot90(smooth, k=-1).astype(int)).mean() < 4  # 90 deg clockwise


def test_read_rgb_real_imagery():
    sat = SHARED / "turku-satellite" / "sat_map_00.png"
    drone = SHARED / "turin-drone" / "DJI_0010.JPG"
    if not sat.is_file() or not drone.is_file():
        pytest.skip("../shared/data not found: real-imagery check needs the shared data folder")
    got = read_rgb(sat)  # RGBA tile -> RGB
    ref = cv2.cvtColor(cv2.imread(str(sat), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert got.shape == ref.shape and got.shape[2] == 3 and np.array_equal(got, ref)
    got = read_rgb(drone)
    ref = cv2.cvtColor(cv2.imread(str(drone), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert got.shape == ref.shape
    assert np.abs(got.astype(np.int16) - ref.astype(np.int16)).mean() < 3  # two JPEG decoders


def test_eval_transform_shift_right_reference():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # already at the eval size: no resize
    x0 = eval_transform(64)(img).numpy()
    x10 = eval_transform(64, shift_px=10)(img).numpy()
    unnorm = lambda x: (x.transpose(1, 2, 0) * STD + MEAN) * 255  # noqa: E731
    assert np.allclose(unnorm(x0), img, atol=1e-3)
    # Reference: the picture moves right by 10 px, the left column repeats into the gap.
    ref = np.concatenate([np.repeat(img[:, :1], 10, axis=1), img[:, :54]], axis=1)
    assert np.allclose(unnorm(x10), ref, atol=1e-3)


def test_train_transform_shapes_and_randomness():
    rng = np.random.default_rng(7)
    pil = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)  # transforms take the decoded RGB array
    for sat in (False, True):
        tf = train_transform(48, pad=10, satellite=sat, rotation=90.0)
        assert any(type(t).__name__ == "RandomAffine" for t in tf.transforms) == sat
        torch.manual_seed(0)
        a = tf(pil)
        b = tf(pil)
        torch.manual_seed(0)
        c = tf(pil)
        assert a.shape == (3, 48, 48)
        assert not torch.equal(a, b) and torch.equal(a, c)  # random crop/flip from torch's RNG
    assert not any(type(t).__name__ == "RandomAffine" for t in train_transform(48, 10, True, 0.0).transforms)


def test_distance_groups_by_spiral_thirds():
    labels = ["a"] * 6 + ["b"] * 4 + ["c"] * 54
    pos, count = spiral_index(labels)
    assert list(pos[:10]) == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3] and list(count[:10]) == [6] * 6 + [4] * 4
    groups = distance_groups(labels)
    # Reference: fraction of the spiral already flown before this image, in thirds.
    def ref(p, n):
        f = Fraction(int(p), int(n))
        return "long" if f < Fraction(1, 3) else ("middle" if f < Fraction(2, 3) else "short")
    assert list(groups) == [ref(p, n) for p, n in zip(pos, count)]
    assert list(groups[:6]) == ["long", "long", "middle", "middle", "short", "short"]
    assert list(groups[6:10]) == ["long", "long", "middle", "short"]
    assert list(groups[10:]).count("long") == list(groups[10:]).count("short") == 18
