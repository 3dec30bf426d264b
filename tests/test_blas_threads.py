"""The localizer caps BLAS threads itself (threadpoolctl), so the demo and Python callers that never
pass through `skyloc run`'s environment setting get the fast tile search too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from threadpoolctl import threadpool_info
from runtime_core_helpers import make_map, make_tiny_model
from pathlib import Path
from skyloc.runtime.backends import open_backend
from skyloc.runtime.localize.localizer import Localizer, LocalizerOptions
from skyloc.runtime.maps.tileset import TileSet
from skyloc.runtime.maps.tileset_build import build_tileset

def blas():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

d = Path(sys.argv[2])
png = make_map(d / "map", width_px=200, height_px=200)
model = make_tiny_model(d / "tiny.onnx", size=32, dim=16)
tiles = TileSet.load(build_tileset(model, png, d / "tiles.npz", tile_m=50, stride_m=40, progress=False))
be = open_backend(model, "onnxruntime")
before = blas()
Localizer(be, tiles, LocalizerOptions(blas_threads=0))
untouched = blas()
loc = Localizer(be, tiles, LocalizerOptions())
capped = blas()
loc.blas_limit.restore_original_limits()
print(json.dumps({"before": before, "untouched": untouched, "capped": capped, "restored": blas()}))
"""


def test_localizer_caps_blas_threads(tmp_path: Path) -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "tests"), str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if not out["before"]:
        pytest.skip("numpy loaded no BLAS library threadpoolctl can see")
    assert out["before"] == [2] and out["untouched"] == [2]  # blas_threads=0 leaves the process alone
    assert out["capped"] == [1] and out["restored"] == [2]
