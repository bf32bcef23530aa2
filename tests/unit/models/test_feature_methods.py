"""The descriptor-pair methods' parts: every loss term against a hand computation on tiny tensors,
the k-means-centre and weighted view distances against per-pair loops, the pair sampler, that
unseen classes never reach training, and checkpoint resume."""

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from scenesearch import losses
from scenesearch.config import TrainConfig
from scenesearch.errors import DataError
from scenesearch.methods.parallel_vae import weighted_view_distances
from scenesearch.methods.zs_cvae import centre_distances, kmeans_centres
from scenesearch.models import feature_nets
from scenesearch.models.feature_nets import PairBatch, ParallelVAE, ZeroShotGenerator
from scenesearch.models.feature_train import hardest_negatives, mined, pair_data, train_pairs
from scenesearch.train import training_index


def test_gaussian_kl_by_hand_and_against_torch_distributions():
    # KL(N(1, 1) || N(0, 4)) = 0.5 * (log 4 + (1 + 1) / 4 - 1)
    kl = losses.gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[math.log(4.0)]]))
    assert kl.item() == pytest.approx(0.5 * (math.log(4.0) + 0.5 - 1.0))
    assert losses.gaussian_kl(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.0)  # vs N(0, I): 0.5 * mu^2
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(3, 4, generator=g) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mq, (0.5 * lq).exp()), torch.distributions.Normal(mp, (0.5 * lp).exp())).sum(-1)
    torch.testing.assert_close(losses.gaussian_kl(mq, lq, mp, lp), ref)


def test_contrastive_triplet_and_distances_by_hand():
    d = torch.tensor([0.3, 0.3, 1.5])
    torch.testing.assert_close(losses.contrastive(d, torch.tensor([1, 0, 0]), margin=1.0), torch.tensor([0.3, 0.7, 0.0]))
    torch.testing.assert_close(losses.triplet(torch.tensor([0.5, 0.1]), torch.tensor([0.4, 0.9]), margin=0.2), torch.tensor([0.3, 0.0]))
    assert losses.l2(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx(5.0)
    assert losses.gaussian_nll(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2.5)
    assert losses.cosine_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(1.0)


def test_hardest_negative_triplet_picks_the_closest_other_class_candidate():
    a = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [10.0, 1.0]])
    cands = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 5.0], [10.0, 1.0]])
    a_lab, c_lab = torch.tensor([0, 1]), torch.tensor([0, 1, 1, 1])
    # anchor 0: positive at 1, negatives (class 1) at 2, 5 and ~10.05 -> hardest 2: max(0, 1 - 2 + 3) = 2
    # anchor 1 (class 1): its only other-class candidate is cands[0] at distance 9 -> max(0, 1 - 9 + 3) = 0
    torch.testing.assert_close(losses.hardest_negative_triplet(a, p, cands, a_lab, c_lab, margin=3.0), torch.tensor([2.0, 0.0]))
    # an anchor without any candidate of another class costs nothing (and is not NaN)
    out = losses.hardest_negative_triplet(a[:1], p[:1], cands[:1], a_lab[:1], c_lab[:1], margin=3.0)
    assert out.item() == 0.0


def test_adversarial_terms_are_the_log_probabilities_of_the_discriminator():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    d_loss, enc_term = losses.discriminator_loss(real, fake), losses.encoder_adversarial(fake)
    sig = torch.sigmoid
    assert d_loss.item() == pytest.approx(-(math.log(sig(real).item()) + math.log(1 - sig(fake).item())))
    assert enc_term.item() == pytest.approx(math.log(1 - sig(fake).item()))


def _batch(d=4, b=3, seed=0, n_sem=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(b, d, generator=g)  # noqa: E731
    return PairBatch(r(), r(), r(), r(), torch.tensor([0, 1, 0][:b]), torch.tensor([1, 0, 1][:b]), torch.randn(b, n_sem, generator=g) if n_sem else None)


def test_zero_shot_cvae_loss_is_kl_plus_reconstruction_plus_the_regulariser(monkeypatch):
    monkeypatch.setattr(feature_nets, "sample", lambda mu, logvar: mu)  # the draw at its mean: terms by hand
    torch.manual_seed(0)
    net, b, lam = ZeroShotGenerator(4, 3, 8), _batch(), 0.7
    out = net.losses(b, lam)
    mu, lv = net.encoder(torch.cat([b.render, b.query], 1))
    pmu, plv = net.prior(b.query)
    kl = (0.5 * (plv - lv + (lv.exp() + (mu - pmu) ** 2) / plv.exp() - 1)).sum(1)
    x_hat = net.decoder(torch.cat([mu, b.query], 1))
    rec = 0.5 * ((b.render - x_hat) ** 2).sum(1)
    reg = ((net.regressor(x_hat) - b.query) ** 2).sum(1)
    for got, want in ((out["latent"], kl), (out["rec"], rec), (out["reg"], reg), (out["loss"], kl + rec + lam * reg)):
        torch.testing.assert_close(got, want)


def test_caae_replaces_the_kl_by_the_encoders_adversarial_term():
    torch.manual_seed(0)
    net, b = ZeroShotGenerator(4, 3, 8, adversarial=True), _batch()
    out = net.losses(b, 0.0)
    z = net.encoder(torch.cat([b.render, b.query], 1))
    torch.testing.assert_close(out["latent"], torch.log(1 - torch.sigmoid(net.discriminator(z).squeeze(-1))))
    x_hat = net.decoder(torch.cat([z, b.query], 1))
    torch.testing.assert_close(out["loss"], out["latent"] + 0.5 * ((b.render - x_hat) ** 2).sum(1))
    assert net.discriminator_loss(b).item() > 0
    assert net.generate(b.query, torch.zeros(5, 3)).shape == (3, 5, 4)


def test_parallel_vae_loss_terms_by_hand(monkeypatch):
    monkeypatch.setattr(feature_nets, "sample", lambda mu, logvar: mu)
    torch.manual_seed(0)
    net, b, m = ParallelVAE(4, 3, 8, n_semantics=2), _batch(n_sem=2), 1.5
    lam = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    out = net.losses(b, lam, margin=m)
    mu_s, lv_s = net.enc_structure(b.render)
    mu_a, lv_a = net.enc_appearance(b.render)
    mu_q, lv_q = net.enc_query(b.query)
    mu_n, _ = net.enc_query(b.neg_query)
    fq_hat = net.dec_query(mu_s)
    elbo_q = 0.5 * ((b.query - fq_hat) ** 2).sum(1) + (0.5 * (mu_s**2 + lv_s.exp() - 1 - lv_s)).sum(1)
    pmu, plv = net.prior_image(b.query)
    zmu, zlv = torch.cat([mu_a, mu_q], 1), torch.cat([lv_a, lv_q], 1)
    fi_hat = net.dec_image(torch.cat([zmu, b.query], 1))
    elbo_img = 0.5 * ((b.render - fi_hat) ** 2).sum(1) + (0.5 * (plv - zlv + (zlv.exp() + (zmu - pmu) ** 2) / plv.exp() - 1)).sum(1)
    rec_q, rec_img = (fq_hat - b.query).norm(dim=1), (fi_hat - b.render).norm(dim=1)
    dis = ((mu_s * mu_a).sum(1) / (mu_s.norm(dim=1) * mu_a.norm(dim=1))).abs()
    align = 0.5 * (mu_s - mu_q).norm(dim=1) + 0.5 * (m - (mu_s - mu_n).norm(dim=1)).clamp_min(0)
    sem = ((net.semantic(fi_hat) - b.semantics) ** 2).sum(1)
    want = {"elbo_q": elbo_q, "elbo_img": elbo_img, "rec_q": rec_q, "rec_img": rec_img, "disentangle": dis, "align": align, "semantic": sem}
    for k, v in want.items():
        torch.testing.assert_close(out[k], v, msg=k)
    torch.testing.assert_close(out["loss"], sum(w * want[k] for w, k in zip(lam, want)))
    # without semantics the l7 term is absent, not zero-weighted noise
    assert "semantic" not in ParallelVAE(4, 3, 8).losses(_batch(), lam, margin=m)


def test_centre_distance_is_the_min_over_centres_and_views_of_the_cosine_distance():
    g = torch.Generator().manual_seed(1)
    centres, gallery = torch.randn(3, 4, 5, generator=g), torch.randn(6, 7, 5, generator=g)
    got = centre_distances(centres, gallery)
    want = torch.empty(3, 6)
    for q in range(3):
        for s in range(6):
            want[q, s] = min(1 - torch.nn.functional.cosine_similarity(centres[q, k], gallery[s, v], dim=0).item() for k in range(4) for v in range(7))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_kmeans_centres_are_seeded_and_find_separated_clusters():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.01, (20, 2)) for c in ([0, 0], [5, 5])])[None].astype(np.float32)
    centres = kmeans_centres(blobs, 2, seed=0)
    assert centres.shape == (1, 2, 2)
    np.testing.assert_allclose(sorted(centres[0].tolist()), [[0, 0], [5, 5]], atol=0.05)
    np.testing.assert_array_equal(centres, kmeans_centres(blobs, 2, seed=0))


def test_weighted_view_distance_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    q, gal, d, w = torch.randn(2, 7, generator=g), torch.randn(3, 4, 7, generator=g), 4, 0.3
    got = weighted_view_distances(q, gal, d, w)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()  # noqa: E731
    for i in range(2):
        for s in range(3):
            want = min(w * (1 - cos(q[i, :d], gal[s, v, :d])) + (1 - w) * (1 - cos(q[i, d:], gal[s, v, d:])) for v in range(4))
            assert got[i, s].item() == pytest.approx(want, abs=1e-5)


def _index(n_per=6):
    """Three classes, each with train queries (photo, sketch) and train renders; 'street' unseen."""
    rows = {"item_id": [], "label": [], "domain": [], "split": [], "class_split": [], "view": [], "flip": []}
    for c in ("bedroom", "kitchen", "street"):
        for i in range(n_per):
            for dom in ("photo", "sketch", "scene"):
                rows["item_id"].append(f"{c}/{dom}{i}")
                rows["label"].append(c)
                rows["domain"].append(dom)
                rows["split"].append("test" if c == "street" else ("val" if i == 0 else "train"))
                rows["class_split"].append("unseen" if c == "street" else "seen")
                rows["view"].append(-1 if dom != "scene" else 0)
                rows["flip"].append(False)
    return pa.Table.from_pydict(rows)


def test_unseen_classes_never_reach_the_pair_sampler():
    index = training_index(_index()).to_pydict()  # what a method's fit sees
    data = pair_data(torch.randn(len(index["label"]), 4), index)
    assert data.classes == ["bedroom", "kitchen"]
    label, split = np.asarray(index["label"]), np.asarray(index["split"])
    used = np.concatenate([data.query_rows.numpy(), data.render_rows.numpy()])
    assert set(label[used]) == {"bedroom", "kitchen"} and set(split[used]) == {"train"}
    q, r, nr, nq, lab, neg = data.sample(torch.Generator().manual_seed(0), per_query=20)
    names = np.asarray(data.classes)
    assert (label[q.numpy()] == names[lab.numpy()]).all() and (label[r.numpy()] == names[lab.numpy()]).all()
    assert (label[nr.numpy()] == names[neg.numpy()]).all() and (label[nq.numpy()] == names[neg.numpy()]).all()
    assert (lab != neg).all() and np.isin(np.asarray(index["domain"])[r.numpy()], ["scene"]).all()
    assert len(q) == 20 * len(data.query_rows)


def test_hard_negative_mining_picks_the_closest_other_class_item():
    anchors = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    pool = torch.tensor([[0.1, 0.0], [1.0, 0.0], [3.0, 0.0], [9.0, 9.0], [50.0, 50.0]])
    pool_labels = torch.tensor([0, 1, 1, 0, 1])
    # anchor 0 (class 0): its closest item is class 0, the closest other-class one is row 1; anchor 1
    # (class 1): row 3 is the closest of class 0; an anchor whose class fills the pool gets -1
    assert hardest_negatives(anchors, torch.tensor([0, 1]), pool, pool_labels).tolist() == [1, 3]
    assert hardest_negatives(anchors[:1], torch.tensor([0]), pool[[0, 3]], torch.tensor([0, 0])).tolist() == [-1]


def test_mined_tuples_take_the_hardest_render_of_the_pool_as_negative():
    index = training_index(_index(n_per=6)).to_pydict()
    feats = torch.randn(len(index["label"]), 4)
    data = mined(pair_data(feats, index), tuples=40, pool_size=10_000)  # the pool holds every train render
    data.model = torch.nn.Identity()
    data.model.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))  # embed() reads the device off a parameter
    q, r, nr, _, lab, neg = data.sample(torch.Generator().manual_seed(0), per_query=1)
    assert len(q) == 40 and (lab != neg).all()
    renders, render_labels = data.render_rows, data.render_labels
    for a, n, la in zip(q.tolist(), nr.tolist(), lab.tolist()):
        other = renders[render_labels != la]
        best = other[torch.cdist(feats[a : a + 1], feats[other]).argmin()].item()
        assert n == best
    # anchors are queries and renders (render-render pairs beside query-render ones)
    domain = np.asarray(index["domain"])[q.numpy()]
    assert "scene" in set(domain) and set(domain) - {"scene"}


def test_pair_data_needs_two_classes_and_their_semantics():
    index = training_index(_index()).to_pydict()
    only_one = {k: [v for v, lab in zip(vals, index["label"]) if lab != "kitchen"] for k, vals in index.items()}
    with pytest.raises(DataError, match="needs two classes with train queries and train renders, found 1"):
        pair_data(torch.randn(len(only_one["label"]), 4), only_one)
    with pytest.raises(DataError, match="no vector for the training class 'kitchen'"):
        pair_data(torch.randn(len(index["label"]), 4), index, {"bedroom": np.ones(2, np.float32)})
    sem = pair_data(torch.randn(len(index["label"]), 4), index, {"bedroom": np.array([1, 5], np.float32), "kitchen": np.array([3, 5], np.float32)}).semantics
    torch.testing.assert_close(sem, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))  # standardised; a constant attribute stays 0


def test_pair_training_resumes_to_the_same_weights(tmp_path):
    index = training_index(_index(n_per=8)).to_pydict()
    feats = feature_nets.scale_descriptors(torch.randn(len(index["label"]), 6, generator=torch.Generator().manual_seed(0)))
    data = pair_data(feats, index)
    cfg = TrainConfig(epochs=3, patience=10, batch_size=8, device="cpu")

    def trained(ckpt, epochs, seed_net=0):
        torch.manual_seed(seed_net)
        net = feature_nets.TwoBranchHead(6, 8, 4)
        from scenesearch.methods.siamese import contrastive_step

        train_pairs(net, data, lambda n, b: contrastive_step(n, b, 1.0), dataclasses.replace(cfg, epochs=epochs), ckpt, 0, "h", per_query=2, progress=False)
        return net.state_dict()

    straight = trained(tmp_path / "a", 3)
    trained(tmp_path / "b", 1)
    resumed = trained(tmp_path / "b", 3, seed_net=99)  # another init: the checkpoint's weights must win
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k])
