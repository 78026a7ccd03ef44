"""Order-embeddings (Vendrov, Kiros, Fidler, Urtasun, "Order-Embeddings of Images and
Language", ICLR 2016), as the VSE++ release (Faghri et al., BMVC 2018) trains it with
``--measure order --use_abs``, on precomputed image features.

Encoders: VSE++'s (:class:`~xmrbench.core.models.vsepp.VSEPP`: a linear projection of
the image feature, a GRU over the words), each output L2-normalised and then replaced
by its absolute value (``use_abs``), so every embedding lies in the non-negative
orthant, where the reversed product order of the paper lives.

The partial order: a caption ``c`` is more abstract than the image ``x`` it describes,
and the pair satisfies the order when ``c <= x`` in every coordinate. A pair is
penalised by how far ``c`` sticks out above ``x``, the violation ``v = max(0, c - x)``
(elementwise), and ranked by the similarity ``S(x, c) = -E(x, c)``:

- ``order_penalty: norm`` (the default): ``E = ||v||_2``, the Euclidean norm of the
  violation, as the VSE++ release computes its order similarity (the negative of the
  square root of the summed squared violations, caption minus image);
- ``order_penalty: squared``: ``E = ||v||_2^2``, the paper's penalty.

Why the release's norm is the default: this model reproduces the Order-embeddings
baseline as VSE++ reports it (the option sets its release names "Order0" and
"Order++"), and those numbers come from the release's measure. Both penalties are 0 exactly on the pairs
that satisfy the order and rank any one query's candidates identically (one is the
square of the other, and both are non-negative), so evaluation metrics agree; only the
training signal differs (the hinge loss sees ``||v||`` against ``||v||^2``, with a
margin set on that scale). An order-satisfying pair scores 0, the largest similarity
there is. The gradient of the norm at a satisfied pair (``v = 0``) is taken as 0.

Training: the sum of hinges, ``loss.name: triplet_sum`` with ``loss.margin: 0.05``
(the margin of the release's "Order0" options), or the hardest negative
(``loss.name: hardest_negative``, the release's "Order++" row, which drops
``use_abs``). End-to-end CNN fine-tuning is not part of this model (precomputed
features only).

Memory: every caption against every image is an ``(n_img, n_txt, D)`` tensor of
violations (the evaluation scores 1,000 images against 5,000 or 25,000 captions at a
time: 5e9 or 2.6e10 elements at D = 1024). :meth:`OrderEmbeddings.similarity` works in
tiles of at most ``block_elements`` elements of it (2**24 by default, 128 MiB in
float64; a single pair is ``D`` elements, so the bound is ``max(block_elements, D)``).
Without gradients (evaluation) one tile is alive at a time and the scores are written
into the output as they come; with gradients (training batches) the tiles are kept
for the backward pass, as any similarity of the whole batch would be.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from xmrbench.core.models.base import TextBatch, pairwise_tiles
from xmrbench.core.models.vsepp import VSEPP


def order_violation_energy(img_emb: torch.Tensor, txt_emb: torch.Tensor, *, squared: bool) -> torch.Tensor:
    """``E`` of pairs broadcast along the last dimension: ``||max(0, txt - img)||_2`` (squared
    if asked). ``img_emb (..., D)``, ``txt_emb (..., D)`` -> ``(...)``, the broadcast shape."""
    diff = txt_emb - img_emb
    # in place when no gradient is recorded: one tile alive at a time
    violation = torch.relu(diff) if diff.requires_grad else diff.clamp_(min=0)
    energy = torch.linalg.vector_norm(violation, dim=-1)  # gradient 0 at a zero violation
    return energy.square() if squared else energy


class OrderEmbeddings(VSEPP):
    """VSE++'s encoders in the non-negative orthant, scored by the order violation; see the
    module docstring."""

    class Params(VSEPP.Params):
        use_abs: bool = True  # absolute value of each embedding after L2 normalisation
        order_penalty: Literal["norm", "squared"] = "norm"  # norm: the VSE++ release; squared: the paper
        block_elements: int = Field(1 << 24, ge=1)  # bound on (images x captions x dim) held at once

    params: Params

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D_in)`` -> ``img_emb (B, D)``: VSE++'s image embedding, then ``abs``."""
        emb = super().encode_images(images)
        return emb.abs() if self.params.use_abs else emb

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """Token ids -> ``txt_emb (B, D)``: VSE++'s caption embedding, then ``abs``."""
        emb = super().encode_texts(text)
        return emb.abs() if self.params.use_abs else emb

    def _energy(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        return order_violation_energy(img_emb, txt_emb, squared=self.params.order_penalty == "squared")

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``img_emb (N_img, D)``, ``txt_emb (N_txt, D)`` -> ``sims (N_img, N_txt)``, ``-E`` of every
        pair, in tiles of at most ``block_elements`` violation entries (one pair at least)."""
        return pairwise_tiles(img_emb, txt_emb, self.params.block_elements,
                              lambda img, txt: -self._energy(img, txt))

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs: ``img_emb (P, D)``, ``txt_emb (P, D)`` -> ``(P,)``, the
        diagonal of :meth:`similarity`."""
        return -self._energy(img_emb, txt_emb)
