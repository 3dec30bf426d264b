"""skyloc.core.preprocess against hand-written references (slicing + cv2, block means)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from skyloc.core.preprocess import check_frame, to_model_input
from skyloc.core.sidecar import IMAGENET_MEAN, IMAGENET_STD, InputContract


def naive(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    sq = frame[top:top + s, left:left + s].copy()
    out = cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA)
    return out[:, :, ::-1]  # BGR -> RGB


@pytest.mark.parametrize("shape", [(120, 200, 3), (201, 97, 3), (64, 64, 3), (31, 45, 3)])
def test_crop_resize_equals_naive_reference(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3)]
    batch = to_model_input(frames, InputContract(height=32, width=32))
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    for f, got in zip(frames, batch):
        np.testing.assert_array_equal(got, naive(f, 32))


def test_integer_downscale_is_block_mean() -> None:
    # A 96x160 frame: centre crop columns 32..127, then 3x3 blocks averaged (INTER_AREA).
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    got = to_model_input([frame], InputContract(height=32, width=32), bgr=False)[0]
    crop = frame[:, 32:128].astype(np.float64)
    ref = crop.reshape(32, 3, 32, 3, 3).mean(axis=(1, 3))
    assert np.abs(got.astype(np.float64) - ref).max() <= 0.5 + 1e-9


def test_bgr_to_rgb_and_alpha() -> None:
    frame = np.zeros((40, 40, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    c = InputContract(height=16, width=16)
    assert to_model_input([frame], c, bgr=True)[0, 5, 5].tolist() == [30, 20, 10]
    assert to_model_input([frame], c, bgr=False)[0, 5, 5].tolist() == [10, 20, 30]
    rgba = np.dstack([frame, np.full((40, 40), 7, np.uint8)])
    assert to_model_input([rgba], c, bgr=True)[0, 0, 0].tolist() == [30, 20, 10]


def test_declared_normalization_nchw() -> None:
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    c = InputContract(height=25, width=25, normalization="declared", dtype="float32", layout="NCHW")
    got = to_model_input([frame], c, bgr=False)
    assert got.shape == (1, 3, 25, 25) and got.dtype == np.float32
    small = cv2.resize(frame, (25, 25), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0
    ref = ((small - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(got[0], ref, atol=1e-5)


@pytest.mark.parametrize("frame, reason", [
    (None, "corrupt"),
    ("not an image", "corrupt"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((48, 64), np.uint8), "grayscale"),
    (np.zeros((48, 64, 1), np.uint8), "grayscale"),
    (np.zeros((48, 64, 2), np.uint8), "corrupt"),
    (np.zeros((4, 4, 3), np.uint8), "too-small"),
    (np.zeros((48, 64, 3), np.int16), "dtype"),
    (np.full((48, 64, 3), np.nan, np.float32), "nan"),
    (np.zeros((48, 64, 3), np.uint8), None),
    (np.zeros((48, 64, 4), np.uint8), None),
])
def test_check_frame_reasons(frame: object, reason: str | None) -> None:
    assert check_frame(frame) == reason


def test_rejects_grayscale_in_batch() -> None:
    with pytest.raises(ValueError):
        to_model_input([np.zeros((40, 40), np.uint8)], InputContract(height=16, width=16))


def test_one_contract_for_files_frames_and_training(tmp_path) -> None:
    """read_image + prepare_image (training / eval / calibration) and a BGR camera frame through
    to_model_input (runtime) give the same bytes, equal to the slicing + cv2 reference."""
    from skyloc.core.preprocess import prepare_image, read_image
    from skyloc.training.data import eval_transform

    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    c = InputContract(height=48, width=48)
    ref = naive(rgb[:, :, ::-1], 48)  # the naive reference takes BGR and returns RGB
    np.testing.assert_array_equal(read_image(path), rgb)
    np.testing.assert_array_equal(prepare_image(read_image(path), c, bgr=False), ref)
    np.testing.assert_array_equal(prepare_image(rgb, c, bgr=False), ref)
    np.testing.assert_array_equal(to_model_input([cv2.imread(str(path))], c)[0], ref)
    # The eval transform is that contract followed by ImageNet normalisation, nothing else.
    x = eval_transform(48)(read_image(path)).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(x, (ref / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), atol=1e-5)


def test_unknown_resize_contract_is_refused(tmp_path) -> None:
    from skyloc.core.errors import SkylocError
    from skyloc.core.preprocess import read_image

    with pytest.raises(SkylocError, match="bicubic"):
        to_model_input([np.zeros((20, 20, 3), np.uint8)], InputContract(height=8, width=8, resize="squash+bicubic"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SkylocError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(SkylocError, match="not found"):
        read_image(tmp_path / "missing.png")
