"""ADAPT (Wehrmann, Kolling, Barros, "Adaptive Cross-Modal Embeddings for Image-Text
Alignment", AAAI 2020).

One modality's global vector adapts the per-position features of the other, and a
per-dimension softmax (the "fovea") pools them:

- image: each region feature projected linearly (the paper's one-dimensional
  convolution with filter size 1) and passed through a leaky ReLU (slope 0.1, "reduction
  of the negative values"), L2-normalised per region; ``V (R, D)``;
- caption: word embeddings and a bidirectional GRU whose forward and backward states are
  averaged, L2-normalised per word; ``C (L, D)``;
- ADAPT-T2I (``direction: t2i``): the caption's mean word vector ``c`` gives
  ``gamma = W_g c + b_g`` and ``beta = W_b c + b_b`` (Eq. 2, linear projections);
  the image's regions, batch-normalised (NORM of Eq. 1, only on the adapted modality,
  without affine parameters), are adapted, ``Vbar_i = V_i * gamma + beta`` (Eq. 6), and
  pooled, ``vbar = mean_i(softmax_i(lambda * Vbar) * Vbar)`` (Eq. 7: the softmax runs over
  the regions, independently for each dimension); the score is the cosine of ``vbar``
  and ``c``;
- ADAPT-I2T (``direction: i2t``): the mirror image, the mean region vector adapts the
  caption's words (batch-normalised over the valid words only), the softmax runs over
  the caption's valid words (Eq. 8-9), and the score is the cosine of the pooled caption
  and the mean region vector;
- ``fovea: false`` replaces the softmax-weighted pooling by plain average pooling
  (Table 3's "No Fovea"); ``learn_lambda: true`` makes ``lambda`` a parameter
  initialised at ``lambda_fovea`` (Table 3's Delta-lambda).

lambda sits inside the softmax (Eq. 7 and 9; Eq. 4 prints it outside, docs/errata.md).
``adapt_residual: true`` adapts as ``V * (gamma + 1) + beta``, the released code's form
(docs/peers.md#adapt); the default is Eq. 3 as printed.

Word embeddings (Table 4, ``embeddings``): ``rand`` (trained, U(-0.1, 0.1)), ``glove``
(pretrained vectors only), ``rand+glove`` (the two concatenated, the default).
``train_glove`` says whether the pretrained part is updated; the pretrained part reads
``data.word_vectors`` (``synthetic:DIM`` on the synthetic world, docs/data.md), of size
``glove_dim``.

The per-pair similarity is :mod:`xmrbench.core.sim.adapt_fovea`: a reference and a
blocked kernel with a stated memory bound; every (image, caption) pair needs its own
adapted vector, so the work grows with ``N_img * N_txt * positions * D`` exponentials.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xmrbench.core.encoders.image import FCImageEncoder
from xmrbench.core.models.base import InputDims, Padded, RetrievalModel, TextBatch
from xmrbench.core.sim.adapt_fovea import fovea_pair_scores, fovea_sims
from xmrbench.core.sim.cosine import l2norm
from xmrbench.params import Params

LEAKY_SLOPE = 0.1  # the leaky ReLU after the region projection (the released image encoder)


class ConcatWordEmbedding(nn.Module):
    """Token ids -> ``[trained random | pretrained]`` word vectors (either part optional).

    The pretrained part (``glove``) is the embedding that ``data.word_vectors`` initialises;
    it is frozen unless ``train_glove``.
    """

    def __init__(self, vocab_size: int, *, rand_dim: int, glove_dim: int, train_glove: bool):
        super().__init__()
        self.rand = nn.Embedding(vocab_size, rand_dim, padding_idx=0) if rand_dim else None
        self.glove = nn.Embedding(vocab_size, glove_dim, padding_idx=0) if glove_dim else None
        if self.rand is not None:
            nn.init.uniform_(self.rand.weight, -0.1, 0.1)
        if self.glove is not None:
            self.glove.weight.requires_grad_(train_glove)
        self.dim = rand_dim + glove_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        parts = [emb(tokens) for emb in (self.rand, self.glove) if emb is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class ADAPT(RetrievalModel):
    """ADAPT-T2I or ADAPT-I2T; the ensemble is a recipe ``ensemble:`` row."""

    class Params(Params):
        embed_dim: int = Field(1024, ge=1)
        direction: Literal["t2i", "i2t"] = "t2i"
        fovea: bool = True
        lambda_fovea: float = 10.0  # the softmax smoothing; the Flickr30K default of both directions
        learn_lambda: bool = False
        adapt_residual: bool = False  # True: V * (gamma + 1) + beta (the released code)
        embeddings: Literal["rand", "glove", "rand+glove"] = "rand+glove"
        word_dim: int = Field(300, ge=1)  # the trained random part
        glove_dim: int = Field(300, ge=1)  # the pretrained part (data.word_vectors)
        train_glove: bool = False
        num_layers: int = Field(1, ge=1)
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"
        sim_memory_mb: int = Field(512, ge=16)  # working-set budget of the similarity kernel (evaluation)

        @model_validator(mode="after")
        def _lambda_positive(self) -> ADAPT.Params:
            if self.fovea and self.lambda_fovea == 0:
                raise ValueError("lambda_fovea must be non-zero with the fovea on (fovea: false turns it off)")
            return self

    params: Params

    def __init__(self, params: Params, dims: InputDims):
        super().__init__(params, dims)
        p = params
        d = p.embed_dim
        self.img_enc = FCImageEncoder(dims.image_dim, d)
        self.embed = ConcatWordEmbedding(
            dims.vocab_size,
            rand_dim=p.word_dim if "rand" in p.embeddings else 0,
            glove_dim=p.glove_dim if "glove" in p.embeddings else 0,
            train_glove=p.train_glove,
        )
        self.rnn = nn.GRU(self.embed.dim, d, num_layers=p.num_layers, batch_first=True, bidirectional=True)
        # NORM of Eq. 1 on the adapted modality's positions, no affine parameters
        self.norm = nn.BatchNorm1d(d, affine=False)
        self.fc_gamma = nn.Linear(d, d)
        self.fc_beta = nn.Linear(d, d)
        if p.learn_lambda:
            self.lam = nn.Parameter(torch.tensor(float(p.lambda_fovea)))
        else:
            self.register_buffer("lam", torch.tensor(float(p.lambda_fovea)), persistent=False)

    # --- encoders ----------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 3:
            raise ValueError(f"ADAPT needs region features (B, R, D); got shape {tuple(images.shape)}")
        regions = l2norm(F.leaky_relu(self.img_enc(images), LEAKY_SLOPE))
        if self.params.direction == "t2i":
            b, r, d = regions.shape
            regions = self.norm(regions.reshape(b * r, d)).reshape(b, r, d)
        return regions

    def encode_texts(self, text: TextBatch) -> Padded:
        tokens, lengths = text.tokens, text.lengths
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        fwd, bwd = steps.chunk(2, dim=-1)
        words = Padded(l2norm((fwd + bwd) / 2), lengths)
        if self.params.direction == "i2t":
            mask = words.mask()
            normed = torch.zeros_like(words.data)
            normed[mask] = self.norm(words.data[mask])  # statistics over the valid words only
            words = Padded(normed, lengths)
        return words

    def word_embedding(self) -> nn.Embedding | None:
        """The pretrained part of the word embedding (``data.word_vectors`` initialises it)."""
        return self.embed.glove

    @property
    def requires_word_vectors(self) -> bool:
        return self.embed.glove is not None

    # --- similarity ----------------------------------------------------------------

    def _sides(self, img_emb: torch.Tensor, txt_emb: Padded) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(values, lengths, query vectors): for t2i the regions are adapted by each
        caption's mean word vector; for i2t the words by each image's mean region vector.
        The query vectors are also what each adapted vector is compared with."""
        if self.params.direction == "t2i":
            mask = txt_emb.mask().to(txt_emb.data.dtype)
            query = (txt_emb.data * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return img_emb, None, query
        return txt_emb.data, txt_emb.lengths, img_emb.mean(1)

    def _adaptation(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma, beta = self.fc_gamma(query), self.fc_beta(query)
        if self.params.adapt_residual:
            gamma = gamma + 1
        return gamma, beta

    def _lam(self) -> torch.Tensor | None:
        return self.lam if self.params.fovea else None

    def similarity(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """``img_emb (N_img, R, D)``, ``txt_emb`` Padded ``(N_txt, L, D)`` -> ``(N_img, N_txt)``."""
        values, lengths, query = self._sides(img_emb, txt_emb)
        gamma, beta = self._adaptation(query)
        sims = fovea_sims(values, lengths, gamma, beta, l2norm(query), self._lam(),
                          budget_bytes=self.params.sim_memory_mb * 2**20)
        return sims if self.params.direction == "t2i" else sims.t()

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """Aligned pairs: ``img_emb (P, R, D)``, ``txt_emb`` Padded ``(P, L, D)`` -> ``(P,)``."""
        values, lengths, query = self._sides(img_emb, txt_emb)
        gamma, beta = self._adaptation(query)
        return fovea_pair_scores(values, lengths, gamma, beta, l2norm(query), self._lam())

    def extra_repr(self) -> str:
        p = self.params
        return f"direction={p.direction}, fovea={p.fovea}, lambda={float(self.lam):.3g}, embeddings={p.embeddings}"

