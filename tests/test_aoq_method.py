"""AOQ's training method: the online term is VSE++'s hardest-negative loss, offline
negatives come from the top of the candidate lists, the derived pairs are the ones Eq. 4
names, and each ablation of Table 3 changes exactly its term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.core.losses.aoq import QuintupletScores, adapoffquin, offquin, offtri
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.models.registry import MODELS
from xmrbench.data.registry import DATASETS
from xmrbench.engine.aoq_method import AOQMethod, draw_ranks, online_negatives, standard_triplet
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.methods import Progress, StepContext
from xmrbench.engine.train import build_method, make_batch
from xmrbench.errors import TrainingError
from xmrbench.recipe.config import validate_cell_config

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
CAPTIONS = np.array([0, 1, 5, 6, 7, 12, 20, 33, 34])  # images 0 (x2), 1 (x3), 2, 4, 6 (x2)


def cell(method: dict | None = None, model: str = "vsepp") -> dict:
    return {
        "data": {"size": "tiny", "train_images": 60},
        "model": {"name": model, "embed_dim": 16, "word_dim": 8, "image_input": "regions"}
        if model != "vsepp" else {"name": "vsepp", "embed_dim": 16, "word_dim": 8},
        "loss": None,
        "method": {"name": "aoq", "h": 20, **(method or {})},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.002},
        "eval": {"dev_images": 20},
    }


def setup_method(raw: dict):
    cfg = validate_cell_config(raw, where="test")
    image_input = "regions" if cfg.model.name != "vsepp" else "global"
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, image_input, "tokens")
    torch.manual_seed(0)
    model = MODELS[cfg.model.name](cfg.model.params, prepared.dims)
    method = build_method(cfg, model, None)
    assert isinstance(method, AOQMethod)
    method.setup()
    return method, prepared


def lists_for(prepared: PreparedData, width_t: int = 40, width_i: int = 10, seed: int = 0):
    """Candidate lists in the miner's layout: other images' captions / other images."""
    train = prepared.split("train")
    caption_image = train.caption_image()
    rng = np.random.default_rng(seed)
    i2t = np.stack([rng.permutation(np.flatnonzero(caption_image != i))[:width_t] for i in range(train.n_images)])
    t2i = np.stack([rng.permutation(np.flatnonzero(np.arange(train.n_images) != caption_image[j]))[:width_i]
                    for j in range(train.n_captions)])
    return {"i2t": torch.from_numpy(i2t).int(), "t2i": torch.from_numpy(t2i).int()}


def context(prepared: PreparedData, artifacts: dict | None = None, epoch: int = 1) -> StepContext:
    progress = Progress(epoch=epoch, n_epochs=3, batch=0, steps_per_epoch=5)
    return StepContext(progress, CPU, "test/aoq/seed0", {"candidates": artifacts} if artifacts else {},
                       prepared.split("train"))


@pytest.mark.parametrize("positives", ["pair", "image"])
def test_the_online_loss_is_the_hardest_negative_triplet(positives):
    method, prepared = setup_method(cell({"loss": "online", "positives": positives}))
    train = prepared.split("train")
    batch = make_batch(train, CAPTIONS, train.caption_image(), CPU)
    ours = method.training_loss(context(prepared), batch)
    model = method.model
    img, txt = model.encode_images(batch.images), model.encode_texts(batch.text)
    ref = HardestNegativeLoss(HardestNegativeLoss.Params(margin=0.2, positives=positives))(
        img, txt, sims=model.similarity(img, txt), labels=batch.labels)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert float(ours.detach()) > 0


def test_online_negatives_against_a_naive_loop():
    gen = torch.Generator().manual_seed(1)
    sims = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    txt_labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    labels = (torch.arange(4), txt_labels)
    for positives in ("pair", "image"):
        on = online_negatives(sims, labels, positives)
        for p in range(7):
            i = int(txt_labels[p])
            neg_t = [q for q in range(7) if (q != p if positives == "pair" else int(txt_labels[q]) != i)]
            neg_i = [r for r in range(7) if (r != p if positives == "pair" else int(txt_labels[r]) != i)]
            assert float(on["t_on"][p]) == max(float(sims[i, q]) for q in neg_t)
            assert float(on["i_on"][p]) == max(float(sims[int(txt_labels[r]), p]) for r in neg_i)
            assert float(on["pos"][p]) == float(sims[i, p])
        # Eq. 1 per pair against its loop
        std = standard_triplet(on["pp"], on["pos_pp"], 0.2)
        for p in range(7):
            i = int(txt_labels[p])
            want = sum(max(0.0, 0.2 - float(sims[i, p]) + float(on["pp"][p, q]))
                       for q in range(7) if not on["pos_pp"][p, q])
            want += sum(max(0.0, 0.2 - float(sims[i, p]) + float(on["pp"][r, p]))
                        for r in range(7) if not on["pos_pp"][r, p])
            assert float(std[p]) == pytest.approx(want, abs=1e-12)


def test_offline_draws_come_from_the_top_of_the_lists_and_never_describe_each_other():
    method, prepared = setup_method(cell({"h": 7, "h_images": 3}))
    train = prepared.split("train")
    caption_image = train.caption_image()
    lists = lists_for(prepared)
    batch = make_batch(train, np.arange(0, 60, 2), caption_image, CPU)
    ctx = context(prepared, lists)
    seen_t, seen_i = set(), set()
    torch.manual_seed(3)
    for _ in range(30):
        draw = method.sample_offline(ctx, batch)
        for p, cap in enumerate(batch.caption_ids.tolist()):
            img = caption_image[cap]
            t_off, i_off = int(draw["t_off"][p]), int(draw["i_off"][p])
            assert t_off in lists["i2t"][img, :7].tolist()
            assert i_off in lists["t2i"][cap, :3].tolist()
            assert caption_image[t_off] != i_off  # re-drawn when they correspond
            assert int(draw["i_tilde"][p]) == caption_image[t_off]
            assert caption_image[int(draw["t_tilde"][p])] == i_off
            seen_t.add(lists["i2t"][img, :7].tolist().index(t_off))
            seen_i.add(lists["t2i"][cap, :3].tolist().index(i_off))
    assert seen_t == set(range(7)) and seen_i == set(range(3))  # every rank of the top-h is drawn


def test_normal_sampling_stays_in_the_list_and_favours_its_middle():
    torch.manual_seed(0)
    ranks = draw_ranks(20000, 100, "normal")
    assert int(ranks.min()) >= 0 and int(ranks.max()) < 100
    counts = torch.bincount(ranks, minlength=100)
    assert counts[40:60].sum() > 2 * counts[:20].sum()
    uniform = torch.bincount(draw_ranks(20000, 100, "uniform"), minlength=100)
    assert abs(int(uniform[:20].sum()) - 4000) < 300


@pytest.mark.parametrize("loss, kw", [
    ("offtri", {}), ("offquin", {}), ("adapoffquin", {}),
    ("offquin", {"online": False}), ("adapoffquin", {"reference": "positive"}),
    ("adapoffquin", {"derived": "online"}),
])
def test_one_step_is_the_named_equation_of_the_drawn_scores(loss, kw):
    """Recompute the step's loss from the same draws, scored pair by pair."""
    method, prepared = setup_method(cell({"loss": loss, **kw}))
    train = prepared.split("train")
    batch = make_batch(train, CAPTIONS, train.caption_image(), CPU)
    lists = lists_for(prepared)
    ctx = context(prepared, lists)
    torch.manual_seed(5)
    ours = method.training_loss(ctx, batch)
    torch.manual_seed(5)
    draw = method.sample_offline(ctx, batch)
    model = method.model
    img, txt = model.encode_images(batch.images), model.encode_texts(batch.text)
    enc_i = lambda idx: model.encode_images(train.image_batch(idx.numpy()))  # noqa: E731
    enc_t = lambda idx: model.encode_texts(train.text_batch(idx.numpy()))  # noqa: E731
    img_of = batch.labels[1]
    anchor = img[img_of]
    s = lambda a, b: (a * b).sum(-1)  # noqa: E731  (VSE++ scores: cosine of normalised embeddings)
    sims = img @ txt.t()
    on = online_negatives(sims, batch.labels, "pair")
    if kw.get("derived") == "online":
        ti, ii = on["t_on_idx"], on["i_on_idx"]
        pair_a = s(img[img_of[ii]], txt[ti])
        pair_b = s(img[img_of[ti]], txt[ii])
    else:
        pair_a = s(enc_i(draw["i_off"]), enc_t(draw["t_off"]))
        pair_b = s(enc_i(draw["i_tilde"]), enc_t(draw["t_tilde"]))
    scores = QuintupletScores(pos=s(anchor, txt), t_on=on["t_on"], i_on=on["i_on"],
                              t_off=s(anchor, enc_t(draw["t_off"])), i_off=s(enc_i(draw["i_off"]), txt),
                              pair_a=pair_a, pair_b=pair_b)
    margins = {"gamma1": 0.2, "gamma2": 0.0}
    if loss == "offtri":
        want = offtri(scores, **margins)
    elif loss == "offquin":
        want = offquin(scores, **margins, online=kw.get("online", True))
    else:
        want = adapoffquin(scores, **margins, alpha=0.3, beta=1.5, reference=kw.get("reference", "offline"))
    assert float(ours.detach()) == pytest.approx(float(want.sum().detach()), rel=1e-5)


def test_the_warm_up_epochs_descend_the_summed_hinges_for_every_loss():
    for loss in ("online", "adapoffquin"):
        method, prepared = setup_method(cell({"loss": loss, "warmup_epochs": 2}))
        train = prepared.split("train")
        batch = make_batch(train, CAPTIONS, train.caption_image(), CPU)
        lists = lists_for(prepared)
        model = method.model
        img, txt = model.encode_images(batch.images), model.encode_texts(batch.text)
        on = online_negatives(img @ txt.t(), batch.labels, "pair")
        want = float(standard_triplet(on["pp"], on["pos_pp"], 0.2).sum().detach())
        assert float(method.training_loss(context(prepared, lists, epoch=1), batch).detach()) == pytest.approx(want, rel=1e-6)
        after = float(method.training_loss(context(prepared, lists, epoch=2), batch).detach())
        assert after != pytest.approx(want, rel=1e-3)


def test_lists_that_do_not_fit_the_training_split_are_one_line_errors():
    method, prepared = setup_method(cell({"loss": "offtri", "h": 50}))
    train = prepared.split("train")
    batch = make_batch(train, CAPTIONS, train.caption_image(), CPU)
    with pytest.raises(TrainingError, match="names no artifact 'candidates'"):
        method.training_loss(context(prepared), batch)
    with pytest.raises(TrainingError, match="fewer than method.h = 50"):
        method.training_loss(context(prepared, lists_for(prepared)), batch)
    method, _ = setup_method(cell({"loss": "offtri"}))
    lists = lists_for(prepared)
    lists["i2t"] = lists["i2t"][:30]
    with pytest.raises(TrainingError, match="mined on other data") as err:
        method.training_loss(context(prepared, lists), batch)
    assert "\n" not in err.value.one_line()


def test_h_images_defaults_to_a_fifth_of_h():
    method, _ = setup_method(cell({"h": 35}))
    assert method.params.images_h == 7
    with pytest.raises(Exception, match="h_images"):
        validate_cell_config(cell({"h": 4}), where="test")
