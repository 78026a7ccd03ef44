"""A3VSE: the attentive encoders of Eq. 1 (as xmrbench reads it) against naive loops,
mean pooling, the beta-weighted triplet objective of Eq. 2-3 against loops and a hand
case, each discriminator's log-likelihood (Eq. 4) by hand, the sign and scale of the
gradient the encoders receive through the reversal layer, gamma(p), and gradients of
the whole model."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from xmrbench.core.losses.a3vse import A3VSEAdversary, A3VSETripletLoss, domain_log_likelihood
from xmrbench.core.models.a3vse import A3VSE
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.reversal import progress_coefficient

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up dominates otherwise

DIMS = InputDims(image_dim=7, vocab_size=20, n_regions=4)
SIX = ("vvu", "ts", "vt", "vus", "vs", "vut")


def small_model(**kw) -> A3VSE:
    params = dict(embed_dim=6, word_dim=5, heads=3, context_dim=4)
    params.update(kw)
    return A3VSE(A3VSE.Params(**params), DIMS)


def texts() -> TextBatch:
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 10, 2], [1, 3, 2, 0, 0, 0], [1, 4, 11, 2, 0, 0]])
    return TextBatch(tokens=tokens, lengths=torch.tensor([4, 6, 3, 4]))


def dot(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y))


def matvec(m: list[list[float]], x: list[float]) -> list[float]:
    return [dot(row, x) for row in m]


def naive_weights(P: list, Q: list, items: list[list[float]], temperature: float) -> list[list[float]]:
    """Per head k: c = mean_i' tanh(Q_k x_i'), a_i = tanh(P_k x_i) . c, softmax_i(temperature a_i)."""
    out = []
    for p_k, q_k in zip(P, Q):
        keys = [[math.tanh(v) for v in matvec(q_k, x)] for x in items]
        context = [sum(key[c] for key in keys) / len(items) for c in range(len(q_k))]
        logits = [temperature * dot([math.tanh(v) for v in matvec(p_k, x)], context) for x in items]
        top = max(logits)
        exp = [math.exp(a - top) for a in logits]
        out.append([e / sum(exp) for e in exp])
    return out


def unit(x: list[float]) -> list[float]:
    norm = math.sqrt(dot(x, x))
    return [v / norm for v in x]


# ---------------------------------------------------------------------------------
# attentive encoders (Eq. 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_image_attention_matches_naive_loops_and_sums_to_one_per_head(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_model().double().eval()
    images = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    regions = model.image_regions(images)
    weights = model.img_att.weights(regions)
    assert weights.shape == (3, 3, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 3, dtype=torch.float64), atol=1e-12)
    P, Q = model.img_att.P.tolist(), model.img_att.Q.tolist()
    emb = model.encode_images(images)
    assert emb.shape == (3, 6)
    for b in range(3):
        items = regions[b].tolist()
        expected = naive_weights(P, Q, items, 1 / math.sqrt(4))  # unset temperature: 1 / sqrt(K')
        assert weights[b].tolist() == [pytest.approx(w, abs=1e-12) for w in expected]
        heads = [[sum(w[i] * items[i][d] for i in range(4)) for d in range(6)] for w in expected]
        mean = [sum(h[d] for h in heads) / 3 for d in range(6)]
        assert emb[b].tolist() == pytest.approx(unit(mean), abs=1e-12)


def test_text_attention_skips_padding_and_follows_the_temperature():
    torch.manual_seed(3)
    model = small_model(attn_temperature=2.5).double().eval()
    text = texts()
    words, mask = model.text_words(text)
    weights = model.txt_att.weights(words, mask)
    assert weights.shape == (4, 3, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(4, 3, dtype=torch.float64), atol=1e-12)
    assert torch.all(weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0)
    P, Q = model.txt_att.P.tolist(), model.txt_att.Q.tolist()
    for b, n in enumerate(text.lengths.tolist()):
        expected = naive_weights(P, Q, words[b, :n].tolist(), 2.5)
        assert weights[b, :, :n].tolist() == [pytest.approx(w, abs=1e-12) for w in expected]
    # more padding, or a text alone, changes nothing
    wider = TextBatch(tokens=torch.cat([text.tokens, torch.zeros(4, 3, dtype=torch.long)], 1), lengths=text.lengths)
    assert torch.allclose(model.encode_texts(wider), model.encode_texts(text), atol=1e-12)
    alone = TextBatch(tokens=text.tokens[2:3, :3], lengths=text.lengths[2:3])
    assert torch.allclose(model.encode_texts(alone), model.encode_texts(text)[2:3], atol=1e-12)


def test_projected_heads_are_the_concatenation_through_one_linear_map():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    model = small_model(head_combine="project").double().eval()
    images = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    regions = model.image_regions(images)
    weights = model.img_att.weights(regions)
    heads = torch.cat([weights[:, k, :, None].mul(regions).sum(1) for k in range(3)], dim=1)  # (B, K H)
    expected = model.img_att.proj(heads)
    assert torch.allclose(model.encode_images(images), expected / expected.norm(dim=1, keepdim=True), atol=1e-12)


def test_mean_pooling_is_the_plain_mean_over_regions_and_words():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = small_model(pooling="mean").double().eval()
    assert model.img_att.P is None and model.txt_att.P is None  # no attention parameters
    images = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    regions = model.image_regions(images)
    emb = model.encode_images(images)
    for b in range(3):
        mean = [sum(regions[b, i, d].item() for i in range(4)) / 4 for d in range(6)]
        assert emb[b].tolist() == pytest.approx(unit(mean), abs=1e-12)
    text = texts()
    words = model.txt_enc(text.tokens, text.lengths)
    txt_emb = model.encode_texts(text)
    for b, n in enumerate(text.lengths.tolist()):
        mean = [sum(words[b, i, d].item() for i in range(n)) / n for d in range(6)]
        assert txt_emb[b].tolist() == pytest.approx(unit(mean), abs=1e-12)


def test_bad_inputs_and_parameters_are_rejected():
    model = small_model()
    with pytest.raises(ValueError, match="region features"):
        model.encode_images(torch.zeros(2, 7))
    with pytest.raises(ValidationError):
        A3VSE.Params(heads=0)
    with pytest.raises(ValidationError):
        A3VSE.Params(attn_temperature=0.0)
    with pytest.raises(ValidationError):
        A3VSETripletLoss.Params(beta=1.5)
    with pytest.raises(ValidationError):
        A3VSEAdversary.Params(lambda_vt=-0.1)
    with pytest.raises(ValidationError):
        A3VSEAdversary.Params(lambda_xy=0.1)


# ---------------------------------------------------------------------------------
# triplet alignment (Eq. 2-3)


def naive_lp(a: list[list[float]], b: list[list[float]], margin: float, a_ids: list[int], b_ids: list[int],
             mean: bool = False) -> float:
    """Eq. 2 by loops: per positive pair, the hinge on the hardest negative text and on the
    hardest negative image, each found by scanning the batch; summed over the pairs (or
    averaged, Eq. 2's printed 1/L)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(len(b)) if a_ids[i] == b_ids[j]]
    total = 0.0
    for i, j in pairs:
        pos = dot(a[i], b[j])
        hard_b = -math.inf
        for j2 in range(len(b)):
            if b_ids[j2] != a_ids[i] and dot(a[i], b[j2]) > hard_b:
                hard_b = dot(a[i], b[j2])
        hard_a = -math.inf
        for i2 in range(len(a)):
            if a_ids[i2] != b_ids[j] and dot(a[i2], b[j]) > hard_a:
                hard_a = dot(a[i2], b[j])
        total += max(0.0, margin - pos + hard_b) + max(0.0, margin - pos + hard_a)
    return total / len(pairs) if mean else total


@pytest.mark.parametrize(("reduction", "expected"), [("sum", 0.32), ("mean", 0.16)])
def test_triplet_objective_by_hand(reduction, expected):
    """l^P of the annotated sims at margin 0.2 is 0.1 (summed over the two pairs); of the
    pseudo sims at 0.3, 0.4 + 0.2 + 0.6 = 1.2; l^tri = 0.8 * 0.1 + 0.2 * 1.2 = 0.32, and
    half of that when each l^P is averaged over its two pairs (Eq. 2's printed 1/L)."""
    loss = A3VSETripletLoss(A3VSETripletLoss.Params(triplet_reduction=reduction))
    sims = torch.tensor([[0.9, 0.5], [0.3, 0.6]], dtype=torch.float64)
    sims_u = torch.tensor([[0.4, 0.5], [0.1, 0.2]], dtype=torch.float64)
    dummy = torch.zeros(2, 3, dtype=torch.float64)
    value = loss(dummy, dummy, dummy, dummy, sims=sims, sims_u=sims_u)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_the_triplet_sums_over_the_batch_by_default():
    assert A3VSETripletLoss.Params().triplet_reduction == "sum"


@pytest.mark.parametrize(("seed", "reduction"), [(0, "sum"), (1, "sum"), (2, "mean")])
def test_triplet_objective_matches_naive_loops(seed, reduction):
    gen = torch.Generator().manual_seed(seed)

    def emb(n: int) -> torch.Tensor:
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
        return (x / x.norm(dim=1, keepdim=True)).requires_grad_()

    img, txt, img_u, sem = emb(3), emb(5), emb(4), emb(4)
    img_ids, txt_ids = [10, 11, 12], [10, 11, 12, 10, 12]  # two images with two captions each
    beta, alpha_vt, alpha_vs = 0.7, 0.4, 0.5
    loss = A3VSETripletLoss(A3VSETripletLoss.Params(alpha_vt=alpha_vt, alpha_vs=alpha_vs, beta=beta,
                                                    triplet_reduction=reduction))
    value = loss(img, txt, img_u, sem, labels=(torch.tensor(img_ids), torch.tensor(txt_ids)))
    mean = reduction == "mean"
    expected = (beta * naive_lp(img.tolist(), txt.tolist(), alpha_vt, img_ids, txt_ids, mean)
                + (1 - beta) * naive_lp(img_u.tolist(), sem.tolist(), alpha_vs, list(range(4)), list(range(4)), mean))
    assert value.item() == pytest.approx(expected, abs=1e-12)
    assert value.item() > 0
    value.backward()
    assert all(torch.isfinite(x.grad).all() for x in (img, txt, img_u, sem))


def test_beta_one_ignores_the_pseudo_pairs_and_beta_zero_the_annotated_ones():
    gen = torch.Generator().manual_seed(7)
    img, txt, img_u, sem = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    ids = list(range(3))
    for beta, (a, b, margin) in ((1.0, (img, txt, 0.2)), (0.0, (img_u, sem, 0.3))):
        loss = A3VSETripletLoss(A3VSETripletLoss.Params(beta=beta))
        expected = naive_lp(a.tolist(), b.tolist(), margin, ids, ids)
        assert loss(img, txt, img_u, sem).item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------
# domain discriminators (Eq. 4-8) and the gradient reversal


def log_sigmoid(z: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-z)))


def test_domain_log_likelihood_by_hand():
    """Logits 0 and ln 3 on domain A give D = 1/2 and 3/4; logit ln(1/3) on B gives D = 1/4."""
    value = domain_log_likelihood(torch.tensor([0.0, math.log(3.0)], dtype=torch.float64),
                                  torch.tensor([math.log(1 / 3)], dtype=torch.float64))
    assert value.item() == pytest.approx((math.log(0.5) + math.log(0.75)) / 2 + math.log(0.75), abs=1e-12)


def linear_adversary(**weights) -> A3VSEAdversary:
    """Six linear discriminators on 2-d features with hand-set weights ``(k, -1)`` and bias ``k / 10``
    (``k`` = 1..6 in the order of ``SIX``)."""
    adv = A3VSEAdversary(A3VSEAdversary.Params(disc_hidden=0, **weights), dim=2).double()
    with torch.no_grad():
        for k, name in enumerate(SIX, start=1):
            adv.discriminators[name].net.weight.copy_(torch.tensor([[float(k), -1.0]]))
            adv.discriminators[name].net.bias.fill_(k / 10)
    return adv


#: the four domains' features: v (2 items), vu (3), t (2), s (3)
FEATS = {
    "v": [[0.5, 0.1], [-0.2, 0.4]],
    "vu": [[0.3, -0.6], [0.0, 0.2], [-0.4, -0.1]],
    "t": [[0.7, 0.7], [0.1, -0.3]],
    "s": [[-0.5, 0.2], [0.2, 0.9], [0.6, -0.4]],
}
#: discriminator -> (domain A, domain B), as Eq. 5-7 pair them
PAIRS = {"vvu": ("v", "vu"), "ts": ("t", "s"), "vt": ("v", "t"), "vus": ("vu", "s"), "vs": ("v", "s"),
         "vut": ("vu", "t")}
LAMBDAS = {"vvu": 0.2, "ts": 0.1, "vt": 0.5, "vus": 0.5, "vs": 0.3, "vut": 0.3}


def hand_log_likelihood(k: int, a: str, b: str) -> float:
    """Eq. 4 for discriminator ``k`` (weights ``(k, -1)``, bias ``k / 10``) by explicit sums."""
    logit = lambda x: k * x[0] - x[1] + k / 10  # noqa: E731
    return (sum(log_sigmoid(logit(x)) for x in FEATS[a]) / len(FEATS[a])
            + sum(log_sigmoid(-logit(x)) for x in FEATS[b]) / len(FEATS[b]))


def run(adv: A3VSEAdversary, progress: float):
    feats = {key: torch.tensor(v, dtype=torch.float64, requires_grad=True) for key, v in FEATS.items()}
    terms = adv(feats["v"], feats["vu"], feats["t"], feats["s"], progress=progress)
    return terms, feats


def test_each_discriminator_is_eq4_on_its_own_pair_of_domains():
    terms, _ = run(linear_adversary(), 0.5)
    assert set(terms.log_likelihood) == set(SIX)
    total = 0.0
    for k, name in enumerate(SIX, start=1):
        expected = hand_log_likelihood(k, *PAIRS[name])
        assert terms.log_likelihood[name].item() == pytest.approx(expected, abs=1e-12), name
        total += LAMBDAS[name] * expected  # the default weights are Sec. 4.3's
    assert terms.loss.item() == pytest.approx(-total, abs=1e-12)  # the discriminators minimise -l^adv


def test_a_zero_weight_switches_its_discriminator_off():
    terms, _ = run(linear_adversary(lambda_vvu=0.0, lambda_ts=0.0), 0.5)
    assert set(terms.log_likelihood) == {"vt", "vus", "vs", "vut"}
    expected = sum(LAMBDAS[n] * hand_log_likelihood(k, *PAIRS[n]) for k, n in enumerate(SIX, 1) if n in terms.log_likelihood)
    assert terms.loss.item() == pytest.approx(-expected, abs=1e-12)


@pytest.mark.parametrize("progress", [0.0, 0.2, 1.0])
def test_encoders_receive_minus_gamma_times_the_discriminator_side_gradient(progress):
    """One discriminator (v vs t, weight 1/2): d(-l^adv)/d v_i = -(1/2) (1 - D(v_i)) w / |V| and
    d(-l^adv)/d t_j = (1/2) D(t_j) w / |T| on the discriminator's side; the features get
    -gamma(p) times that. The discriminator's own gradient does not depend on gamma."""
    zero_others = {f"lambda_{n}": 0.0 for n in SIX if n != "vt"}
    adv = linear_adversary(**zero_others)
    terms, feats = run(adv, progress)
    terms.loss.backward()
    gamma = 2 / (1 + math.exp(-10 * progress)) - 1
    assert terms.coef == pytest.approx(gamma, abs=1e-15)
    k, w, bias = 3, [3.0, -1.0], 0.3  # "vt" is the third discriminator
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    disc_grad_w, disc_grad_b = [0.0, 0.0], 0.0
    for key, sign in (("v", -1.0), ("t", 1.0)):
        n = len(FEATS[key])
        for i, x in enumerate(FEATS[key]):
            d = sigmoid(k * x[0] - x[1] + bias)
            coeff = 0.5 * ((1 - d) if sign < 0 else d) / n  # |d(-l^adv)/d logit|
            disc_side = [sign * coeff * wd for wd in w]
            assert feats[key].grad[i].tolist() == pytest.approx([-gamma * g for g in disc_side], abs=1e-12)
            disc_grad_w = [g + sign * coeff * xd for g, xd in zip(disc_grad_w, x)]
            disc_grad_b += sign * coeff
    net = adv.discriminators["vt"].net
    assert net.weight.grad[0].tolist() == pytest.approx(disc_grad_w, abs=1e-12)
    assert net.bias.grad.item() == pytest.approx(disc_grad_b, abs=1e-12)
    # the other domains feed no discriminator here
    for key in ("vu", "s"):
        assert feats[key].grad is None or not feats[key].grad.any()


def test_all_six_reverse_the_gradient_of_the_same_loss_computed_without_reversal():
    adv = linear_adversary()
    terms, feats = run(adv, 0.3)
    terms.loss.backward()
    plain = {key: torch.tensor(v, dtype=torch.float64, requires_grad=True) for key, v in FEATS.items()}
    loss = 0.0
    for name, (a, b) in PAIRS.items():  # -l^adv straight from the discriminators, no reversal
        net = adv.discriminators[name].net
        loss = loss - LAMBDAS[name] * (torch.nn.functional.logsigmoid(net(plain[a])).mean()
                                       + torch.nn.functional.logsigmoid(-net(plain[b])).mean())
    loss.backward()
    gamma = progress_coefficient(0.3)
    for key in FEATS:
        assert torch.allclose(feats[key].grad, -gamma * plain[key].grad, atol=1e-12), key
        assert plain[key].grad.abs().max() > 1e-3


def test_gamma_by_hand():
    assert progress_coefficient(0.0) == 0.0
    assert progress_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1, abs=1e-15)
    assert progress_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1, abs=1e-15)
    adv = linear_adversary()
    for p in (0.0, 0.5, 1.0):
        assert run(adv, p)[0].coef == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1, abs=1e-15)


# ---------------------------------------------------------------------------------
# the whole model


@pytest.mark.parametrize("variant", [{}, {"head_combine": "project"}, {"pooling": "mean"}])
def test_forward_backward_gives_finite_gradients_to_every_parameter(variant):
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = small_model(**variant)
    adversary = A3VSEAdversary(A3VSEAdversary.Params(disc_hidden=8), dim=6)
    triplet = A3VSETripletLoss(A3VSETripletLoss.Params())
    images, images_u = torch.randn(3, 4, 7, generator=gen), torch.randn(4, 4, 7, generator=gen)
    captions, semantics = texts(), TextBatch(tokens=torch.randint(3, 20, (4, 5), generator=gen),
                                             lengths=torch.tensor([5, 2, 4, 3]))
    captions = TextBatch(tokens=torch.cat([captions.tokens, captions.tokens[:1]]),
                         lengths=torch.cat([captions.lengths, captions.lengths[:1]]))
    img, img_u = model.encode_images(images), model.encode_images(images_u)
    txt, sem = model.encode_texts(captions), model.encode_texts(semantics)
    assert img.shape == (3, 6) and img_u.shape == (4, 6) and txt.shape == (5, 6) and sem.shape == (4, 6)
    for emb in (img, img_u, txt, sem):
        assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-6)
    sims = model.similarity(img, txt)
    assert sims.shape == (3, 5)
    labels = (torch.arange(3), torch.tensor([0, 1, 2, 0, 0]))
    loss = triplet(img, txt, img_u, sem, sims=sims, labels=labels) + adversary(img, img_u, txt, sem, progress=0.4).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in [*model.named_parameters(), *adversary.named_parameters()]:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    for name in ("img_fc.weight", "txt_enc.rnn.weight_ih_l0", "txt_enc.embed.weight", "img_att.P", "txt_att.Q"):
        grads = dict(model.named_parameters())
        if name in grads:
            assert grads[name].grad.abs().max() > 0, name
    assert model.word_embedding() is model.txt_enc.embed
