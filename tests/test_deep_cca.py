"""Deep CCA: the DCCA objective (loss ``dcca``), the model ``deep_cca`` with its linear CCA
fitted after each epoch, and the recipe row two-branch-table2 / deep-cca."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmrbench.core.losses.dcca import DCCALoss, total_correlation
from xmrbench.core.losses.registry import LOSSES
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.deep_cca import DeepCCA
from xmrbench.core.models.registry import MODELS
from xmrbench.data.synthetic.load import load_synthetic
from xmrbench.engine.inputs import PreparedData
from xmrbench.errors import ConfigError
from xmrbench.gate.chance import chance_rsum
from xmrbench.recipe.config import validate_cell_config

from support import VectorPairs, assert_learns, cli, train_and_check_reload


def numpy_total_correlation(h1: np.ndarray, h2: np.ndarray, r1: float, r2: float, k: int | None = None) -> float:
    """Independent reference: whiten each view with the inverse of its Cholesky factor
    (not the symmetric inverse square root the loss uses; both leave the same singular
    values) and sum the singular values of the whitened cross-covariance."""
    m = len(h1)
    h1, h2 = h1 - h1.mean(0), h2 - h2.mean(0)
    l1 = np.linalg.cholesky(h1.T @ h1 / (m - 1) + r1 * np.eye(h1.shape[1]))
    l2 = np.linalg.cholesky(h2.T @ h2 / (m - 1) + r2 * np.eye(h2.shape[1]))
    t = np.linalg.solve(l1, h1.T @ h2 / (m - 1)) @ np.linalg.inv(l2).T
    s = np.linalg.svd(t, compute_uv=False)
    return float(s[:k].sum() if k is not None else s.sum())


def latent_views(rng: np.random.Generator, n: int, dims: tuple[int, int], noise: float,
                 strengths=(3.0, 2.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Two views of ``len(strengths)`` shared latent factors of distinct strength, plus noise."""
    latent = rng.normal(size=(n, len(strengths))) * np.asarray(strengths)
    x = latent @ rng.normal(size=(len(strengths), dims[0])) + noise * rng.normal(size=(n, dims[0]))
    y = latent @ rng.normal(size=(len(strengths), dims[1])) + noise * rng.normal(size=(n, dims[1]))
    return x, y


# ---------------------------------------------------------------------------------
# the objective


@pytest.mark.parametrize(("r1", "r2", "k"), [(0.0, 0.0, None), (1e-3, 1e-3, None), (0.1, 0.5, None), (1e-2, 1e-3, 2)])
def test_objective_is_the_total_canonical_correlation_computed_independently(r1, r2, k):
    rng = np.random.default_rng(0)
    h1, h2 = latent_views(rng, 200, (6, 5), noise=1.0)
    h1 = h1 + 3.0  # an offset the centring must remove
    value = total_correlation(torch.from_numpy(h1), torch.from_numpy(h2), r1=r1, r2=r2, k=k)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert float(value) == pytest.approx(numpy_total_correlation(h1, h2, r1, r2, k), rel=1e-10)
    # float32 inputs are promoted inside: the same value up to the inputs' rounding
    low = total_correlation(torch.from_numpy(h1).float(), torch.from_numpy(h2).float(), r1=r1, r2=r2, k=k)
    assert float(low) == pytest.approx(float(value), rel=1e-4)


def test_objective_is_the_sum_of_the_canonical_correlations():
    """On a low-noise case with well separated correlations, the unregularised objective equals
    the sum of the correlations of the canonical variates that scikit-learn's CCA finds."""
    from sklearn.cross_decomposition import CCA as SkCCA

    rng = np.random.default_rng(1)
    x, y = latent_views(rng, 2000, (3, 3), noise=0.7)
    u, v = SkCCA(n_components=3, scale=False, max_iter=10_000, tol=1e-12).fit(x, y).transform(x, y)
    rho = [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(3)]
    assert rho[0] > rho[1] > rho[2] > 0.3  # distinct canonical correlations
    value = float(total_correlation(torch.from_numpy(x), torch.from_numpy(y)))
    assert value == pytest.approx(sum(rho), rel=1e-4)
    assert float(total_correlation(torch.from_numpy(x), torch.from_numpy(y), k=1)) == pytest.approx(rho[0], rel=1e-4)


def test_identical_views_correlate_in_every_output_dimension():
    h = torch.randn(300, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(total_correlation(h, h)) == pytest.approx(7.0, rel=1e-9)
    # any invertible linear map of one view leaves the correlation alone
    mix = torch.randn(7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(total_correlation(h, h @ mix)) == pytest.approx(7.0, rel=1e-7)
    assert float(total_correlation(h, h @ mix, k=3)) == pytest.approx(3.0, rel=1e-7)


def test_loss_correlates_the_batchs_image_caption_pairs():
    """Engine batches hold unique images and captions labelled with their image: the loss
    pairs each caption with its image (an image with two captions counts twice)."""
    gen = torch.Generator().manual_seed(0)
    images, captions = torch.randn(40, 4, generator=gen), torch.randn(60, 4, generator=gen)
    caption_image = torch.cat([torch.arange(40), torch.arange(20)])[torch.randperm(60, generator=gen)]
    loss = LOSSES["dcca"](DCCALoss.Params(r1=1e-3, r2=1e-2))
    value = loss(images, captions, sims=images @ captions.T, labels=(torch.arange(40), caption_image))
    expected = total_correlation(images[caption_image], captions, r1=1e-3, r2=1e-2)
    assert float(value) == pytest.approx(-float(expected), rel=1e-12)
    # labels=None: row i with row i
    assert float(loss(images, captions[:40])) == pytest.approx(-float(total_correlation(images, captions[:40], r1=1e-3,
                                                                                      r2=1e-2)), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        loss(images[:1], captions[:1])


def test_gradient_is_finite_and_a_few_steps_raise_the_correlation():
    """Two small networks on views of shared latent factors: the negated correlation falls."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    x, y = (torch.from_numpy(a).float() for a in latent_views(rng, 512, (10, 8), noise=2.0))
    f = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    g = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    loss = DCCALoss(DCCALoss.Params())
    opt = torch.optim.Adam([*f.parameters(), *g.parameters()], lr=1e-2)
    values = []
    for _ in range(30):
        value = loss(f(x), g(y))
        opt.zero_grad()
        value.backward()
        grads = [p.grad for p in (*f.parameters(), *g.parameters())]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        assert any(float(gr.abs().max()) > 0 for gr in grads)
        opt.step()
        values.append(float(value.detach()))
    assert values[-1] < values[0] - 0.3, values
    assert -values[-1] <= 4.0  # never above the number of output dimensions


# ---------------------------------------------------------------------------------
# the model


def test_model_is_registered_and_its_encoders_switch_with_the_mode():
    assert MODELS["deep_cca"] is DeepCCA and LOSSES["dcca"] is DCCALoss
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    n = 80
    x, y = latent_views(rng, n, (7, 9), noise=0.5)
    caption_image = np.repeat(np.arange(n), 2)
    split = VectorPairs(x, np.repeat(y, 2, axis=0) + 0.1 * rng.normal(size=(2 * n, 9)), caption_image)
    model = DeepCCA(DeepCCA.Params(hidden_dim=16, embed_dim=6, cca_dim=4, cca_reg=0.0, cca_power=0.0),
                    InputDims(image_dim=7, vocab_size=0, text_dim=9))
    images, text = split.image_batch(np.arange(5)), split.text_batch(np.arange(10))
    assert model.training
    assert model.encode_images(images).shape == (5, 6)  # training mode: the network outputs H1
    model.after_epoch(split)
    assert model.training  # the mode is restored
    model.eval()
    img_emb, txt_emb = model.encode_images(images), model.encode_texts(text)
    assert img_emb.shape == (5, 4) and txt_emb.shape == (10, 4)
    assert torch.allclose(img_emb.norm(dim=1), torch.ones(5))  # cosine similarity
    # the fitted CCA is that of the networks' outputs over the training pairs
    with torch.no_grad():
        h1 = model.image_outputs(split.images)[torch.from_numpy(caption_image)]
        h2 = model.text_outputs(split.texts)
    rho = model.cca.correlations
    assert torch.all(rho[:-1] >= rho[1:])
    assert float(rho.sum()) == pytest.approx(float(total_correlation(h1, h2, k=4)), rel=1e-4)


def test_more_canonical_directions_than_outputs_is_a_config_error():
    with pytest.raises(ConfigError, match="model.embed_dim"):
        DeepCCA(DeepCCA.Params(embed_dim=8, cca_dim=9), InputDims(image_dim=5, vocab_size=0, text_dim=5))
    with pytest.raises(ConfigError, match="vector text features"):
        DeepCCA(DeepCCA.Params(), InputDims(image_dim=5, vocab_size=10))


def test_an_untrained_model_is_refused_before_its_cca_is_fitted():
    from xmrbench.errors import TrainingError

    model = DeepCCA(DeepCCA.Params(hidden_dim=8, embed_dim=4), InputDims(image_dim=5, vocab_size=0, text_dim=5)).eval()
    with pytest.raises(TrainingError, match="before fit"):
        model.encode_texts(TextBatch(vectors=torch.zeros(2, 5)))


TRAIN_RAW = {
    "data": {"size": "tiny"},
    "model": {"name": "deep_cca", "hidden_dim": 128, "embed_dim": 64},
    "loss": {"name": "dcca"},
    "train": {"epochs": 3, "batch_size": 500, "optimizer": "adam", "lr": 0.003},
}


@pytest.mark.slow
def test_trains_on_the_tiny_world_beats_random_and_reloads_identically(tmp_path, one_thread):
    """The engine fits the CCA after every epoch: the checkpointed best state holds it and
    rebuilds the same similarities."""
    cfg = validate_cell_config(TRAIN_RAW, where="test")
    prepared = PreparedData(load_synthetic(size="tiny"), cfg.data, "global", "tfidf")
    out = train_and_check_reload(cfg, prepared, tmp_path, min_ratio=4.0, atol=1e-5)
    assert out.curves["train_loss"][-1] < out.curves["train_loss"][0] < 0


# ---------------------------------------------------------------------------------
# the recipe row, end to end


@pytest.mark.slow
def test_the_deep_cca_row_learns_on_the_smoke_profile(tmp_path, capsys):
    """two-branch-table2 / deep-cca, smoke, seed 0 (measured seeds 0-2: test rsum 347-373;
    chance rsum of 100 images with 5 captions each: 31.6)."""
    code, out, err = cli(["reproduce", "two-branch-table2", "--profile", "smoke", "--seeds", "0", "--rows", "deep-cca",
                          "--results", str(tmp_path), "--quiet", "--threads", "1", "--no-report"], capsys)
    assert code == 0, err
    (path,) = (tmp_path / "two-branch-table2").glob("deep-cca--*.json")
    doc = json.loads(path.read_text())
    assert doc["config"]["model"]["name"] == "deep_cca" and doc["config"]["loss"]["name"] == "dcca"
    assert doc["config"]["train"]["batch_size"] >= 500
    assert_learns(doc["metrics"]["test"], 100, factor=2.5)
    assert doc["metrics"]["test"]["rsum"] > 2.5 * chance_rsum(100, 5)
