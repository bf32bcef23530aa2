"""Scene mixing (LORBMS): quadrant mixing, mask targets, the losses against hand computations,
the mixing pass, candidate drawing and a short resumable training run."""

import math

import numpy as np
import pytest
import torch

from scenesearch.models import lorbms as L

QUAD = {0: (slice(0, 2), slice(0, 2)), 1: (slice(0, 2), slice(2, 4)), 2: (slice(2, 4), slice(0, 2)), 3: (slice(2, 4), slice(2, 4))}


def _maps(b=2, c=3, side=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(b, c, side, side, generator=g)
    others = torch.randn(b, 4, c, side, side, generator=g)
    return ref, others


def _quad(t, j, side=4):
    h = side // 2
    rows = slice(0, h) if j < 2 else slice(h, side)
    cols = slice(0, h) if j % 2 == 0 else slice(h, side)
    return t[..., rows, cols]


def test_mask_0000_keeps_the_reference_and_1111_takes_each_quadrant_from_its_own_image():
    ref, others = _maps()
    zero = torch.zeros(2, 4, dtype=torch.long)
    assert torch.equal(L.mix(ref, others, zero), ref)
    out = L.mix(ref, others, torch.ones(2, 4, dtype=torch.long))
    for j in range(4):
        assert torch.equal(_quad(out, j), _quad(others[:, j], j))
        for other_j in set(range(4)) - {j}:  # not from another similar image
            assert not torch.equal(_quad(out, j), _quad(others[:, other_j], j))


def test_a_mixed_mask_is_right_quadrant_by_quadrant():
    ref, others = _maps(b=2, c=2, side=8, seed=1)
    bits = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]])
    out = L.mix(ref, others, bits)
    for b in range(2):
        for j in range(4):
            want = _quad(others[b, j], j, 8) if bits[b, j] else _quad(ref[b], j, 8)
            assert torch.equal(_quad(out[b], j, 8), want), (b, j)
    # the hand-built top-left/bottom-left pattern of sample 0
    expected = ref[0].clone()
    expected[:, :4, :4] = others[0, 0][:, :4, :4]
    expected[:, 4:, :4] = others[0, 2][:, 4:, :4]
    assert torch.equal(out[0], expected)


def test_one_map_of_others_gives_every_swapped_quadrant():
    ref, others = _maps(seed=2)
    single = others[:, 0]
    bits = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]])
    out = L.mix(ref, single, bits)
    for b in range(2):
        for j in range(4):
            want = _quad(single[b], j) if bits[b, j] else _quad(ref[b], j)
            assert torch.equal(_quad(out[b], j), want)


def test_quadrant_masks_fill_each_quadrant_with_its_bit():
    bits = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 1, 1]])
    m = L.quadrant_masks(bits, 6)
    assert m.shape == (5, 1, 6, 6)
    for b in range(5):
        for j in range(4):
            q = _quad(m[b, 0], j, 6)
            assert torch.all(q == float(bits[b, j])), (b, j)


def test_pool_quadrants_is_each_quadrants_mean_in_order():
    f = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    p = L.pool_quadrants(f)
    assert p.shape == (2, 8)
    want = torch.cat([_quad(f, j).mean(dim=(2, 3)) for j in range(4)], dim=1)
    assert torch.equal(p, want)
    assert p[0, 0] == (f[0, 0, 0, 0] + f[0, 0, 0, 1] + f[0, 0, 1, 0] + f[0, 0, 1, 1]) / 4


def _bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_mask_loss_targets_the_bits_and_weights_each_quadrant():
    bits = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    right = 30.0 * (2 * bits.float() - 1)
    assert float(L.mask_loss(right, bits, (1, 1, 1, 1))) < 1e-10
    assert float(L.mask_loss(-right, bits, (1, 1, 1, 1))) > 4 * 29  # ~30 per bit
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1], [-0.5, 0.7, 1.1, -2.2], [1.5, 0.2, -0.4, 0.9]])
    lam = (0.5, 2.0, 0.0, 1.5)
    want = sum(lam[j] * np.mean([_bce(float(logits[b, j]), int(bits[b, j])) for b in range(3)]) for j in range(4))
    assert float(L.mask_loss(logits, bits, lam)) == pytest.approx(want, rel=1e-5)


def test_the_mask_target_of_a_mixed_image_is_the_mask_that_mixed_it(monkeypatch):
    """The bits generator_loss hands to the mask loss are exactly the bits mix() used."""
    seen = {}
    real_mix, real_mask = L.mix, L.mask_loss
    monkeypatch.setattr(L, "mix", lambda r, o, b: seen.setdefault("mix", []).append(b.clone()) or real_mix(r, o, b))
    monkeypatch.setattr(L, "mask_loss", lambda lg, b, q: seen.setdefault("mask", []).append(b.clone()) or real_mask(lg, b, q))
    torch.manual_seed(0)
    model = L.LORBMS(L.Sizes((4, 8, 8), 4, 32)).eval()
    ref, others = torch.rand(2, 3, 32, 32), torch.rand(2, 4, 3, 32, 32)
    bits = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]])
    out = L.forward_mix(model, ref, others, bits)
    adv, cls = model.discriminator(out["mixed"])
    L.generator_loss(ref, out, adv, cls, bits, L.LossWeights())
    assert all(torch.equal(b, bits) for b in seen["mix"]) and len(seen["mix"]) == 2
    assert len(seen["mask"]) == 1 and torch.equal(seen["mask"][0], bits)


def test_reconstruction_is_the_mean_abs_or_mean_square_error():
    x = torch.tensor([[0.0, 1.0], [0.5, 0.2]])
    y = torch.tensor([[0.5, 0.0], [0.5, 0.6]])
    assert float(L.reconstruction(x, y, 1)) == pytest.approx((0.5 + 1.0 + 0.0 + 0.4) / 4)
    assert float(L.reconstruction(x, y, 2)) == pytest.approx((0.25 + 1.0 + 0.0 + 0.16) / 4)


def _log_sigmoid(v):
    return -math.log1p(math.exp(-v))


def test_generator_loss_by_hand():
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(2, 3, 4, 4, generator=g)
    out = {"direct": torch.rand(2, 3, 4, 4, generator=g), "cycle": torch.rand(2, 3, 4, 4, generator=g), "mixed": torch.rand(2, 3, 4, 4, generator=g)}
    adv = torch.tensor([0.4, -1.3])
    cls = torch.tensor([[0.2, -0.3, 1.0, 0.0], [-1.0, 2.0, 0.5, -0.2]])
    bits = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]])
    lam = (1.0, 0.5, 2.0, 1.0)
    r, d, c = ref.numpy(), out["direct"].numpy(), out["cycle"].numpy()
    l_adv = -np.mean([_log_sigmoid(v) for v in adv.tolist()])
    l_cls = sum(lam[j] * np.mean([_bce(float(cls[b, j]), int(bits[b, j])) for b in range(2)]) for j in range(4))
    for p in (1, 2):
        w = L.LossWeights(rec=1.5, adv=0.3, cls=0.7, quadrants=lam, cycle=True, p=p)
        rec = np.mean(np.abs(r - d) ** p) + np.mean(np.abs(r - c) ** p)
        got = L.generator_loss(ref, out, adv, cls, bits, w)
        assert float(got["rec"]) == pytest.approx(rec, rel=1e-5)
        assert float(got["adv"]) == pytest.approx(l_adv, rel=1e-5)
        assert float(got["cls"]) == pytest.approx(l_cls, rel=1e-5)
        assert float(got["loss"]) == pytest.approx(1.5 * rec + 0.3 * l_adv + 0.7 * l_cls, rel=1e-5)
        no_cycle = L.generator_loss(ref, out, adv, cls, bits, L.LossWeights(rec=1.5, adv=0.3, cls=0.7, quadrants=lam, cycle=False, p=p))
        rec1 = np.mean(np.abs(r - d) ** p)
        assert float(no_cycle["rec"]) == pytest.approx(rec1, rel=1e-5)
        assert float(no_cycle["loss"]) == pytest.approx(1.5 * rec1 + 0.3 * l_adv + 0.7 * l_cls, rel=1e-5)


def test_discriminator_loss_and_accuracy_by_hand():
    real = torch.tensor([1.2, -0.4, 0.3])
    fake = torch.tensor([-2.0, 0.5, -0.1])
    cls = torch.tensor([[0.2, -0.3, 1.0, 0.0], [-1.0, 2.0, 0.5, -0.2], [0.3, 0.3, -0.3, -0.3]])
    bits = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]])
    w = L.LossWeights(cls=0.25, quadrants=(1.0, 2.0, 3.0, 0.5))
    adv = -np.mean([_log_sigmoid(v) for v in real.tolist()]) - np.mean([math.log(1 - 1 / (1 + math.exp(-v))) for v in fake.tolist()])
    l_cls = sum(w.quadrants[j] * np.mean([_bce(float(cls[b, j]), int(bits[b, j])) for b in range(3)]) for j in range(4))
    got = L.discriminator_loss(real, fake, cls, bits, w)
    assert float(got["adv"]) == pytest.approx(adv, rel=1e-5)
    assert float(got["cls"]) == pytest.approx(l_cls, rel=1e-5)
    assert float(got["loss"]) == pytest.approx(adv + 0.25 * l_cls, rel=1e-5)
    assert float(got["accuracy"]) == pytest.approx(4 / 6)  # real right: 1.2, 0.3; fake right: -2.0, -0.1
    # bit predictions (logit > 0): [1,0,1,0] [0,1,1,0] [1,1,0,0] -> 3 + 3 + 2 of 12 right
    assert float(got["bit_accuracy"]) == pytest.approx(8 / 12)


def _model(seed=0, size=32):
    torch.manual_seed(seed)
    return L.LORBMS(L.Sizes((4, 8, 8), 4, size))


def test_forward_mix_shapes_and_mask_0000_mixes_to_the_direct_reconstruction():
    model = _model().eval()
    g = torch.Generator().manual_seed(0)
    ref, others = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 4, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = L.forward_mix(model, ref, others, torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (3, 3, 32, 32) for k in ("direct", "mixed", "cycle")}
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in out.values())
    assert tuple(model.embed(ref).shape) == (3, 16)
    with torch.no_grad():
        zero = L.forward_mix(model, ref, others, torch.zeros(3, 4, dtype=torch.long))
    assert torch.allclose(zero["mixed"], zero["direct"], atol=1e-6)
    assert float((out["mixed"] - out["direct"]).abs().max()) > 1e-4  # an untrained generator's outputs sit near 0.5


def test_the_cycle_puts_the_references_blocks_back_into_the_mixed_images_encoding():
    model = _model(1).eval()
    g = torch.Generator().manual_seed(1)
    ref, others = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 4, 3, 32, 32, generator=g)
    bits = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]])
    with torch.no_grad():
        out = L.forward_mix(model, ref, others, bits)
        f_ref = model.encoder(ref)
        f_oth = torch.stack([model.encoder(others[:, j]) for j in range(4)], dim=1)
        mixed = model.generator(L.mix(f_ref, f_oth, bits))
        f_mixed = model.encoder(mixed)
        undo = model.generator(L.mix(f_mixed, f_ref, bits))
        wrong = model.generator(L.mix(f_ref, f_mixed, bits))
    assert torch.allclose(out["mixed"], mixed, atol=1e-5)
    assert torch.allclose(out["cycle"], undo, atol=1e-5)
    assert not torch.allclose(out["cycle"], wrong, atol=1e-4)


def test_the_generator_loss_reaches_the_encoder_and_generator():
    model = _model(2).train()
    g = torch.Generator().manual_seed(2)
    ref, others = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 4, 3, 32, 32, generator=g)
    bits = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = L.forward_mix(model, ref, others, bits)
    adv, cls = model.discriminator(out["mixed"])
    L.generator_loss(ref, out, adv, cls, bits, L.LossWeights())["loss"].backward()
    for part in (model.encoder, model.generator):
        grads = [p.grad for p in part.parameters()]
        assert all(gr is not None for gr in grads)
        assert sum(float(gr.abs().sum()) for gr in grads) > 0
        assert all(torch.isfinite(gr).all() for gr in grads)


def test_draw_returns_only_valid_candidates_of_each_reference():
    cands = torch.tensor([[1, 2, -1], [0, -1, -1], [-1, -1, -1], [0, 1, 2], [4, -1, -1]] + [[1, 3, -1]])
    data = L.MixData(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), cands)
    assert data.references().tolist() == [0, 1, 3, 4, 5]
    g = torch.Generator().manual_seed(0)
    refs = data.references().repeat(40)
    drawn = data.draw(refs, g)
    assert drawn.shape == (len(refs), 4)
    for r, row in zip(refs.tolist(), drawn.tolist()):
        valid = {c for c in cands[r].tolist() if c >= 0}
        assert set(row) <= valid, (r, row)
    # every candidate gets drawn (uniform over the valid ones), e.g. both of row 0 and all three of row 3
    for r in (0, 3):
        assert set(drawn[refs == r].flatten().tolist()) == {c for c in cands[r].tolist() if c >= 0}


def _mix_data(n=16, size=32):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    cands = torch.full((n, 3), -1, dtype=torch.long)
    for i in range(n - 2):  # the last two images have no candidate
        cands[i, : 1 + i % 3] = torch.tensor([(i + k + 1) % n for k in range(1 + i % 3)])
    return L.MixData(images, cands)


def _train(ckpt_dir, epochs, grids=None):
    from scenesearch.config import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=8, device="cpu")
    torch.manual_seed(0)
    model = L.LORBMS(L.Sizes((4, 8, 8), 4, 32))
    on_grid = None if grids is None else (lambda epoch, img: grids.append((epoch, img)))
    result = L.train(model, _mix_data(), cfg, L.LossWeights(), str(ckpt_dir), seed=0, run_hash="h", lr=2e-4, batch_size=8, on_grid=on_grid, grid_rows=3)
    return model, result


def test_a_short_training_run_logs_grids_and_resumes_to_the_same_weights(tmp_path):
    grids = []
    _, first = _train(tmp_path / "a", 2, grids)
    assert [h["epoch"] for h in first.history] == [1, 2] and first.resumed_from == 0
    for h in first.history:
        assert {"g_loss", "d_loss", "d_accuracy", "g_rec", "g_adv", "g_cls"} <= set(h)
        assert all(math.isfinite(v) for v in h.values())
        assert 0 <= h["d_accuracy"] <= 1
    assert [e for e, _ in grids] == [1, 2]
    for _, img in grids:
        assert img.ndim == 3 and img.shape[0] == 3 and torch.isfinite(img).all()
        assert img.shape[1] == 3 * 32 + 4 * 2  # three references, one row each
    resumed, again = _train(tmp_path / "a", 3)
    assert again.resumed_from == 2 and again.epochs_run == 3
    straight, once = _train(tmp_path / "b", 3)
    assert once.resumed_from == 0
    a, b = resumed.state_dict(), straight.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_without_any_candidate_is_a_data_error(tmp_path):
    from scenesearch.config import TrainConfig
    from scenesearch.errors import DataError

    data = L.MixData(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.full((4, 2), -1, dtype=torch.long))
    with pytest.raises(DataError, match="no training image with a similar candidate"):
        L.train(_model(), data, TrainConfig(epochs=1, device="cpu"), L.LossWeights(), str(tmp_path), 0, "h", 1e-3, 4)


def test_sizes_refuse_a_map_that_cannot_be_split_in_quadrants():
    with pytest.raises(ValueError, match="must be even"):
        L.Sizes((4, 8, 8), 4, 24)  # 3-pixel map
