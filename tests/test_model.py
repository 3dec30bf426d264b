"""MSBA model pieces against hand-built references (numpy loops, not the code under test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skyloc.training.blocks import _block_masks_np, block_attention, pool_blocks
from skyloc.training.config import ABLATION_ORDER, ModelConfig, preset
from skyloc.training.losses import msba_loss, mutual_kl
from skyloc.training.model import build_model


def hand_masks(size: int, rings: int = 4) -> np.ndarray:
    """Masks from the Chebyshev distance of each pixel centre to the map centre: ring i holds
    the pixels at distance in ((i-1)w, iw]; the outer ring also takes everything beyond."""
    w = size // (2 * rings)
    c = size / 2
    out = np.zeros((rings + 2, size, size))
    for r in range(size):
        for col in range(size):
            d = max(abs(r + 0.5 - c), abs(col + 0.5 - c))
            ring = min(math.ceil(d / w), rings)
            out[ring - 1, r, col] = 1
            if ring <= 2:
                out[rings, r, col] = 1
            if ring <= 3:
                out[rings + 1, r, col] = 1
    return out


@pytest.mark.parametrize("size", [16, 12])
def test_block_masks_equal_hand_built(size: int) -> None:
    got = _block_masks_np(size, size, 4, True)
    np.testing.assert_array_equal(got, hand_masks(size))
    # rings tile the map exactly once
    np.testing.assert_array_equal(got[:4].sum(0), np.ones((size, size)))


def test_block_masks_16_explicit_slices() -> None:
    m = _block_masks_np(16, 16, 4, True)
    inner = np.zeros((16, 16)); inner[6:10, 6:10] = 1
    np.testing.assert_array_equal(m[0], inner)
    sq3 = np.zeros((16, 16)); sq3[2:14, 2:14] = 1
    np.testing.assert_array_equal(m[5], sq3)
    np.testing.assert_array_equal(m[3], 1 - sq3)
    assert m[:4].sum() == 256 and m[0].sum() == 16 and m[1].sum() == 64 - 16


@pytest.mark.parametrize("size", [16, 12])
def test_pooled_values_equal_numpy_mean(size: int) -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 5, size, size)
    z = pool_blocks(f, 4, True, "mean").numpy()
    masks = hand_masks(size)
    fn = f.numpy()
    for b in range(2):
        for ch in range(5):
            for n in range(6):
                vals = [fn[b, ch, r, c] for r in range(size) for c in range(size) if masks[n, r, c]]
                assert z[b, ch, n] == pytest.approx(np.mean(vals), abs=1e-5)


def test_small_maps_are_resized_up_before_partition() -> None:
    # 64 px input -> 4x4 layer4 map: rings would be 0 px wide, so the map is resized to 8x8.
    f = torch.randn(1, 3, 4, 4)
    z = pool_blocks(f, 4, True, "mean")
    up = torch.nn.functional.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
    masks = hand_masks(8)
    ref = np.einsum("bchw,nhw->bcn", up.numpy(), masks / masks.sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(z.numpy(), ref, atol=1e-5)


def lpn_part_pool(x: np.ndarray, block: int = 4) -> np.ndarray:
    """LPN's `get_part_pool(pool='avg', no_overlap=True)` re-implemented with slices and zero
    padding (even maps): ring i = mean over the square of half-size i*per of (x minus the inner
    square padded with zeros back to that size); the last ring uses the whole map."""
    b, c, h, w = x.shape
    ch, cw = h // 2, w // 2
    ph, pw = h // (2 * block), w // (2 * block)
    out = []
    for i in range(1, block + 1):
        cur = x if i == block else x[:, :, ch - i * ph:ch + i * ph, cw - i * pw:cw + i * pw]
        if i > 1:
            pre = x[:, :, ch - (i - 1) * ph:ch + (i - 1) * ph, cw - (i - 1) * pw:cw + (i - 1) * pw]
            top, left = (cur.shape[2] - pre.shape[2]) // 2, (cur.shape[3] - pre.shape[3]) // 2
            pad = np.zeros_like(cur)
            pad[:, :, top:top + pre.shape[2], left:left + pre.shape[3]] = pre
            cur = cur - pad
        out.append(cur.mean(axis=(2, 3)))  # AdaptiveAvgPool2d((1, 1)) over the enclosing square
    return np.stack(out, axis=2)


@pytest.mark.parametrize("size", [16, 12, 8])
def test_lpn_pooling_equals_lpn_reference(size: int) -> None:
    torch.manual_seed(1)
    f = torch.randn(2, 3, size, size)
    z = pool_blocks(f, 4, True, "lpn").numpy()
    ref = lpn_part_pool(f.numpy().astype(np.float64))
    np.testing.assert_allclose(z[:, :, :4], ref, atol=1e-5)
    # The multiscale centre squares are full squares: their plain mean under both conventions.
    masks = hand_masks(size)
    for n in (4, 5):
        np.testing.assert_allclose(z[:, :, n], np.einsum("bchw,hw->bc", f.numpy(), masks[n]) / masks[n].sum(), atol=1e-5)


def test_lpn_and_mean_differ_by_the_ring_area_factors() -> None:
    # At 16x16 the rings are 4x4, 8x8 - 4x4, 12x12 - 8x8, 16x16 - 12x12: LPN's value is the mean
    # times (ring pixels / enclosing square) = 1, 48/64, 80/144, 112/256.
    f = torch.randn(1, 2, 16, 16)
    ratio = (pool_blocks(f, 4, False, "lpn") / pool_blocks(f, 4, False, "mean")).numpy()
    np.testing.assert_allclose(ratio[0, 0], [1.0, 0.75, 80 / 144, 0.4375], rtol=1e-5)
    with pytest.raises(ValueError):
        pool_blocks(f, 4, False, "max")


def test_ring_pooling_switch_changes_the_block_attention_model() -> None:
    # With block attention the two conventions are different functions of the same weights.
    torch.manual_seed(0)
    a = _tiny(ring_pooling="lpn")
    b = _tiny(ring_pooling="mean")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ea, eb = a.embed(x, parts=[0, 1, 2, 3]), b.embed(x, parts=[0, 1, 2, 3])
    assert not torch.allclose(ea, eb, atol=1e-3)


def test_paper_presets_use_lpn_pooling_and_old_checkpoints_load_as_mean(tmp_path) -> None:
    from skyloc.training.checkpoint import load_model, model_id, save_checkpoint

    for name in ABLATION_ORDER + ["msba-384", "small", "tiny"]:
        assert preset(name)[0].ring_pooling == "lpn", name
    with pytest.raises(Exception, match="ring_pooling"):
        ModelConfig(ring_pooling="max")
    # An old checkpoint: model_config without the key, trained with the true mean.
    cfg, _ = preset("tiny", num_classes=3, ring_pooling="mean")
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "old.pt", net, cfg)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model_config"]["ring_pooling"] == "mean"  # recorded in new checkpoints
    del ckpt["model_config"]["ring_pooling"]
    del ckpt["checksum"]  # written before checkpoints carried one either
    torch.save(ckpt, path)
    model, loaded, _ = load_model(path)
    assert loaded.ring_pooling == "mean"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), net.embed(x))
    # Its fingerprint is the one computed before the field existed.
    import hashlib
    import json
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in ("pretrained", "ring_pooling")}
    h = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode())
    for k in sorted(ckpt["model"]):
        t = ckpt["model"][k]
        h.update(k.encode()); h.update(str(t.dtype).encode()); h.update(t.numpy().tobytes())
    assert model_id(ckpt["model"], loaded) == h.hexdigest()[:16]


def test_block_attention_is_softmax_over_blocks_times_input() -> None:
    z = torch.randn(3, 4, 6)
    zn = z.numpy().astype(np.float64)
    e = np.exp(zn - zn.max(axis=2, keepdims=True))
    ref = e / e.sum(axis=2, keepdims=True) * zn
    np.testing.assert_allclose(block_attention(z).numpy(), ref, rtol=1e-5, atol=1e-6)


def _tiny(**kw) -> torch.nn.Module:
    cfg, _ = preset("tiny", num_classes=7, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_backbone_layer3_and_layer4_share_size_at_256() -> None:
    net = build_model(ModelConfig(backbone="resnet18", num_classes=3, image_size=256)).eval()
    with torch.no_grad():
        f3, f4 = net.backbone(torch.randn(1, 3, 256, 256))
    assert f3.shape == (1, 256, 16, 16) and f4.shape == (1, 512, 16, 16)


def test_embedding_sizes_and_norms() -> None:
    net = _tiny()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        full = net.embed(x)
        glob = net.embed(x, parts=[net.global_index])
        logits = net.train()(x)
    assert full.shape == (3, 7 * 512) and glob.shape == (3, 512)
    np.testing.assert_allclose(full.norm(dim=1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(glob.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert len(logits) == 7 and all(t.shape == (3, 7) for t in logits)


def test_reweighting_sets_global_share() -> None:
    net = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        rw = net.embed(x, reweight=True)
        plain = net.embed(x, reweight=False)
    # Each head is unit length before weighting: the global slice's norm is w / sqrt(6 + w^2).
    g = slice(6 * 512, 7 * 512)
    np.testing.assert_allclose(rw[:, g].norm(dim=1).numpy(), 1.5 / math.sqrt(6 + 1.5 ** 2), atol=1e-5)
    np.testing.assert_allclose(plain[:, g].norm(dim=1).numpy(), 1 / math.sqrt(7), atol=1e-5)
    np.testing.assert_allclose(rw[:, :512].norm(dim=1).numpy(), 1 / math.sqrt(6 + 1.5 ** 2), atol=1e-5)


def test_embedding_is_concat_of_weighted_normalised_heads() -> None:
    net = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = [f.numpy() for f in net.head_features(x)]
        emb = net.embed(x).numpy()
    w = [1.0] * 6 + [1.5]
    ref = np.concatenate([wi * f / np.linalg.norm(f, axis=1, keepdims=True) for wi, f in zip(w, feats)], axis=1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_flip_tta_is_mirror_invariant() -> None:
    net = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = net.embed(x, flip=True)
        b = net.embed(torch.flip(x, dims=[3]), flip=True)
        c = net.embed(x, flip=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert not np.allclose(a.numpy(), c.numpy(), atol=1e-4)


def test_ablation_presets_switch_heads() -> None:
    heads = {name: preset(name, num_classes=3)[0].num_heads for name in ABLATION_ORDER}
    assert heads == {"lpn": 4, "lpn+ms": 6, "lpn+ms+global": 7, "lpn+ms+global+ba": 7,
                     "lpn+ms+global+ba+kl": 7, "msba": 7}
    lpn = _tiny(multiscale=False, global_branch=False, block_attention=False, kl_loss=False, reweight=False)
    with torch.no_grad():
        assert lpn.embed(torch.randn(1, 3, 64, 64)).shape == (1, 4 * 512)
    assert lpn.global_index is None


def test_kl_zero_for_identical_logits_and_hand_value() -> None:
    a = torch.randn(4, 9)
    assert float(mutual_kl(a, a.clone())) == pytest.approx(0.0, abs=1e-6)
    drone = torch.tensor([[0.0, 0.0]])  # p = (0.5, 0.5)
    sat = torch.log(torch.tensor([[0.25, 0.75]]))  # q = (0.25, 0.75)
    hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(mutual_kl(drone, sat)) == pytest.approx(hand, rel=1e-5)
    # batchmean: the mean over rows of each row's KL
    two = mutual_kl(torch.cat([drone, drone]), torch.cat([sat, torch.zeros(1, 2)]))
    assert float(two) == pytest.approx(hand / 2, rel=1e-5)


def test_msba_loss_terms_add_up() -> None:
    torch.manual_seed(1)
    sat = [torch.randn(3, 5) for _ in range(7)]
    drone = [torch.randn(3, 5) for _ in range(7)]
    y = torch.tensor([0, 2, 4])
    total, terms = msba_loss(sat, drone, y, use_kl=True)
    ce = sum(torch.nn.functional.cross_entropy(t, y) for t in sat + drone)
    kl = sum(mutual_kl(d, s) for d, s in zip(drone, sat)) / 7
    assert float(total) == pytest.approx(float(ce + kl), rel=1e-5)
    assert terms["kl"] == pytest.approx(float(kl), rel=1e-5)
    total_nokl, terms2 = msba_loss(sat, drone, y, use_kl=False)
    assert "kl" not in terms2 and float(total_nokl) == pytest.approx(float(ce), rel=1e-5)


def test_eager_calls_work_after_torch_export_traced_the_masks() -> None:
    # the mask cache must hold plain arrays: a tensor cached while torch.export traces is a fake
    from skyloc.training.blocks import _block_masks_np

    _block_masks_np.cache_clear()

    class Pool(torch.nn.Module):
        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return pool_blocks(f, 4, True, "mean")

    f = torch.randn(1, 2, 16, 16)
    torch.export.export(Pool(), (f,))
    ref = np.einsum("bchw,nhw->bcn", f.numpy(), hand_masks(16) / hand_masks(16).sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(pool_blocks(f, 4, True, "mean").numpy(), ref, atol=1e-5)


def test_reweight_override_applies_to_a_model_trained_without_it() -> None:
    # the Table 3 "+reweights" row evaluates the "+KL" model (reweight off) with the weights on
    net = _tiny(reweight=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        on = net.embed(x, reweight=True)
        default = net.embed(x)
    g = slice(6 * 512, 7 * 512)
    np.testing.assert_allclose(on[:, g].norm(dim=1).numpy(), 1.5 / math.sqrt(6 + 1.5 ** 2), atol=1e-5)
    np.testing.assert_allclose(default[:, g].norm(dim=1).numpy(), 1 / math.sqrt(7), atol=1e-5)
