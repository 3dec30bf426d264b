"""skyloc.runtime.sources.base: folders (order, EXIF, bad files), videos (no drops), live sources (latest
frame only, reopen with back-off, interrupt)."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.sources.base import ReconnectPolicy, natural_key, source_kind
from skyloc.runtime.sources.open import open_source

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _write_video(path: Path, n: int, fps: float = 10.0, size: tuple[int, int] = (64, 48)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 4 * i + 10, np.uint8))  # brightness encodes the index
    w.release()
    return path


def _index_of(img: np.ndarray) -> int:
    return int(round((float(img.mean()) - 10) / 4))


def _pil_exif_time(path: Path) -> float:
    """Capture time by an independent reader (Pillow), EXIF clock read as UTC."""
    Image = pytest.importorskip("PIL.Image")
    from datetime import datetime, timezone

    ex = Image.open(path).getexif().get_ifd(0x8769)
    t = datetime.strptime(ex[0x9003], "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    sub = str(ex.get(0x9291, "")).strip()
    return t + (int(sub) / 10 ** len(sub) if sub.isdigit() else 0.0)


def test_real_drone_folder_in_order_with_pil_sizes():
    folder = DATA / "turin-drone"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: real drone photos are not on this machine")
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    want = sorted(p.name for p in folder.iterdir() if p.suffix.upper() == ".JPG")
    frames = []
    for f in open_source(str(folder), fps=2.0):
        frames.append((f.index, f.time_s, f.source_name, f.image.shape, f.error, f.meta))
        if len(frames) <= 2:  # same pixels as PIL's decode (+ EXIF transpose)
            ref = np.asarray(ImageOps.exif_transpose(Image.open(folder / f.source_name)).convert("RGB"))
            assert f.image.shape == ref.shape
            assert np.abs(f.image[:, :, ::-1].astype(int) - ref).mean() < 2.0
    assert [fr[2] for fr in frames] == want
    # numbered by the file name (DJI_0010 -> 10), so a missing photo leaves a gap, not a shift
    assert [fr[0] for fr in frames] == [int(n[4:8]) for n in want]
    # timed by the EXIF capture time, as Pillow reads it
    assert [fr[1] for fr in frames] == pytest.approx([_pil_exif_time(folder / n) for n in want], abs=1e-6)
    assert all(fr[5]["time_from"] == "exif" and fr[5]["exif"]["Make"] == "DJI" for fr in frames)
    assert all(fr[4] is None for fr in frames)


def _jpeg_with_time(path: Path, value: int, when: str | None, subsec: str | None = None,
                    offset: str | None = None, size: tuple[int, int] = (32, 24)) -> None:
    Image = pytest.importorskip("PIL.Image")
    img = Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))
    exif = img.getexif()
    if when is not None:
        sub = {0x9003: when}
        if subsec is not None:
            sub[0x9291] = subsec
        if offset is not None:
            sub[0x9011] = offset
        exif[0x8769] = sub  # Exif sub-IFD
    img.save(path, quality=95, exif=exif.tobytes())


def test_folder_time_from_exif_and_index_from_name(tmp_path):
    from datetime import datetime, timezone

    _jpeg_with_time(tmp_path / "img_0007.jpg", 50, "2024:06:01 10:00:00", "25", "+02:00")
    _jpeg_with_time(tmp_path / "img_0008.jpg", 60, "2024:06:01 10:00:00", "75", "+02:00", size=(40, 30))
    _jpeg_with_time(tmp_path / "img_0010.jpg", 70, None)  # no capture time: cannot be placed on the clock
    frames = list(open_source(str(tmp_path), fps=5.0))
    t0 = datetime(2024, 6, 1, 8, 0, 0, tzinfo=timezone.utc).timestamp()  # 10:00 at +02:00
    assert [f.index for f in frames] == [7, 8, 10]
    assert [f.time_s for f in frames[:2]] == pytest.approx([t0 + 0.25, t0 + 0.75])
    assert [f.unix_s for f in frames[:2]] == pytest.approx([t0 + 0.25, t0 + 0.75])  # offset given: absolute
    assert frames[2].error == "no-time" and frames[2].image is not None
    assert [f.image.shape[:2] for f in frames] == [(24, 32), (30, 40), (24, 32)]  # sizes may change
    assert frames[0].meta["file"] == "img_0007.jpg" and frames[0].meta["exif"]["SubSecTimeOriginal"] == "25"


def test_folder_without_exif_is_timed_by_name_number(tmp_path):
    for i in (1, 2, 4):  # 3 is missing: 4 keeps its number and its time
        cv2.imwrite(str(tmp_path / f"frame_{i:04d}.png"), np.full((8, 8, 3), i, np.uint8))
    frames = list(open_source(str(tmp_path), fps=2.0))
    assert [(f.index, f.time_s) for f in frames] == [(1, 0.5), (2, 1.0), (4, 2.0)]
    assert all(f.meta["time_from"] == "name" and f.unix_s is None for f in frames)
    cv2.imwrite(str(tmp_path / "zz_extra.png"), np.zeros((8, 8, 3), np.uint8))  # no number: positions
    frames = list(open_source(str(tmp_path), fps=2.0))
    assert [(f.index, f.time_s) for f in frames] == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5)]
    assert frames[0].meta["time_from"] == "position"


@pytest.mark.parametrize("fps", [0, -1.0, float("nan"), float("inf")])
def test_bad_fps_is_a_clear_error(tmp_path, fps):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SkylocError, match="--fps"):
        open_source(str(tmp_path), fps=fps)
    video = _write_video(tmp_path / "v.avi", 3)
    with pytest.raises(SkylocError, match="--fps"):
        open_source(str(video), fps=fps)


def test_reconnect_delay_is_capped_and_never_overflows():
    p = ReconnectPolicy()
    for attempt in (1025, 1100, 10**6, 10**18):
        assert p.delay(attempt) == 10.0
    assert [p.delay(k) for k in (0, 1, 2, 3, 5, 6)] == [0.5, 0.5, 1.0, 2.0, 8.0, 10.0]
    big = ReconnectPolicy(initial_s=1.0, factor=1e6, max_s=3600.0)
    assert big.delay(10**6) == 3600.0 and big.delay(2) == 3600.0
    assert ReconnectPolicy(factor=1.0).delay(10**6) == 0.5
    for bad in ({"initial_s": float("nan")}, {"max_s": 0}, {"factor": float("inf")}, {"factor": 0.5},
                {"max_attempts": 0}, {"initial_s": 5.0, "max_s": 1.0}):
        with pytest.raises(SkylocError, match="reconnect"):
            ReconnectPolicy(**bad)


def _corrupt_video(path: Path, n: int, bad: tuple[int, ...]) -> Path:
    """An MJPG AVI whose frames `bad` have their JPEG data overwritten (undecodable)."""
    _write_video(path, n)
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(soi) == n
    for k in bad:
        data[soi[k]:soi[k] + 200] = bytes(range(200))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("reuse", [False, True])
def test_video_skips_undecodable_frames_and_keeps_their_numbers(tmp_path, reuse):
    path = _corrupt_video(tmp_path / "bad.avi", 20, (5, 6, 12))
    src = open_source(str(path), reuse_buffers=reuse)
    got = [(f.index, f.error, None if f.image is None else _index_of(f.image), f.time_s, f.meta["time_from"])
           for f in src]
    src.close()
    assert [g[0] for g in got] == list(range(20))  # the file went on past its bad frames, no trailing errors
    assert [g[0] for g in got if g[1] == "corrupt"] == [5, 6, 12]
    assert all(g[2] == g[0] for g in got if g[1] is None)  # pixels belong to the numbered frame
    assert [g[3] for g in got] == pytest.approx([i / 10.0 for i in range(20)])  # container time (10 fps)
    assert {g[4] for g in got if g[1] is None} == {"container"}
    assert src.bad_frames == 3


def test_video_with_only_bad_frames_ends_at_the_bound(tmp_path):
    path = _corrupt_video(tmp_path / "bad.avi", 8, tuple(range(1, 8)))
    src = open_source(str(path))
    src.max_bad_frames = 3
    got = [(f.index, f.error) for f in src]
    src.close()
    assert got == [(0, None)]  # failures never followed by a good frame are the end, not errors


def test_live_source_reopened_at_another_size_keeps_going(tmp_path):
    path = tmp_path / "live.avi"
    _write_video(path, 30, size=(64, 48))
    other = _write_video(tmp_path / "small.avi", 30, size=(32, 24))
    policy = ReconnectPolicy(initial_s=0.02, max_s=0.05)
    src = open_source(str(path), live=True, reconnect=policy, reuse_buffers=True)
    os.replace(other, path)  # the open capture still reads the first file; the reopen gets the small one
    shapes = []
    for f in src:
        shapes.append(f.image.shape[:2])
        assert f.meta["time_from"] == "clock" and f.unix_s is not None
        if f.image.shape[:2] == (24, 32):
            break
    src.close()
    assert shapes[0] == (48, 64) and shapes[-1] == (24, 32)
    assert src.stats.disconnects >= 1 and src.stats.error is None


def test_exif_orientation_is_applied(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    a = np.zeros((40, 60, 3), np.uint8)
    a[:10, :20] = (255, 0, 0)  # red block top-left in the stored pixels
    for orient in (3, 6, 8):
        img = Image.fromarray(a)
        exif = img.getexif()
        exif[0x0112] = orient
        img.save(tmp_path / f"o{orient}.jpg", quality=95, exif=exif.tobytes())
    frames = list(open_source(str(tmp_path)))
    assert len(frames) == 3
    for f in frames:
        ref = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f.source_name)))
        assert f.image.shape == ref.shape  # 6 and 8 swap width and height
        assert np.abs(f.image[:, :, ::-1].astype(int) - ref).mean() < 3.0


def test_bad_files_are_reported_not_raised(tmp_path):
    good = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a1.png"), good)
    (tmp_path / "a2.jpg").write_bytes(b"")
    jpg = cv2.imencode(".jpg", good)[1].tobytes()
    (tmp_path / "a3.jpg").write_bytes(jpg[:20] + b"\x00" * 50)  # header, then garbage
    cv2.imwrite(str(tmp_path / "a4.png"), good[:, :, 0])  # grayscale
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(open_source(str(tmp_path)))
    assert [f.source_name for f in frames] == ["a1.png", "a2.jpg", "a3.jpg", "a4.png"]
    assert [f.error for f in frames] == [None, "empty", "corrupt", None]
    assert np.array_equal(frames[0].image, good)
    assert frames[3].image.ndim == 2  # kept gray so the loop can skip it as such


def test_natural_order(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.zeros((8, 8, 3), np.uint8))
    assert [f.source_name for f in open_source(str(tmp_path))] == ["frame1.png", "frame2.png", "frame10.png"]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


@pytest.mark.parametrize("reuse", [False, True])
def test_video_file_reads_every_frame_in_order(tmp_path, reuse):
    path = _write_video(tmp_path / "v.avi", 40, fps=8.0)
    src = open_source(str(path), reuse_buffers=reuse)
    seen = []
    for f in src:
        seen.append((f.index, f.time_s, _index_of(f.image)))
        time.sleep(0.002)  # a consumer slower than the reader thread must still get every frame
    src.close()
    assert [s[0] for s in seen] == list(range(40))
    assert [s[2] for s in seen] == list(range(40))
    assert [s[1] for s in seen] == pytest.approx([i / 8.0 for i in range(40)])
    if not reuse:  # without reuse, frames may be kept
        frames = list(open_source(str(path)))
        assert [_index_of(f.image) for f in frames] == list(range(40))


def test_live_source_keeps_latest_and_gives_up_after_bounded_reopens(tmp_path):
    path = shutil.copy(_write_video(tmp_path / "v.avi", 60), tmp_path / "live.avi")
    policy = ReconnectPolicy(initial_s=0.02, factor=2.0, max_s=1.0, max_attempts=3)
    src = open_source(str(path), live=True, reconnect=policy, reuse_buffers=True)
    Path(path).unlink()  # already open; every reopen now fails
    got = []
    for f in src:
        got.append((f.index, _index_of(f.image)))
        time.sleep(0.03)  # slower than the stream: older frames are dropped, never queued
    src.close()
    st = src.stats
    assert [i for i, _ in got] == list(range(len(got)))
    contents = [c for _, c in got]
    assert contents == sorted(contents) and len(set(contents)) == len(contents)  # only ever newer
    assert st.grabbed == 60 and st.disconnects == 1
    assert st.frames == len(got) and st.frames + st.dropped <= st.grabbed
    assert st.reopens == 3 and st.reopen_failures == 3
    assert st.backoff_s == pytest.approx([0.02, 0.04, 0.08])


def test_network_stream_that_never_opens_backs_off_and_gives_up():
    policy = ReconnectPolicy(initial_s=0.01, factor=3.0, max_s=0.05, max_attempts=4, open_timeout_s=2.0)
    src = open_source("rtsp://127.0.0.1:9/none", reconnect=policy)
    assert list(src) == []
    src.close()
    assert src.stats.reopens == 4 and src.stats.reopen_failures == 4 and src.stats.frames == 0
    assert src.stats.backoff_s == pytest.approx([0.01, 0.03, 0.05, 0.05])  # capped at max_s


def test_interrupt_ends_a_waiting_live_source():
    src = open_source("rtsp://127.0.0.1:9/none", reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.05))
    out: list = []
    t = threading.Thread(target=lambda: out.extend(src))
    t.start()
    time.sleep(0.3)
    src.interrupt()
    t.join(timeout=5.0)
    assert not t.is_alive() and out == []
    src.close()
    assert src.stats.reopens >= 1


def test_source_kinds_and_errors(tmp_path):
    assert source_kind("0") == "camera"
    assert source_kind("/dev/video0") == "v4l2"
    assert source_kind("rtsp://10.0.0.5:8554/cam") == "network"
    assert source_kind("nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! appsink") == "gstreamer"
    assert source_kind(str(tmp_path)) == "folder"
    with pytest.raises(SkylocError, match="not found"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SkylocError, match="no images"):
        open_source(str(tmp_path))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(SkylocError, match="cannot be opened"):
        open_source(str(tmp_path / "junk.mp4"))


def test_gstreamer_without_gstreamer_is_a_clear_error():
    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer; the refusal path cannot be shown")
    with pytest.raises(SkylocError, match="GStreamer"):
        open_source("videotestsrc ! videoconvert ! appsink")
