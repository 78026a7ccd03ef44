"""The interface every retrieval model implements, and the inputs it receives.

The engine knows models only through this interface:

- ``encode_images(images) -> img_emb``: ``images`` is ``(B, D_in)`` for global
  features or ``(B, R, D_in)`` for region features (``image_input``);
- ``encode_texts(text: TextBatch) -> txt_emb``: token ids or orderless vectors
  (``text_input``);
- ``similarity(img_emb, txt_emb) -> sims (N_img, N_txt)``: the score used both by
  the loss and for ranking. Embedding models use the dot product of L2-normalised
  vectors; cross-attention and per-pair models override it.

Declared training hooks. Every model has them (the base class gives the
defaults), so the training engine calls them without asking whether they exist:

- ``prepare_training(split)``: size parameters by the training split before
  training (DPC: one instance class per training image); default: nothing;
- ``auxiliary_loss(batch, img_emb, txt_emb) -> 0-d tensor | None``: a term added to
  the retrieval loss (VSRN's caption generation, DPC's instance loss); ``batch`` is
  the step's :class:`TrainBatch`; default: ``None`` (no term);
- ``closed_form`` (class attribute) and ``fit(split)``: a closed-form model (CCA) is
  fitted on the prepared training split instead of trained by gradient descent; its
  cells set ``loss: null``;
- ``after_epoch(split)``: a closed-form part of a model trained by gradient descent,
  fitted on the prepared training split after each epoch's last step, before the dev
  evaluation (Deep CCA's linear CCA on its networks' outputs); default: nothing;
- ``batch_extras`` (class attribute): names of per-image or per-caption arrays of the
  split's ``extras`` the model wants in ``TrainBatch.extras`` (class labels, say);
- ``word_embedding()``: the token embedding pretrained word vectors initialise
  (``data.word_vectors``), or None for a model without one (the default);
  ``requires_word_vectors``: True for a model that cannot train without them.

How the parameters are optimised (one optimiser or several, alternating steps,
coefficients that change with training progress) is not the model's business but
the training method's (``xmrbench/engine/methods.py``).

Encoders may return a tensor or a :class:`Padded` (variable-length word or region
features for cross-attention models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from xmrbench.core.sim.cross_attention import in_place_allowed
from xmrbench.params import Params


@dataclass(frozen=True)
class InputDims:
    """Sizes of the inputs a model is built for."""

    image_dim: int  # feature size of one global vector or one region
    vocab_size: int  # for token inputs
    text_dim: int | None = None  # for vector text inputs (tf-idf)
    n_regions: int | None = None


@dataclass
class TextBatch:
    """Captions as padded token ids ``(B, L)`` + ``lengths (B,)``, or as vectors ``(B, V)``."""

    tokens: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    vectors: torch.Tensor | None = None

    def to(self, device: torch.device) -> TextBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        # lengths stay on the CPU: pack_padded_sequence wants them there
        return TextBatch(move(self.tokens), self.lengths, move(self.vectors))

    def __len__(self) -> int:
        ref = self.tokens if self.tokens is not None else self.vectors
        return 0 if ref is None else int(ref.shape[0])


@dataclass
class Padded:
    """Variable-length features (words of captions, say): ``data (B, L, D)`` zero-padded
    after ``lengths (B,)`` valid steps. Models with word- or region-level outputs return
    this from an encoder; the engine concatenates and slices it like a tensor."""

    data: torch.Tensor
    lengths: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: slice | torch.Tensor) -> Padded:
        lengths = self.lengths[index]
        longest = int(lengths.max()) if len(lengths) else 0
        return Padded(self.data[index][:, :longest], lengths)

    def mask(self) -> torch.Tensor:
        """``(B, L)`` bool, True on valid steps."""
        steps = torch.arange(self.data.shape[1], device=self.data.device)
        return steps[None, :] < self.lengths.to(self.data.device)[:, None]

    def to(self, device: torch.device | str) -> Padded:
        return Padded(self.data.to(device), self.lengths)

    def float(self) -> Padded:
        return Padded(self.data.float(), self.lengths)

    def cpu(self) -> Padded:
        return Padded(self.data.cpu(), self.lengths.cpu())

    @staticmethod
    def cat(parts: list[Padded]) -> Padded:
        longest = max(p.data.shape[1] for p in parts)
        data = torch.cat([torch.nn.functional.pad(p.data, (0, 0, 0, longest - p.data.shape[1])) for p in parts])
        return Padded(data, torch.cat([p.lengths for p in parts]))


@dataclass
class TrainBatch:
    """One training batch as the model's hooks and the training methods see it.

    ``images`` and ``text`` are the encoder inputs, already on the training device;
    ``labels = (img_labels (B_img,), txt_labels (B_txt,))`` link each caption to its
    image in the batch; ``image_ids (B_img,)`` and ``caption_ids (B_txt,)`` index the
    batch's images and captions in their split (a global class id per training image,
    say); ``extras`` holds the per-item arrays named by ``batch_extras``; ``streams``
    the batches of the method's other data streams (``TrainingMethod.streams``), by
    name. An image-only stream has ``text``, ``labels`` and ``caption_ids`` set to None.
    """

    images: torch.Tensor
    text: TextBatch | None
    labels: tuple[torch.Tensor, torch.Tensor] | None
    image_ids: torch.Tensor
    caption_ids: torch.Tensor | None
    extras: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, TrainBatch] = field(default_factory=dict)


def concat(parts: list) -> torch.Tensor | Padded:
    """Concatenate encoder outputs along the batch: tensors or :class:`Padded`."""
    return Padded.cat(parts) if isinstance(parts[0], Padded) else torch.cat(parts)


def pairwise_tiles(img_emb: torch.Tensor, txt_emb: torch.Tensor, budget: int, score) -> torch.Tensor:
    """``sims (N_img, N_txt)`` of a pairwise score computed tile by tile: ``score(img (r, 1, D),
    txt (1, c, D)) -> (r, c)`` on tiles of at most ``budget`` pair elements (``r * c * D``; one
    pair at least), a whole row of captions first. Without a recorded gradient the tiles fill
    one preallocated matrix, so one tile is alive at a time; with one, they are concatenated.
    Each score is a function of its own pair only, so the tiling does not change a bit."""
    n_img, n_txt, dim = img_emb.shape[0], txt_emb.shape[0], img_emb.shape[1]
    if txt_emb.shape[1] != dim:
        raise ValueError(f"image and caption embeddings differ in size: {dim} vs {txt_emb.shape[1]}")
    cols = max(1, min(n_txt, budget // max(1, dim)))
    rows = max(1, min(n_img, budget // max(1, cols * dim)))
    out = img_emb.new_empty(n_img, n_txt) if in_place_allowed(img_emb, txt_emb) else None
    row_blocks = []
    for i in range(0, n_img, rows):
        img = img_emb[i : i + rows, None, :]
        tiles = []
        for j in range(0, n_txt, cols):
            tile = score(img, txt_emb[None, j : j + cols, :])
            if out is None:
                tiles.append(tile)
            else:
                out[i : i + rows, j : j + cols] = tile
        if out is None:
            row_blocks.append(torch.cat(tiles, 1) if tiles else img_emb.new_zeros(img.shape[0], 0))
    if out is not None:
        return out
    return torch.cat(row_blocks, 0) if row_blocks else img_emb.new_zeros(0, n_txt)


class RetrievalModel(nn.Module):
    """Base class: subclasses set ``Params`` and implement the two encoders."""

    Params: ClassVar[type[Params]]
    #: fitted in closed form by ``fit`` (cells set ``loss: null``), not by gradient descent
    closed_form: ClassVar[bool] = False
    #: names of ``Split.extras`` arrays to gather into ``TrainBatch.extras``
    batch_extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params, dims: InputDims):
        super().__init__()
        self.params = params
        self.dims = dims

    @property
    def image_input(self) -> str:
        """``"global"``, ``"regions"`` or ``"mean_regions"``."""
        return getattr(self.params, "image_input", "global")

    @property
    def text_input(self) -> str:
        """``"tokens"`` or ``"tfidf"``."""
        return getattr(self.params, "text_input", "tokens")

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``sims (N_img, N_txt)``; default: dot product (cosine for L2-normalised embeddings)."""
        return img_emb @ txt_emb.t()

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs ``img_emb[p]``, ``txt_emb[p]`` -> ``(P,)``; equals the
        diagonal of ``similarity`` (used by losses that score sampled pairs only)."""
        return (img_emb * txt_emb).sum(-1)

    # --- declared training hooks (defaults) ---------------------------------------

    def prepare_training(self, split: Any) -> None:
        """Size parameters by the prepared training ``split`` before training; default: nothing."""

    def auxiliary_loss(self, batch: TrainBatch, img_emb: Any, txt_emb: Any) -> torch.Tensor | None:
        """A term added to the retrieval loss of ``batch``, or None (the default: no term)."""
        return None

    def word_embedding(self) -> nn.Embedding | None:
        """The embedding of token ids that pretrained word vectors initialise; default: None."""
        return None

    @property
    def requires_word_vectors(self) -> bool:
        """True when the model cannot train without ``data.word_vectors`` (a frozen pretrained
        embedding would otherwise stay random); default: False."""
        return False

    def after_epoch(self, split: Any) -> None:
        """Called with the prepared training ``split`` after each epoch's last gradient step and
        before the dev evaluation that selects the model (so the best state kept holds what it
        fits), and before an untrained model (no epoch run) is evaluated; default: nothing."""

    def fit(self, split: Any) -> None:
        """Closed-form fit on the prepared training ``split`` (models with ``closed_form = True``)."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent, not fitted in closed form")
