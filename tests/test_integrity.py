"""Silent wrongs refused: a checkpoint whose bytes changed on disk is not loaded (its checksum says
so), and a retrieval-only fix outside the start prior never starts a track (it would be accepted
with an accuracy it cannot have). Real components: torch's own serializer, the tiny ONNX model,
the real Localizer and its filter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skyloc.core.errors import SkylocError


def _flip_weight_byte(path: Path, value: float) -> None:
    torch = pytest.importorskip("torch")
    data = bytearray(path.read_bytes())
    at = bytes(data).find(torch.full((4,), value).numpy().tobytes())  # the stored tensor, uncompressed in the zip
    assert at > 0
    data[at + 1] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_a_changed_byte_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from skyloc.training.checkpoint import content_checksum, load_checkpoint, save_checkpoint
    from skyloc.training.config import ModelConfig

    net = torch.nn.Linear(4, 4)
    with torch.no_grad():
        net.weight.fill_(0.123456789)
    path = save_checkpoint(tmp_path / "c.pt", net, ModelConfig(), epoch=3)
    ckpt = load_checkpoint(path)  # intact: loads, and the checksum is the content's
    assert ckpt["checksum"].startswith("sha256:") and ckpt["checksum"] == content_checksum(ckpt)
    # torch itself loads the damaged file without complaint: that is why the checksum exists
    _flip_weight_byte(path, 0.123456789)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert not torch.equal(raw["model"]["weight"], ckpt["model"]["weight"])
    with pytest.raises(SkylocError, match="damaged"):
        load_checkpoint(path)


def test_checksum_sees_every_part_of_the_content():
    torch = pytest.importorskip("torch")
    from skyloc.training.checkpoint import content_checksum

    base = {"model": {"w": torch.zeros(3)}, "epoch": 1, "cfg": {"a": [1, 2]}}
    ref = content_checksum(base)
    assert content_checksum({**base, "checksum": "x"}) == ref  # its own field is not part of it
    for changed in ({**base, "epoch": 2}, {**base, "cfg": {"a": [1, 3]}}, {**base, "model": {"w": torch.ones(3)}},
                    {**base, "model": {"w": torch.zeros(3, dtype=torch.float64)}},
                    {**base, "model": {"w": torch.zeros(1, 3)}}):
        assert content_checksum(changed) != ref


@pytest.fixture(scope="module")
def localizer(tmp_path_factory):
    from runtime_core_helpers import make_map, make_tiny_model
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.localize.localizer import Localizer, LocalizerOptions
    from skyloc.runtime.maps.tileset import TileSet
    from skyloc.runtime.maps.tileset_build import build_tileset

    tmp = tmp_path_factory.mktemp("prior")
    model = make_tiny_model(tmp / "m.onnx", size=32, dim=16)
    png = make_map(tmp / "map")
    tiles = build_tileset(model, png, tmp / "t.npz", tile_m=100.0, stride_m=50.0, progress=False)
    ts = TileSet.load(tiles)
    lat0, lon0 = (float(v) for v in ts.centers[len(ts) // 2])
    opt = LocalizerOptions(register=False, start=(lat0, lon0, 150.0))
    return Localizer(open_backend(model, "onnxruntime"), ts, opt), (lat0, lon0)


def test_a_retrieval_only_fix_outside_the_start_prior_is_refused(localizer):
    from skyloc.core.geo import offset_latlon
    from skyloc.runtime.localize.filter import FixCandidate
    from skyloc.runtime.localize.options import Fix
    from skyloc.runtime.outputs.schema import FixStatus

    loc, (lat0, lon0) = localizer
    far = offset_latlon(lat0, lon0, 600.0, 300.0)  # ~670 m from the prior's centre: the 648 m case
    fix = Fix(0, 0.0)
    loc.filter(FixCandidate(float(far[0]), float(far[1]), 30.0, False, 0.9, 0.1, 0), fix)
    assert not fix.accepted and fix.reason == FixStatus.OUTSIDE_PRIOR and loc.tracker.last is None
    # inside the prior (radius + its own accuracy): it reaches the filter and starts a track
    near = offset_latlon(lat0, lon0, 80.0, 60.0)
    fix2 = Fix(1, 0.5)
    loc.filter(FixCandidate(float(near[0]), float(near[1]), 30.0, False, 0.9, 0.1, 0), fix2)
    assert fix2.reason == FixStatus.INIT and loc.tracker.last is not None
    assert np.isclose(fix2.raw_lat, near[0]) and not fix2.send_3d
