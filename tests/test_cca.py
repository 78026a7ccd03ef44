"""Closed-form CCA: canonical correlations against an independent generalised
eigensolver, whitening properties of the projections, a hand-checked 2-D case, the
eigenvalue-power weighting, numerical failure modes and the engine's fit path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.cca import CCA, solve_cca, solve_cca_rows
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError, TrainingError
from xmrbench.recipe.config import validate_cell_config

from support import VectorPairs, assert_learns
from toy import toy_data

PairSplit = VectorPairs  # images, texts, caption -> image


def correlated_views(rng: np.random.Generator, n_images: int, dx: int, dy: int, *, shared: int = 3):
    """Images and captions (a varying number per image) driven by a shared latent factor."""
    latent = rng.normal(size=(n_images, shared))
    images = latent @ rng.normal(size=(shared, dx)) + 0.7 * rng.normal(size=(n_images, dx)) + 3.0
    per_image = rng.integers(1, 4, size=n_images)
    caption_image = np.repeat(np.arange(n_images), per_image)
    texts = latent[caption_image] @ rng.normal(size=(shared, dy)) + 0.9 * rng.normal(size=(len(caption_image), dy))
    return images, texts, caption_image


def pair_covariances(images, texts, caption_image):
    """Naive covariances over the explicitly listed (image, caption) pairs (ddof = 0)."""
    x = images[caption_image].astype(np.float64)
    y = texts.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)
    return xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n, x.mean(0), y.mean(0)


def ridge(cov: np.ndarray, reg: float) -> np.ndarray:
    return cov + reg * np.trace(cov) / len(cov) * np.eye(len(cov))


def fitted(images, texts, caption_image, **params) -> CCA:
    model = CCA(CCA.Params(**params), InputDims(image_dim=images.shape[1], vocab_size=0, text_dim=texts.shape[1]))
    model.fit(PairSplit(images, texts, caption_image))
    return model


@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_canonical_correlations_match_generalised_eigenproblem(reg):
    rng = np.random.default_rng(0)
    images, texts, caption_image = correlated_views(rng, 300, 7, 5)
    cxx, cyy, cxy, _, _ = pair_covariances(images, texts, caption_image)
    k = 4
    w_x, w_y, rho = solve_cca(
        torch.from_numpy(cxx), torch.from_numpy(cyy), torch.from_numpy(cxy), dim=k, reg=reg
    )
    # independent derivation: [0 Cxy; Cyx 0] w = rho [Cxx 0; 0 Cyy] w, largest eigenvalues
    dx, dy = cxx.shape[0], cyy.shape[0]
    a = np.zeros((dx + dy, dx + dy))
    a[:dx, dx:], a[dx:, :dx] = cxy, cxy.T
    b = scipy.linalg.block_diag(ridge(cxx, reg), ridge(cyy, reg))
    expected = np.sort(scipy.linalg.eigh(a, b, eigvals_only=True))[::-1][:k]
    np.testing.assert_allclose(rho.numpy(), expected, atol=1e-6)
    # Gong et al.'s S W = S_diag W D: for two views its top eigenvalues are 1 + rho
    joint = scipy.linalg.block_diag(ridge(cxx, reg), ridge(cyy, reg)) + a
    gong = np.sort(scipy.linalg.eigh(joint, b, eigvals_only=True))[::-1][:k]
    np.testing.assert_allclose(1.0 + rho.numpy(), gong, atol=1e-6)
    # the directions satisfy the generalised eigen-equation themselves
    for i in range(k):
        w = np.concatenate([w_x[:, i].numpy(), w_y[:, i].numpy()])
        np.testing.assert_allclose(a @ w, rho[i].item() * (b @ w), atol=1e-8)


def test_fit_through_pairs_whitens_each_view_and_correlates_pairs():
    rng = np.random.default_rng(1)
    images, texts, caption_image = correlated_views(rng, 250, 6, 5)
    model = fitted(images, texts, caption_image, dim=5, reg=0.0, power=0.0)
    x = images[caption_image].astype(np.float64)
    proj_x = (x - model.mean_img.double().numpy()) @ model.proj_img.double().numpy()
    proj_y = (texts - model.mean_txt.double().numpy()) @ model.proj_txt.double().numpy()
    n = len(x)
    # uncorrelated within each view, unit variance (population normalisation)
    np.testing.assert_allclose(proj_x.T @ proj_x / n, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(proj_y.T @ proj_y / n, np.eye(5), atol=1e-5)
    # the i-th pair of projections correlates with rho_i (naive Pearson per component)
    naive = [np.corrcoef(proj_x[:, i], proj_y[:, i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(naive, model.correlations.numpy(), atol=1e-5)
    assert np.all(np.diff(model.correlations.numpy()) <= 1e-7)
    # means are over pairs: an image with three captions counts three times
    np.testing.assert_allclose(model.mean_img.numpy(), x.mean(0), rtol=1e-5)


def test_hand_checked_two_dimensional_case():
    # x = (a, b) over the four sign patterns; the caption view is (a, a*b): the first
    # text coordinate copies x's first, the second is uncorrelated with both.
    images = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float64)
    texts = np.stack([images[:, 0], images[:, 0] * images[:, 1]], 1)
    model = fitted(images, texts, np.arange(4), dim=2, reg=0.0, power=0.0)
    np.testing.assert_allclose(model.correlations.numpy(), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.abs(model.proj_img[:, 0].numpy()), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.abs(model.proj_txt[:, 0].numpy()), [1.0, 0.0], atol=1e-6)
    # one component: every image embeds to +-1 by the sign of a, so does every caption
    one = fitted(images, texts, np.arange(4), dim=1, reg=0.0, power=4.0)
    img_emb = one.encode_images(torch.tensor(images, dtype=torch.float32))
    txt_emb = one.encode_texts(TextBatch(vectors=torch.tensor(texts, dtype=torch.float32)))
    sims = one.similarity(img_emb, txt_emb).numpy()
    expected = np.outer(np.sign(images[:, 0]), np.sign(texts[:, 0]))
    np.testing.assert_allclose(sims, expected, atol=1e-6)


@pytest.mark.parametrize("power", [0.0, 2.0, 4.0])
def test_embedding_is_normalised_weighted_projection(power):
    rng = np.random.default_rng(2)
    images, texts, caption_image = correlated_views(rng, 120, 5, 4)
    model = fitted(images, texts, caption_image, dim=3, reg=0.01, power=power)
    batch = torch.tensor(images[:7], dtype=torch.float32)
    got = model.encode_images(batch).double().numpy()
    proj = (images[:7] - model.mean_img.double().numpy()) @ model.proj_img.double().numpy()
    weighted = proj * (1.0 + model.correlations.double().numpy()) ** power
    naive = weighted / np.linalg.norm(weighted, axis=1, keepdims=True)
    np.testing.assert_allclose(got, naive, atol=1e-5)
    pairs = model.pair_scores(model.encode_images(batch), model.encode_images(batch))
    np.testing.assert_allclose(pairs.numpy(), np.ones(7), atol=1e-5)


def test_rank_deficient_features_need_regularisation():
    rng = np.random.default_rng(3)
    images, texts, caption_image = correlated_views(rng, 100, 4, 4)
    images = np.concatenate([images, images[:, :1]], 1)  # a duplicated column: singular covariance
    with pytest.raises(TrainingError, match="singular"):
        fitted(images, texts, caption_image, dim=2, reg=0.0)
    model = fitted(images, texts, caption_image, dim=2, reg=1e-3)
    rho = model.correlations.numpy()
    assert np.isfinite(rho).all() and (rho <= 1.0 + 1e-6).all() and (rho >= 0).all()


def test_zero_variance_view_and_bad_configurations():
    rng = np.random.default_rng(4)
    images, texts, caption_image = correlated_views(rng, 50, 4, 4)
    with pytest.raises(TrainingError, match="zero variance"):
        fitted(np.zeros_like(images), texts, caption_image, dim=2, reg=0.1)
    with pytest.raises(ConfigError, match="at most 4"):
        CCA(CCA.Params(dim=5), InputDims(image_dim=4, vocab_size=0, text_dim=9))
    with pytest.raises(ConfigError, match="text_input"):
        CCA(CCA.Params(dim=2), InputDims(image_dim=4, vocab_size=10, text_dim=None))
    unfitted = CCA(CCA.Params(dim=2), InputDims(image_dim=4, vocab_size=0, text_dim=4))
    with pytest.raises(TrainingError, match="before fit"):
        unfitted.encode_images(torch.zeros(1, 4))


def test_engine_fits_cca_in_closed_form_on_tfidf():
    raw = {
        "model": {"name": "cca", "dim": 8, "reg": 0.01, "power": 4.0},
        "loss": None,
        "eval": {"protocols": ["test", "testall_5fold"]},
    }
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(toy_data(), cfg.data, "global", "tfidf")
    out = train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    again = train_and_evaluate(cfg, 1, prepared, device=torch.device("cpu"))
    assert out.metrics == again.metrics  # closed form: no seed dependence
    assert out.best_epoch == 0 and out.curves["fit_s"][0] >= 0
    assert_learns(out.metrics["test"], 20, factor=3)  # chance on 20 images is 149.7; measured 555
    assert set(out.state_dict) >= {"proj_img", "proj_txt", "correlations", "mean_img", "mean_txt"}


def test_cca_needs_loss_null():
    raw = {"model": {"name": "cca"}, "loss": {"name": "hardest_negative"}}
    with pytest.raises(ConfigError, match="loss: null"):
        validate_cell_config(raw, where="test")


# -- the sample-space route (fewer training pairs than dimensions) ---------------------


def same_up_to_column_sign(a: np.ndarray, b: np.ndarray, rtol: float) -> np.ndarray:
    """``a`` equals ``b`` column by column up to a sign; returns the signs."""
    signs = np.sign((a * b).sum(0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(a * signs, b, rtol=rtol, atol=rtol * np.abs(b).max())
    return signs


@pytest.mark.parametrize("sizes", [(60, 45), (60, 12), (12, 60)])
def test_sample_space_solution_equals_the_covariance_solution(sizes):
    """With fewer pairs (35) than dimensions in a view, the sample-space solver gives the
    covariance route's correlations and directions, a component's sign shared by both views."""
    rng = np.random.default_rng(7)
    images, texts, caption_image = correlated_views(rng, 15, *sizes)
    x = images[caption_image].astype(np.float64)
    xc, yc = x - x.mean(0), texts - texts.mean(0)
    assert len(xc) < max(sizes)
    cxx, cyy, cxy, _, _ = pair_covariances(images, texts, caption_image)
    k = 5
    want = solve_cca(torch.from_numpy(cxx), torch.from_numpy(cyy), torch.from_numpy(cxy), dim=k, reg=0.05)
    got = solve_cca_rows(torch.from_numpy(xc), torch.from_numpy(yc), dim=k, reg=0.05)
    np.testing.assert_allclose(got[2].numpy(), want[2].numpy(), rtol=1e-9, atol=1e-12)
    signs = same_up_to_column_sign(got[0].numpy(), want[0].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(same_up_to_column_sign(got[1].numpy(), want[1].numpy(), rtol=1e-6), signs)


def test_fit_takes_the_sample_route_only_when_a_view_outnumbers_the_pairs(monkeypatch):
    """``fit`` of 40 pairs of 80-d images and 30-d texts uses the sample-space solver, and its
    similarities equal those of the covariance route; more pairs than dimensions keep the
    covariance route; a singular covariance is refused on both routes alike."""
    from xmrbench.core.models import cca as module

    assert module.use_sample_space(40, [80, 30]) and not module.use_sample_space(90, [80, 30])
    rng = np.random.default_rng(8)
    images, texts, caption_image = correlated_views(rng, 20, 80, 30)
    calls = []
    real = module.solve_cca_rows
    monkeypatch.setattr(module, "solve_cca_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    sample = fitted(images, texts, caption_image, dim=6, reg=0.02)
    assert calls, "the sample-space solver was not used"
    monkeypatch.setattr(module, "use_sample_space", lambda n, sizes: False)
    covariance = fitted(images, texts, caption_image, dim=6, reg=0.02)
    x = torch.tensor(images[:7], dtype=torch.float32)
    y = TextBatch(vectors=torch.tensor(texts[:9], dtype=torch.float32))
    np.testing.assert_allclose(sample.similarity(sample.encode_images(x), sample.encode_texts(y)).numpy(),
                               covariance.similarity(covariance.encode_images(x), covariance.encode_texts(y)).numpy(),
                               atol=1e-5)
    monkeypatch.undo()
    with pytest.raises(TrainingError, match="singular"):
        fitted(images, texts, caption_image, dim=6, reg=0.0)  # 80-d images of rank < 40: singular without a ridge


def test_more_components_than_the_sample_rank_fall_back_to_covariances():
    rng = np.random.default_rng(9)
    images, texts, caption_image = correlated_views(rng, 4, 30, 25)
    x = images[caption_image].astype(np.float64)
    xc, yc = torch.from_numpy(x - x.mean(0)), torch.from_numpy(texts - texts.mean(0))
    n = len(xc)
    w_x, w_y, rho = solve_cca_rows(xc, yc, dim=n + 2, reg=0.1)
    want = solve_cca(xc.t() @ xc / n, yc.t() @ yc / n, xc.t() @ yc / n, dim=n + 2, reg=0.1)
    np.testing.assert_allclose(rho.numpy(), want[2].numpy(), atol=1e-12)
    assert w_x.shape == (30, n + 2) and w_y.shape == (25, n + 2)
