"""skyloc.runtime.sources: folders (order, EXIF, bad files), videos (no drops), live sources (latest
frame only, reopen with back-off, interrupt)."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sources import ReconnectPolicy, natural_key, open_source, source_kind

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


def test_real_drone_folder_in_order_with_pil_sizes():
    folder = DATA / "turin-drone"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: real drone photos are not on this machine")
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    want = sorted(p.name for p in folder.iterdir() if p.suffix.upper() == ".JPG")
    frames = []
    for f in open_source(str(folder), fps=2.0):
        frames.append((f.index, f.time_s, f.source_name, f.image.shape, f.error))
        if f.index < 2:  # same pixels as PIL's decode (+ EXIF transpose)
            ref = np.asarray(ImageOps.exif_transpose(Image.open(folder / f.source_name)).convert("RGB"))
            assert f.image.shape == ref.shape
            assert np.abs(f.image[:, :, ::-1].astype(int) - ref).mean() < 2.0
    assert [n for _, _, n, _, _ in frames] == want
    assert [i for i, *_ in frames] == list(range(len(want)))
    assert [t for _, t, *_ in frames] == pytest.approx([i / 2.0 for i in range(len(want))])
    assert all(e is None for *_, e in frames)


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
