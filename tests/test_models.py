"""Models: shapes, normalisation, the linear variant, blocked similarity of the similarity network."""

from __future__ import annotations

import pytest
import torch

from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.registry import MODELS
from xmrbench.core.models.two_branch import TwoBranchEmbedding, TwoBranchSimilarity
from xmrbench.core.models.vsepp import VSEPP

DIMS = InputDims(image_dim=12, vocab_size=30, text_dim=20)


def test_two_branch_embedding_is_unit_norm():
    torch.manual_seed(0)
    model = TwoBranchEmbedding(TwoBranchEmbedding.Params(hidden_dim=16, embed_dim=8), DIMS).eval()
    img = model.encode_images(torch.randn(5, 12))
    txt = model.encode_texts(TextBatch(vectors=torch.randn(7, 20)))
    assert img.shape == (5, 8) and txt.shape == (7, 8)
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    sims = model.similarity(img, txt)
    assert sims.shape == (5, 7) and sims.abs().max() <= 1 + 1e-5


def test_linear_variant_has_one_layer_per_branch():
    model = TwoBranchEmbedding(TwoBranchEmbedding.Params(hidden_dim=16, linear=True), DIMS)
    assert isinstance(model.img_branch.net, torch.nn.Linear)
    assert model.encode_images(torch.randn(3, 12)).shape == (3, 16)
    # linear: f(a x) = a f(x) up to the bias, so it cannot model non-linear structure
    x = torch.randn(4, 12)
    lin = model.img_branch.net
    assert torch.allclose(lin(2 * x) - lin.bias, 2 * (lin(x) - lin.bias), atol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("block", [50, 200, 1 << 24])  # tiles of 1 x 6, 2 x 11 and one tile of every pair
def test_similarity_network_tiles_equal_pairwise_scores(grad, block):
    torch.manual_seed(1)
    params = TwoBranchSimilarity.Params(hidden_dim=16, embed_dim=8, fc_dims=(6, 4), block_elements=block)
    model = TwoBranchSimilarity(params, DIMS).eval()
    with torch.set_grad_enabled(grad):
        img = model.encode_images(torch.randn(9, 12))
        txt = model.encode_texts(TextBatch(vectors=torch.randn(11, 20)))
        sims = model.similarity(img, txt)
    naive = torch.stack([torch.stack([model.pair_scores(img[i : i + 1], txt[j : j + 1])[0] for j in range(11)]) for i in range(9)])
    assert sims.shape == (9, 11) and sims.requires_grad == grad
    assert torch.allclose(sims, naive, atol=1e-6)


def test_vsepp_encodes_tokens():
    torch.manual_seed(2)
    model = VSEPP(VSEPP.Params(embed_dim=8, word_dim=6), DIMS).eval()
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    txt = model.encode_texts(TextBatch(tokens=tokens, lengths=torch.tensor([4, 3])))
    img = model.encode_images(torch.randn(2, 12))
    assert txt.shape == (2, 8) and img.shape == (2, 8)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)
    # padding does not change the encoding of a caption
    short = model.encode_texts(TextBatch(tokens=tokens[1:, :3], lengths=torch.tensor([3])))
    assert torch.allclose(short, txt[1:], atol=1e-6)


def test_registry_lists_models():
    assert {"vsepp", "two_branch_embedding", "two_branch_similarity"} <= set(MODELS)
