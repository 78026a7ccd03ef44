"""VSRN's options that select the released code's behaviour, each against a plain float64
re-derivation of what the release computes (docs/peers.md#vsrn), and each shown to differ
from xmrbench's default; the defaults keep every config hash and golden."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_vsrn import (
    aux_loss,
    batch,
    naive_batch_norm,
    naive_caption_nll,
    naive_gcn_layer,
    naive_gru_cell,
    naive_gru_last,
    randomise_batch_norm,
    small_vsrn,
)
from torch import nn

from xmrbench.core.encoders.caption_decoder import AttentionCaptionDecoder, Seq2SeqCaptionDecoder
from xmrbench.core.models.vsrn import VSRN
from xmrbench.recipe.config import validate_cell_config
from xmrbench.recipe.resolve import resolve

from support import base_recipe

NEW = {"region_norm": "channel", "f30k_branch": True, "caption_loss_per": "caption", "captioner": "seq2seq"}


def release_l2norm_dim1(x: torch.Tensor) -> torch.Tensor:
    """The release's ``l2norm``: ``x / sqrt(sum of squares over dimension 1)``, written per element."""
    out = torch.empty_like(x)
    n_img, n_reg, dim = x.shape
    for b in range(n_img):
        for c in range(dim):
            norm = math.sqrt(sum(float(x[b, r, c]) ** 2 for r in range(n_reg)))
            for r in range(n_reg):
                out[b, r, c] = x[b, r, c] / norm
    return out


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(sum(float(x) ** 2 for x in v))


@torch.no_grad()
def release_image_embedding(model: VSRN, images: torch.Tensor, *, f30k: bool, train: bool) -> torch.Tensor:
    """The release's ``EncoderImagePrecompAttn.forward`` for ``data_name`` f30k_precomp
    (``f30k``) or any other precomp set, with the model's weights."""
    fc = model.img_fc.fc
    regions = images.double() @ fc.weight.double().T + fc.bias.double()
    if not f30k:
        regions = release_l2norm_dim1(regions)
    for layer in model.reasoning.layers:
        regions = naive_gcn_layer(layer, regions, train=train)
    regions = release_l2norm_dim1(regions)
    states = torch.stack([naive_gru_last(model.gsr, regions[b]) for b in range(len(images))])
    if f30k:  # BatchNorm1d of the GRU's last state
        columns = [naive_batch_norm(model.state_bn, c, states[:, c].tolist(), train=train) for c in range(states.shape[1])]
        states = torch.tensor(columns, dtype=torch.float64).T
    return torch.stack([unit(s) for s in states])


def same_weights(model: VSRN, **params) -> VSRN:
    """A VSRN with other parameters and ``model``'s weights (any it lacks are left out)."""
    other = small_vsrn(**{**{k: getattr(model.params, k) for k in NEW}, **params}).double()
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("state_bn.") for k in unexpected)
    return other.train(model.training)


# --------------------------------------------------------------------------- 1. normalisation axis

@pytest.mark.parametrize("seed", [0, 1])
def test_channel_norm_is_the_release_l2norm_over_regions(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_vsrn(region_norm="channel").double()
    randomise_batch_norm(model, gen)
    model.eval()
    images = torch.rand(3, 5, 10, generator=gen, dtype=torch.float64)
    release = release_image_embedding(model, images, f30k=False, train=False)
    assert torch.allclose(model.encode_images(images), release, atol=1e-10)
    # each channel of V* has unit norm over the regions
    assert torch.allclose(model.reason(images).norm(dim=1), torch.ones(3, 8, dtype=torch.float64))
    # the previous behaviour (each region normalised) is not the release's
    previous = same_weights(model, region_norm="region").encode_images(images)
    assert (previous - release).abs().max() > 1e-3


# --------------------------------------------------------------------------- 2. Flickr30K branch

@pytest.mark.parametrize("train", [False, True])
def test_f30k_branch_is_the_release_f30k_precomp_encoder(train):
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    model = small_vsrn(region_norm="channel", f30k_branch=True).double()
    randomise_batch_norm(model, gen)  # the reasoning layers' and the state's batch norm
    model.train(train)
    images = torch.rand(4, 5, 10, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = model.encode_images(images)
    release = release_image_embedding(model, images, f30k=True, train=train)
    assert torch.allclose(got, release, atol=1e-10)
    # the previous behaviour: the projected regions normalised, no batch norm of the state
    with torch.no_grad():
        previous = same_weights(model, f30k_branch=False).encode_images(images)
    assert (previous - release).abs().max() > 1e-3


def test_f30k_branch_adds_only_the_state_batch_norm():
    plain, f30k = small_vsrn(), small_vsrn(f30k_branch=True)
    extra = set(f30k.state_dict()) - set(plain.state_dict())
    assert plain.state_bn is None and extra == {f"state_bn.{k}" for k in nn.BatchNorm1d(8).state_dict()}


# --------------------------------------------------------------------------- 3. caption-loss scale

CAPTIONS = [[1, 5, 7, 2], [1, 9, 2], [1, 4, 4, 6, 11, 2]]


def padded(captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, captions))
    return (torch.tensor([c + [0] * (longest - len(c)) for c in captions]),
            torch.tensor([len(c) for c in captions]))


def test_caption_loss_per_caption_divides_the_sum_by_the_batch_size():
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    dec = AttentionCaptionDecoder(5, 12, word_dim=4, hidden_dim=6, loss_per="caption").double().eval()
    regions = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    tokens, lengths = padded(CAPTIONS)
    terms = [naive_caption_nll(dec, regions[i], c) for i, c in enumerate(CAPTIONS)]
    summed, count = sum(t for t, _ in terms), sum(n for _, n in terms)
    release = summed / len(CAPTIONS)  # LanguageModelCriterion: sum(loss * mask) / batch_size
    assert dec.loss(regions, tokens, lengths).item() == pytest.approx(release, rel=1e-10)
    dec.loss_per = "token"
    previous = dec.loss(regions, tokens, lengths).item()
    assert previous == pytest.approx(summed / count, rel=1e-10) and abs(previous - release) > 1e-3


def test_model_passes_caption_loss_per_to_its_captioner():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    model = small_vsrn(caption_loss_per="caption", caption_weight=0.5).double().eval()
    images, text, labels = batch(gen)
    images = images.double()
    got = aux_loss(model, images=images, text=text, img_emb=model.encode_images(images), txt_emb=None, labels=labels)
    regions = model.reason(images).detach()
    captions = [text.tokens[i, : int(text.lengths[i])].tolist() for i in range(len(text.lengths))]
    rows = labels[1].tolist()  # image i is row i
    summed = sum(naive_caption_nll(model.decoder, regions[rows[i]], c)[0] for i, c in enumerate(captions))
    assert got.item() == pytest.approx(0.5 * summed / len(captions), rel=1e-10)


# --------------------------------------------------------------------------- 4. the captioner

class Doubling(nn.Module):
    """A deterministic stand-in for dropout: where it is applied shows in the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


@torch.no_grad()
def release_caption_nll(dec: Seq2SeqCaptionDecoder, regions: torch.Tensor, tokens: list[int], *, drop) -> float:
    """The release's ``S2VTAttModel`` in training mode for one caption, one step and one
    region at a time: ``vid2hid`` + input dropout, the encoder GRU, the decoder from the
    encoder's last state, attention ``linear2(tanh(linear1([o_r; h])))`` over the encoder
    outputs, input dropout on ``[word; context]``, ``log_softmax(out(h))``; the summed NLL."""
    regions = regions.double()
    w_u, b_u = dec.enc_proj.weight.double(), dec.enc_proj.bias.double()
    projected = torch.stack([drop(w_u @ v + b_u) for v in regions])
    outputs = [naive_gru_last(dec.enc_rnn, projected[: r + 1]) for r in range(len(projected))]
    h = outputs[-1]
    w_a, b_a, w_s = dec.att.weight.double(), dec.att.bias.double(), dec.att_score.weight.double()[0]
    total = 0.0
    for t in range(len(tokens) - 1):
        scores = [float(w_s @ torch.tanh(w_a @ torch.cat([o, h]) + b_a)) for o in outputs]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        context = sum(w / sum(weights) * o for w, o in zip(weights, outputs))
        word = dec.embed.weight.double()[tokens[t]]
        h = naive_gru_cell(dec.cell, drop(torch.cat([word, context])), h)
        logits = (dec.out.weight.double() @ h + dec.out.bias.double()).tolist()
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[tokens[t + 1]]
    return total


@pytest.mark.parametrize("stand_in", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_seq2seq_captioner_is_the_release_s2vt_model(seed, stand_in):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dec = Seq2SeqCaptionDecoder(5, 12, word_dim=4, hidden_dim=6).double().eval()
    if stand_in:
        dec.drop = Doubling()
    drop = dec.drop if stand_in else (lambda x: x)
    regions = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    tokens, lengths = padded(CAPTIONS)
    summed = sum(release_caption_nll(dec, regions[i], c, drop=drop) for i, c in enumerate(CAPTIONS))
    count = sum(len(c) - 1 for c in CAPTIONS)
    assert dec.loss(regions, tokens, lengths).item() == pytest.approx(summed / count, rel=1e-10)
    dec.loss_per = "caption"
    assert dec.loss(regions, tokens, lengths).item() == pytest.approx(summed / len(CAPTIONS), rel=1e-10)
    assert dec(regions, tokens).shape == (3, tokens.shape[1] - 1, 12)


def test_seq2seq_dropout_sits_where_the_release_puts_it():
    # dropout on the projected regions and on [word; context] only: with the stand-in at
    # the previous decoder's places (the word embedding and the output state) the loss differs
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    dec = Seq2SeqCaptionDecoder(5, 12, word_dim=4, hidden_dim=6).double().eval()
    dec.drop = Doubling()
    regions = torch.randn(1, 4, 5, generator=gen, dtype=torch.float64)
    caption = CAPTIONS[2]
    tokens, lengths = padded([caption])
    release = release_caption_nll(dec, regions[0], caption, drop=Doubling())
    assert dec.loss(regions, tokens, lengths).item() == pytest.approx(release / (len(caption) - 1), rel=1e-10)
    assert abs(release - release_caption_nll(dec, regions[0], caption, drop=lambda x: x)) > 1e-3


def test_model_with_seq2seq_captioner_generates_from_the_reasoned_regions():
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    model = small_vsrn(captioner="seq2seq").double()
    randomise_batch_norm(model, gen)
    model.eval()
    assert isinstance(model.decoder, Seq2SeqCaptionDecoder) and model.decoder.enc_proj.in_features == 8
    images, text, labels = batch(gen)
    images = images.double()
    got = aux_loss(model, images=images, text=text, img_emb=model.encode_images(images), txt_emb=None, labels=labels)
    regions = model.reason(images).detach()
    captions = [text.tokens[i, : int(text.lengths[i])].tolist() for i in range(len(text.lengths))]
    rows = labels[1].tolist()
    summed = sum(release_caption_nll(model.decoder, regions[rows[i]], c, drop=lambda x: x) for i, c in enumerate(captions))
    release = summed / sum(len(c) - 1 for c in captions)
    assert got.item() == pytest.approx(release, rel=1e-10)
    # the previous captioner (attention over V*, started from the mean region) is another computation
    torch.manual_seed(6)
    previous = small_vsrn(captioner="attend").double().eval()
    assert isinstance(previous.decoder, AttentionCaptionDecoder)
    got_prev = aux_loss(previous, images=images, text=text, img_emb=previous.encode_images(images), txt_emb=None,
                        labels=labels)
    assert abs(got_prev.item() - release) > 1e-3


def test_seq2seq_gradients_reach_the_reasoning_layers():
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    model = small_vsrn(**NEW, decoder_dropout=0.2)
    images, text, labels = batch(gen)
    model.train()
    img_emb = model.encode_images(images)
    aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=None, labels=labels).backward()
    assert model.reasoning.layers[0].bn.weight.grad.abs().sum() > 0
    for name, param in model.decoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- no hash or number changes

# computed before the options existed
HASHES = {"minimal": "096ad92864b4"}
MINIMAL = {"model": {"name": "vsrn"}, "loss": {"name": "hardest_negative"}}


def test_a_config_without_the_options_keeps_its_hash():
    assert validate_cell_config(MINIMAL, where="t").hash() == HASHES["minimal"]


def test_the_vsrn_preset_reproduces_the_release(tmp_path):
    """The recipes' VSRN preset selects every release choice; Flickr30K rows add its branch."""
    recipe = base_recipe(tmp_path, "vsrn", "aoq", "vsrn")
    for profile in ("smoke", "quick", "full"):
        model = resolve(recipe, profile=profile, require_data=False).cells[0].config.model.params
        assert (model.region_norm, model.caption_loss_per, model.captioner) == ("channel", "caption", "seq2seq")
        assert model.f30k_branch is False  # the base is not Flickr30K's
    full = resolve(recipe, profile="full", require_data=False).cells[0].config
    assert full.data.max_caption_len == 58 and full.data.tokenizer == "treebank"  # 60 with start and end
    for profile in ("smoke", "full"):
        cells = {c.id: c.config for c in resolve("aoq-table2", profile=profile, require_data=False).cells}
        assert cells["vsrn"].model.params.f30k_branch is True
        # AOQ's rows train through AOQ's method, whose online term takes the release's positives
        assert cells["vsrn"].loss is None and cells["vsrn"].method.params.positives == "pair"
        assert "f30k_branch" not in cells["scan-t2i"].to_dict()["model"]


@pytest.mark.parametrize("key", sorted(NEW))
def test_each_option_enters_the_hash_only_when_set(key):
    assert key in VSRN.Params.hashed_when_set
    default = VSRN.Params.model_fields[key].default
    at_default = validate_cell_config({**MINIMAL, "model": {"name": "vsrn", key: default}}, where="t")
    assert at_default.hash() == HASHES["minimal"] and key not in at_default.to_dict()["model"]
    changed = validate_cell_config({**MINIMAL, "model": {"name": "vsrn", key: NEW[key]}}, where="t")
    assert changed.hash() != HASHES["minimal"] and changed.to_dict()["model"][key] == NEW[key]


def test_goldens_still_hold(capsys):
    from xmrbench.gate import goldens

    reference = Path(__file__).resolve().parents[1] / "results" / "reference" / "goldens.json"
    assert goldens.main(["--check", str(reference)]) == 0
    assert "0 beyond tolerance" in capsys.readouterr().out
