"""VSRN: region reasoning (GCN) and the caption decoder against naive loops, the global
reasoning GRU against its written-out recurrence, the auxiliary caption loss, gradients,
training on the tiny world and reloading a trained model."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.core.encoders.caption_decoder import AttentionCaptionDecoder
from xmrbench.core.encoders.gcn import RegionGCN, RegionReasoning
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.registry import MODELS
from xmrbench.core.models.vsrn import VSRN, caption_image_index
from xmrbench.data.registry import DATASETS
from xmrbench.engine.inputs import PreparedData
from xmrbench.recipe.resolve import resolve

from support import base_recipe, train_and_check_reload

DIMS = InputDims(image_dim=10, vocab_size=20, n_regions=5)


def aux_loss(model, *, images, text, img_emb, txt_emb, labels, image_ids=None):
    """``model.auxiliary_loss`` of a batch given by its parts."""
    from xmrbench.core.models.base import TrainBatch

    ids = image_ids if image_ids is not None else torch.arange(len(images))
    return model.auxiliary_loss(TrainBatch(images=images, text=text, labels=labels, image_ids=ids, caption_ids=None),
                                img_emb, txt_emb)


def small_vsrn(**kw) -> VSRN:
    params = dict(embed_dim=8, word_dim=6, gcn_layers=2, decoder_hidden=7, decoder_word_dim=5, decoder_dropout=0.0)
    params.update(kw)
    return VSRN(VSRN.Params(**params), DIMS)


def randomise_batch_norm(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-zero scale/shift and running statistics, so that every term of a layer shows."""
    for bn in [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm1d)]:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def linear(layer: torch.nn.Linear, x: list[float]) -> list[float]:
    w, b = layer.weight.tolist(), (layer.bias.tolist() if layer.bias is not None else None)
    return [sum(w[o][i] * x[i] for i in range(len(x))) + (b[o] if b else 0.0) for o in range(len(w))]


@torch.no_grad()
def naive_gcn_layer(layer: RegionGCN, regions: torch.Tensor, *, train: bool) -> torch.Tensor:
    """Eq. 1-3 with explicit loops over images, regions and channels."""
    n_img, n_reg, dim = regions.shape
    v = regions.tolist()
    proj = []
    for b in range(n_img):
        phi = [linear(layer.phi, v[b][i]) for i in range(n_reg)]
        psi = [linear(layer.psi, v[b][j]) for j in range(n_reg)]
        g = [linear(layer.g, v[b][j]) for j in range(n_reg)]
        for i in range(n_reg):
            affinity = [sum(p * q for p, q in zip(phi[i], psi[j])) / n_reg for j in range(n_reg)]
            propagated = [sum(affinity[j] * g[j][c] for j in range(n_reg)) for c in range(len(g[0]))]
            proj.append(linear(layer.w_r, propagated))
    out = torch.empty(n_img, n_reg, dim, dtype=torch.float64)
    for c in range(dim):
        for k, normed in enumerate(naive_batch_norm(layer.bn, c, [row[c] for row in proj], train=train)):
            b, i = divmod(k, n_reg)
            out[b, i, c] = normed + v[b][i][c]
    return out


def naive_batch_norm(bn: torch.nn.BatchNorm1d, c: int, column: list[float], *, train: bool) -> list[float]:
    """Channel ``c`` of a batch norm over the values ``column``: the batch's mean and biased
    variance in training, the running statistics otherwise."""
    if train:
        mean = sum(column) / len(column)
        var = sum((x - mean) ** 2 for x in column) / len(column)
    else:
        mean, var = float(bn.running_mean[c]), float(bn.running_var[c])
    return [(x - mean) / math.sqrt(var + bn.eps) * float(bn.weight[c]) + float(bn.bias[c]) for x in column]


@torch.no_grad()
def naive_gru_last(gru: torch.nn.GRU, seq: torch.Tensor) -> torch.Tensor:
    """The GRU recurrence written out: ``seq (T, D)`` -> last state ``(H,)``."""
    w_ih, w_hh = gru.weight_ih_l0.double(), gru.weight_hh_l0.double()
    b_ih, b_hh = gru.bias_ih_l0.double(), gru.bias_hh_l0.double()
    hid = gru.hidden_size
    h = torch.zeros(hid, dtype=torch.float64)
    for x in seq.double():
        gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:hid] + gh[:hid])
        z = torch.sigmoid(gi[hid : 2 * hid] + gh[hid : 2 * hid])
        n = torch.tanh(gi[2 * hid :] + r * gh[2 * hid :])
        h = (1 - z) * n + z * h
    return h


@torch.no_grad()
def naive_gru_cell(cell: torch.nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    hid = cell.hidden_size
    gi = cell.weight_ih.double() @ x + cell.bias_ih.double()
    gh = cell.weight_hh.double() @ h + cell.bias_hh.double()
    r = torch.sigmoid(gi[:hid] + gh[:hid])
    z = torch.sigmoid(gi[hid : 2 * hid] + gh[hid : 2 * hid])
    n = torch.tanh(gi[2 * hid :] + r * gh[2 * hid :])
    return (1 - z) * n + z * h


@torch.no_grad()
def naive_caption_nll(dec: AttentionCaptionDecoder, regions: torch.Tensor, tokens: list[int]) -> tuple[float, int]:
    """Sum of -log p over one caption's targets and their count, one region at a time."""
    regions = regions.double()
    n_reg = regions.shape[0]
    h = torch.tanh(dec.init_hidden.weight.double() @ regions.mean(0) + dec.init_hidden.bias.double())
    total = 0.0
    for t in range(len(tokens) - 1):
        att_h = dec.att_hidden.weight.double() @ h
        scores = []
        for r in range(n_reg):
            feat = dec.att_feat.weight.double() @ regions[r] + dec.att_feat.bias.double()
            scores.append(float(dec.att_score.weight.double()[0] @ torch.tanh(feat + att_h)))
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        norm = sum(weights)
        context = sum(w / norm * regions[r] for r, w in enumerate(weights))
        word = dec.embed.weight.double()[tokens[t]]
        h = naive_gru_cell(dec.cell, torch.cat([word, context]), h)
        logits = (dec.out.weight.double() @ h + dec.out.bias.double()).tolist()
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[tokens[t + 1]]
    return total, len(tokens) - 1


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gcn_layer_matches_naive_loops(train, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = RegionGCN(4, inter_dim=3).double()
    randomise_batch_norm(layer, gen)
    layer.train(train)
    regions = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    assert torch.allclose(layer(regions), naive_gcn_layer(layer, regions, train=train), atol=1e-10)
    affinity = layer.affinity(regions)
    phi, psi = layer.phi(regions), layer.psi(regions)
    assert torch.allclose(affinity[1, 2, 4], (phi[1, 2] * psi[1, 4]).sum() / 5)


def test_untrained_gcn_is_the_identity():
    # the batch-norm scale and shift start at zero (released code): V* = V before training
    torch.manual_seed(0)
    stack = RegionReasoning(6, layers=3).eval()
    regions = torch.randn(2, 4, 6)
    assert torch.equal(stack(regions), regions)


@pytest.mark.parametrize("seed", [0, 1])
def test_caption_decoder_loss_matches_naive_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dec = AttentionCaptionDecoder(5, 12, word_dim=4, hidden_dim=6).double().eval()
    regions = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    captions = [[1, 5, 7, 2], [1, 9, 2], [1, 4, 4, 6, 11, 2]]  # different lengths: padding is masked
    longest = max(map(len, captions))
    tokens = torch.tensor([c + [0] * (longest - len(c)) for c in captions])
    lengths = torch.tensor([len(c) for c in captions])
    got = dec.loss(regions, tokens, lengths)
    terms = [naive_caption_nll(dec, regions[i], c) for i, c in enumerate(captions)]
    expected = sum(t for t, _ in terms) / sum(n for _, n in terms)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # each step predicts the next token: logits[:, t] scores tokens[:, t + 1]
    assert dec(regions, tokens).shape == (3, longest - 1, 12)


def test_image_embedding_is_last_gru_state_over_reasoned_regions():
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    model = small_vsrn().double()
    randomise_batch_norm(model, gen)
    model.eval()
    images = torch.rand(4, 5, 10, generator=gen, dtype=torch.float64)
    emb = model.encode_images(images)
    assert emb.shape == (4, 8) and torch.allclose(emb.norm(dim=1), torch.ones(4, dtype=torch.float64))
    # the reasoning stack by hand: fc -> per-region L2 norm -> GCN layers -> L2 norm
    fc = model.img_fc.fc
    regions = images @ fc.weight.T + fc.bias
    regions = regions / regions.norm(dim=-1, keepdim=True)
    for layer in model.reasoning.layers:
        regions = naive_gcn_layer(layer, regions, train=False)
    regions = regions / regions.norm(dim=-1, keepdim=True)
    assert torch.allclose(model.reason(images), regions, atol=1e-10)
    for b in range(4):
        last = naive_gru_last(model.gsr, regions[b])
        assert torch.allclose(emb[b], last / last.norm(), atol=1e-10)
    # regions are read in order: reversing them changes the embedding
    assert not torch.allclose(model.encode_images(images.flip(1)), emb)


def test_text_embedding_is_unit_norm_and_ignores_padding():
    torch.manual_seed(4)
    model = small_vsrn().eval()
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 3, 2]])
    emb = model.encode_texts(TextBatch(tokens=tokens, lengths=torch.tensor([4, 6])))
    alone = model.encode_texts(TextBatch(tokens=tokens[:1, :4], lengths=torch.tensor([4])))
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert torch.allclose(emb[:1], alone, atol=1e-6)


def test_caption_image_index():
    labels = (torch.tensor([0, 1, 2]), torch.tensor([2, 0, 0, 1]))
    assert caption_image_index(labels).tolist() == [2, 0, 0, 1]
    shuffled = (torch.tensor([7, 3]), torch.tensor([3, 3, 7]))
    assert caption_image_index(shuffled).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="caption 1"):
        caption_image_index((torch.tensor([0, 1]), torch.tensor([0, 5])))


def batch(gen: torch.Generator):
    images = torch.rand(3, 5, 10, generator=gen)
    tokens = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0], [1, 7, 8, 9, 2], [1, 4, 9, 2, 0]])
    text = TextBatch(tokens=tokens, lengths=torch.tensor([4, 3, 5, 4]))
    labels = (torch.arange(3), torch.tensor([2, 0, 1, 2]))
    return images, text, labels


def test_auxiliary_loss_generates_each_caption_from_its_image():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = small_vsrn(caption_weight=0.7)
    randomise_batch_norm(model, gen)
    images, text, labels = batch(gen)
    model.train()
    img_emb = model.encode_images(images)
    txt_emb = model.encode_texts(text)
    aux = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels)
    # one forward pass serves both losses: the batch-norm statistics moved once per layer
    assert all(int(layer.bn.num_batches_tracked) == 1 for layer in model.reasoning.layers)
    assert model._pending is None
    rows = torch.tensor([2, 0, 1, 2])  # each caption's image
    # recomputing the regions of the same batch in train mode gives the same batch statistics
    manual_train = 0.7 * model.decoder.loss(model.reason(images)[rows], text.tokens, text.lengths)
    assert torch.allclose(aux, manual_train, atol=1e-6)
    model.eval()
    img_emb = model.encode_images(images)
    aux_eval = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels)
    manual = 0.7 * model.decoder.loss(model.reason(images)[rows], text.tokens, text.lengths)
    assert torch.allclose(aux_eval, manual)
    # a permuted batch (images listed in another order) gives the same loss
    perm = torch.tensor([2, 0, 1])
    relabelled = (labels[0][perm], labels[1])
    aux_perm = aux_loss(model, images=images[perm], text=text, img_emb=img_emb, txt_emb=txt_emb, labels=relabelled)
    assert torch.allclose(aux_perm, aux_eval, atol=1e-6)


def test_cached_regions_equal_recomputed_ones_in_training():
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    model = small_vsrn()
    randomise_batch_norm(model, gen)
    images, text, labels = batch(gen)
    model.train()
    img_emb = model.encode_images(images)
    cached = model._pending[1]
    torch.manual_seed(0)
    with_cache = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=None, labels=labels)
    # without the cache the regions are recomputed (same batch statistics in train mode)
    torch.manual_seed(0)
    recomputed = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=None, labels=labels)
    assert torch.allclose(with_cache, recomputed, atol=1e-6)
    assert torch.allclose(model.reason(images), cached, atol=1e-6)
    # another batch's features are never taken from the cache
    model.encode_images(images)
    other = images + 1.0
    fresh = aux_loss(model, images=other, text=text, img_emb=img_emb, txt_emb=None, labels=labels)
    model.eval()
    assert not torch.allclose(fresh, with_cache)


def test_caption_weight_zero_drops_the_decoder():
    model = small_vsrn(caption_weight=0.0)
    assert model.decoder is None
    gen = torch.Generator().manual_seed(7)
    images, text, labels = batch(gen)
    img_emb = model.encode_images(images)
    aux = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=None, labels=labels)
    assert aux.item() == 0.0 and model._pending is None
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in small_vsrn().parameters())


def test_gradients_are_finite_and_reach_every_part():
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = small_vsrn()
    images, text, labels = batch(gen)
    model.train()
    img_emb, txt_emb = model.encode_images(images), model.encode_texts(text)
    matching = HardestNegativeLoss(HardestNegativeLoss.Params())(img_emb, txt_emb, sims=model.similarity(img_emb, txt_emb), labels=labels)
    caption = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels)
    (matching + caption).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # L_G reaches the reasoning layers (their batch-norm scale starts at zero, so it is the
    # first parameter of each layer with a gradient) and the decoder
    model.zero_grad()
    img_emb = model.encode_images(images)
    aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=None, labels=labels).backward()
    assert model.reasoning.layers[0].bn.weight.grad.abs().sum() > 0
    assert model.decoder.out.weight.grad.abs().sum() > 0
    assert model.txt_enc.embed.weight.grad is None or model.txt_enc.embed.weight.grad.abs().sum() == 0


def test_rejects_global_features():
    with pytest.raises(ValueError, match="region features"):
        small_vsrn().encode_images(torch.randn(3, 10))


def test_registered():
    assert MODELS["vsrn"] is VSRN



# --------------------------------------------------------------------------- end to end

def test_base_recipe_profiles_resolve(tmp_path):
    recipe = base_recipe(tmp_path, "vsrn", "aoq", "vsrn")
    full = resolve(recipe, profile="full", require_data=False).cells[0].config
    assert full.model.name == "vsrn" and full.model.params.embed_dim == 2048 and full.model.params.gcn_layers == 4
    assert full.loss.name == "hardest_negative" and full.loss.params.margin == 0.2
    assert full.train.lr == 0.0002 and full.train.select_by == "r1_r5"
    for profile in ("smoke", "quick"):
        cfg = resolve(recipe, profile=profile).cells[0].config
        assert cfg.data.name == "synthetic" and cfg.model.name == "vsrn"


@pytest.mark.slow
def test_trains_on_tiny_world_and_reloads_identically(tmp_path, one_thread):
    cfg = resolve(base_recipe(tmp_path, "vsrn", "aoq", "vsrn"), profile="smoke").cells[0].config
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, "regions", "tokens")
    train_and_check_reload(cfg, prepared, tmp_path)
