"""VSRN (Li, Zhang, Li, Li, Fu, "Visual Semantic Reasoning for Image-Text Matching",
ICCV 2019) on precomputed region features.

Image side (Sections 3.1-3.2):

1. region features ``(B, R, D_in)`` -> a linear map to ``D`` (Xavier init), L2-normalised
   per region (``region_norm``, ``f30k_branch``: below);
2. region relationship reasoning (Eq. 1-3): ``gcn_layers`` residual graph convolutions
   whose affinity matrix comes from the regions' own embeddings,
   ``R_ij = phi(v_i) . psi(v_j) / R`` and ``V* = W_r (R V W_g) + V``
   (:mod:`xmrbench.core.encoders.gcn`); the reasoned regions are L2-normalised;
3. global semantic reasoning (Section 3.2): a GRU reads the reasoned regions in their
   stored order (detector-score order in precomp files); its last hidden state,
   L2-normalised, is the image embedding ``I``.

Text side: word embeddings + a GRU, last hidden state, L2-normalised. Similarity:
cosine. Matching loss ``L_M``: the max-violation hinge of VSE++ (``loss.name:
hardest_negative``, margin 0.2).

Caption generation (Section 3.3), added through :meth:`VSRN.auxiliary_loss`: every
caption of the batch is generated from the reasoned regions ``V*`` of its image,
``L_G = -sum_t log p(y_t | y_<t, V*)``, and training minimises
``L_M + caption_weight * L_G`` (the paper's ``L = L_M + L_G`` at weight 1).
``L_G`` back-propagates into the reasoning layers, which is its purpose.

Differences from the released code (docs/peers.md#vsrn). Each is a parameter whose
default is xmrbench's behaviour and whose other value is the release's:

- ``region_norm``: ``"region"`` (default) gives every region vector unit length, as for
  every other embedding; ``"channel"`` is the release's ``l2norm``, which normalises
  dimension 1 of its ``(B, R, D)`` region tensors, i.e. each channel across the
  regions, both after the projection and after the reasoning layers (on the tiny
  synthetic world the release's axis trained worse: test rsum 57 vs 89 with the smoke
  profile);
- ``f30k_branch``: ``False`` (default) is one image encoder for every dataset;
  ``True`` is what the release does for ``f30k_precomp`` only: the projected regions
  are not normalised, and the GRU's last state passes through a ``BatchNorm1d`` before
  its L2 normalisation;
- ``caption_loss_per``: ``"token"`` (default) divides the summed caption NLL by the
  number of target tokens, ``"caption"`` by the number of captions, as the release's
  ``LanguageModelCriterion`` does (it divides by the batch size, not by the tokens);
  the paper's ``L_G`` writes the sum;
- ``captioner``: ``"attend"`` (default) is a single GRU decoder with additive attention
  over ``V*``, started from ``tanh(W_0 mean_r v*_r)``, with dropout on the word
  embeddings and on the output state
  (:class:`~xmrbench.core.encoders.caption_decoder.AttentionCaptionDecoder`);
  ``"seq2seq"`` is the release's captioner: the regions projected to
  ``decoder_hidden`` and read by an encoder GRU, the decoder started from the
  encoder's last state, attending over the encoder's outputs, with dropout on the
  projected regions and on ``[word; context]``
  (:class:`~xmrbench.core.encoders.caption_decoder.Seq2SeqCaptionDecoder`).

Not a parameter: precomputed features only, no CNN or detector fine-tuning.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from xmrbench.core.encoders.caption_decoder import AttentionCaptionDecoder, Seq2SeqCaptionDecoder
from xmrbench.core.encoders.gcn import RegionReasoning
from xmrbench.core.encoders.image import FCImageEncoder
from xmrbench.core.encoders.text import GRUTextEncoder
from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch, TrainBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.params import Params


def caption_image_index(labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """For each caption of a batch, the row of its image: ``labels = (img_labels (B_img,),
    txt_labels (B_txt,))`` -> ``(B_txt,)`` long. Every caption's image must be in the batch
    exactly once (the engine's batches guarantee it)."""
    img_labels, txt_labels = (torch.as_tensor(x) for x in labels)
    match = txt_labels.to(img_labels.device)[:, None] == img_labels[None, :]
    counts = match.sum(1)
    if bool((counts != 1).any()):
        bad = int(torch.nonzero(counts != 1)[0, 0])
        raise ValueError(f"caption {bad} matches {int(counts[bad])} images of the batch; expected exactly one")
    return match.to(torch.int64).argmax(1)


class VSRN(RetrievalModel):
    """Visual semantic reasoning network; see the module docstring for the equations."""

    class Params(Params):
        embed_dim: int = Field(2048, ge=1)  # joint space, also the region and GCN width (docs/peers.md#vsrn)
        word_dim: int = Field(300, ge=1)
        gcn_layers: int = Field(4, ge=0)  # reasoning layers (4 in the paper)
        caption_weight: float = Field(1.0, ge=0)  # weight of L_G; 0 drops the caption decoder
        decoder_hidden: int = Field(512, ge=1)
        decoder_word_dim: int = Field(300, ge=1)
        decoder_dropout: float = Field(0.2, ge=0, lt=1)
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"
        # the released code's choices (module docstring, docs/peers.md#vsrn)
        region_norm: Literal["region", "channel"] = "region"
        f30k_branch: bool = False
        caption_loss_per: Literal["token", "caption"] = "token"
        captioner: Literal["attend", "seq2seq"] = "attend"

        hashed_when_set = ("region_norm", "f30k_branch", "caption_loss_per", "captioner")

    params: Params

    def __init__(self, params: VSRN.Params, dims: InputDims):
        super().__init__(params, dims)
        d = params.embed_dim
        self.img_fc = FCImageEncoder(dims.image_dim, d)
        self.reasoning = RegionReasoning(d, layers=params.gcn_layers)
        self.gsr = nn.GRU(d, d, batch_first=True)
        self.txt_enc = GRUTextEncoder(dims.vocab_size, word_dim=params.word_dim, embed_dim=d, pooling="last")
        decoder = Seq2SeqCaptionDecoder if params.captioner == "seq2seq" else AttentionCaptionDecoder
        self.decoder = (
            decoder(
                d,
                dims.vocab_size,
                word_dim=params.decoder_word_dim,
                hidden_dim=params.decoder_hidden,
                dropout=params.decoder_dropout,
                loss_per=params.caption_loss_per,
            )
            if params.caption_weight > 0
            else None
        )
        # f30k_branch: batch norm of the GRU's last state (no parameters drawn at random)
        self.state_bn = nn.BatchNorm1d(d) if params.f30k_branch else None
        # The reasoned regions of the last training batch, kept from encode_images for
        # auxiliary_loss of the same step (one forward pass serves both losses, as in
        # the paper; recomputing would also update the batch-norm statistics twice).
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def reason(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, R, D_in)`` -> reasoned, L2-normalised regions ``V* (B, R, D)`` (normalised
        per region or per channel, ``region_norm``)."""
        if images.dim() != 3:
            raise ValueError(f"VSRN needs region features (B, R, D); got shape {tuple(images.shape)}")
        axis = 1 if self.params.region_norm == "channel" else -1
        regions = self.img_fc(images)
        if not self.params.f30k_branch:
            regions = l2norm(regions, dim=axis)
        return l2norm(self.reasoning(regions), dim=axis)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, R, D_in)`` -> ``img_emb (B, D)``, unit norm: the GRU's last state over ``V*``
        (batch-normalised first with ``f30k_branch``)."""
        reasoned = self.reason(images)
        _, last = self.gsr(reasoned)
        if self.training and torch.is_grad_enabled():
            self._pending = (images, reasoned)
        state = last[-1] if self.state_bn is None else self.state_bn(last[-1])
        return l2norm(state)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """Token ids -> ``txt_emb (B, D)``, unit norm."""
        return l2norm(self.txt_enc(text.tokens, text.lengths))

    def word_embedding(self) -> nn.Embedding:
        """The caption encoder's token embedding (pretrained word vectors initialise it)."""
        return self.txt_enc.embed

    def _reasoned_for(self, images: torch.Tensor) -> torch.Tensor:
        """``V*`` of ``images``: the regions kept by the last training ``encode_images``
        call when it saw the same features, else computed afresh."""
        pending, self._pending = self._pending, None
        if pending is not None:
            seen, reasoned = pending
            if seen.shape == images.shape and torch.equal(seen, images.to(device=seen.device, dtype=seen.dtype)):
                return reasoned
        device = self.img_fc.fc.weight.device
        return self.reason(images.to(device))

    def auxiliary_loss(self, batch: TrainBatch, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``caption_weight * L_G`` (0-d): each caption ``batch.text.tokens (B_txt, L)`` generated
        from ``V*`` of its image among ``batch.images (B_img, R, D_in)``; ``batch.labels`` link
        captions to images."""
        if self.decoder is None:
            self._pending = None
            return img_emb.new_zeros(())
        reasoned = self._reasoned_for(batch.images)
        rows = caption_image_index(batch.labels).to(reasoned.device)
        tokens = batch.text.tokens.to(reasoned.device)
        return self.params.caption_weight * self.decoder.loss(reasoned[rows], tokens, batch.text.lengths)
