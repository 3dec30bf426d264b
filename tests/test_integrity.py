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


def test_an_agreeing_retrieval_only_track_is_kept_but_never_accepted(localizer):
    """Retrieval only, inside the prior: the filter tracks the fixes (the track narrows the search)
    but none is `accepted`: a look-alike agrees with itself frame after frame as well as the truth does."""
    from skyloc.core.geo import offset_latlon
    from skyloc.runtime.localize.filter import FixCandidate
    from skyloc.runtime.localize.options import Fix
    from skyloc.runtime.outputs.schema import FixStatus

    loc, (lat0, lon0) = localizer
    loc.tracker.reset()
    reasons = []
    for i in range(4):
        p = offset_latlon(lat0, lon0, 20.0 + 3.0 * i, 10.0)
        fix = Fix(i, 0.5 * i)
        loc.filter(FixCandidate(float(p[0]), float(p[1]), 30.0, False, 0.9, 0.1, 0), fix)
        assert not fix.accepted and not fix.send_3d and fix.vn_mps is None
        reasons.append(fix.reason)
    # the filter itself took them (init, then its confirmed track), only the verdict is withheld
    assert reasons[0] == FixStatus.INIT and reasons[-1] == FixStatus.UNVERIFIED and loc.tracker.verified_support == 0
    assert loc.tracker.last is not None


def test_retrieval_only_on_a_flight_never_accepts_a_fix(tmp_path):
    """`skyloc run --no-register` on a synthetic flight (truth from its own log, independent of the
    run): the claimed accuracy_m does not bound the error (look-alikes), so no fix is accepted or sent."""
    pytest.importorskip("onnx")
    import json

    from skyloc.benchmarks import fault_integrity as fi
    from skyloc.benchmarks.fault_cases import build_world
    from skyloc.cli import main as skyloc

    from skyloc.synth.flight import FlightConfig, make_flight

    w = build_world(tmp_path / "w")
    fi.flight(w)  # the fault case's world: 50 m tiles; then a longer flight, so the filter builds a track
    make_flight(w.map_csv, w.root / "flight", FlightConfig(
        seconds=6.0, fps=2.0, speed_mps=6.0, altitude_range_m=(120.0, 140.0), fov_deg=90.0, tilt_max_deg=5.0,
        attitude_deg=2.0, yaw_mode="random-walk", seed=1, overwrite=True))
    truth = {int(r["frame"]): (float(r["lat"]), float(r["lon"])) for r in fi._truth(w)}
    assert skyloc(fi.flight_argv(w, "--telemetry", str(w.root / "flight" / "truth.csv"), "--no-heading",
                                 "--no-register")) == 0
    recs = [json.loads(s) for s in (w.root / "run.jsonl").read_text().splitlines()]
    placed = [r for r in recs if r.get("skipped") is None]
    assert len(recs) == len(truth) and len(placed) >= len(truth) - 1
    assert not any(r["accepted"] or r["send_3d"] or r["verified"] for r in recs)
    assert any(r["reason"] == "unverified" for r in placed)  # the filter took them: only the verdict is withheld
    errs = [fi._haversine(*truth[r["frame"]], r["lat"], r["lon"]) for r in placed]
    assert all(np.isfinite(errs))
    # before the fix these were accepted: the fault suite's judge now calls that wrong
    from skyloc.benchmarks.faults import Outcome
    assert fi.judge_retrieval_prior(w, Outcome(0))[0] == "survived and counted"
