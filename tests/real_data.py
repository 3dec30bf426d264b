"""The real imagery in ../shared/data the tests read (never copied into the repo): where it is, and
its maps opened once per test session; a test skips with the reason when it is absent."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TURKU = DATA / "turku-satellite"
AERO = DATA / "aerovloc"


def open_real_map(path: Path) -> Any:
    """The map at `path` (decoded once for the session), or a skip naming what is missing."""
    if not path.exists():
        pytest.skip(f"real imagery {path} is not present (../shared/data)")
    return _open_cached(str(path))


@functools.lru_cache(maxsize=None)
def _open_cached(path: str) -> Any:
    from skyloc.runtime.maps.open import open_map

    return open_map(path)


def real_crop(path: Path, y: int, x: int, h: int, w: int) -> Any:
    """An RGB crop of the real image at `path` (a copy), or a skip naming what is missing."""
    import cv2

    if not path.is_file():
        pytest.skip(f"real imagery {path} is not present (../shared/data)")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)[y:y + h, x:x + w].copy()
