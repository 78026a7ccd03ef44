"""ACMR (Wang, Yang, Xu, Hanjalic, Shen, "Adversarial Cross-Modal Retrieval", ACM MM
2017, Sec. 3 and 4.1.2): two feed-forward projectors into a common space, a label
classifier on that space, and a modality classifier that plays the adversary.

Modules (sizes of Sec. 4.1.2, every one a parameter):

- the **feature projectors** ``f_V`` and ``f_T`` (Sec. 3.2): ``V -> 2000 -> 200`` for
  image features and ``T -> 500 -> 200`` for text features (``image_hidden``,
  ``text_hidden``, ``dim``), fully connected layers each followed by ``tanh``, so a
  projection lies in ``(-1, 1)^dim``. ``dropout`` (default 0) acts after the hidden
  layer: Sec. 4.2 mentions dropout against over-fitting on Pascal Sentences without a
  rate;
- the **label classifier** (Sec. 3.4.1, parameters ``theta_imd``): one linear layer
  from the common space to the ``C`` classes, softmax on top, shared by both
  modalities (Eq. 2 has one ``theta_imd``). ``C`` is not a parameter: it comes from the
  training split's labels (:meth:`ACMR.prepare_training`: one class id per image, ``C``
  = the largest id + 1, or a multi-hot ``(N, C)`` matrix);
- the **modality classifier** ``D`` (Sec. 3.3, ``theta_D``): ``dim -> 50 -> 2``
  (``adversary_hidden``), softmax over two outputs. An image's target is the one-hot
  ``01`` (output 1, :data:`IMAGE_MODALITY`) and a text's ``10`` (output 0,
  :data:`TEXT_MODALITY`), the convention of Sec. 3.3 and Eq. 1 (``docs/acmr.md#the-losses``).
  The paper names no activation for its hidden layer; it uses ``tanh``, the projectors' one.

Ranking (``similarity``): the negated Euclidean distance between the two projections.
The paper scores retrieval "in the common subspace" and measures closeness there by
the l2 norm of Eq. 3, but never says which score ranks the gallery; the released demo
ranks by Euclidean distance (``docs/peers.md#acmr``), so xmrbench does too.

The training objective and Algorithm 1 (alternating embedding and classifier steps)
belong to the training method ``acmr`` (:mod:`xmrbench.engine.acmr_method`) and the
loss terms to :mod:`xmrbench.core.losses.acmr`; ``docs/acmr.md`` describes the whole.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.errors import ConfigError, DataError, TrainingError
from xmrbench.params import Params

IMAGE_MODALITY = 1
"""Output of the modality classifier that stands for "image" (the target ``01``, Eq. 1)."""
TEXT_MODALITY = 0
"""Output of the modality classifier that stands for "text" (the target ``10``, Eq. 1)."""


def _projector(in_dim: int, hidden: int, dim: int, dropout: float) -> nn.Sequential:
    """``in_dim -> hidden -> dim``, each fully connected layer followed by tanh."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.Tanh()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(hidden, dim), nn.Tanh()]
    return nn.Sequential(*layers)


def count_classes(labels: Any, *, split: str = "train") -> int:
    """The number of classes ``C`` that training ``labels`` imply: one int class id per
    item ``(N,)`` -> the largest id + 1; a multi-hot ``(N, C)`` matrix -> ``C``. Raises
    ``DataError`` for anything else (no items, negative ids, floats, other shapes)."""
    arr = np.asarray(labels)
    if arr.ndim == 1:
        if arr.dtype.kind not in "iu":
            raise DataError(f"split {split!r}: labels of dtype {arr.dtype}; ACMR needs integer class ids "
                            "or a multi-hot matrix")
        if len(arr) == 0:
            raise DataError(f"split {split!r} has no labels")
        if int(arr.min()) < 0:
            raise DataError(f"split {split!r}: a label is negative ({int(arr.min())})")
        return int(arr.max()) + 1
    if arr.ndim == 2 and arr.shape[1] > 0 and arr.shape[0] > 0:
        return int(arr.shape[1])
    raise DataError(f"split {split!r}: labels of shape {arr.shape}; ACMR needs (N,) class ids or a multi-hot (N, C)")


class ACMR(RetrievalModel):
    """Projectors, label classifier and modality classifier of ACMR (module docstring)."""

    class Params(Params):
        image_hidden: int = Field(2000, ge=1)  # V -> image_hidden -> dim
        text_hidden: int = Field(500, ge=1)  # T -> text_hidden -> dim
        dim: int = Field(200, ge=1)  # the common space
        adversary_hidden: int = Field(50, ge=1)  # modality classifier dim -> adversary_hidden -> 2
        dropout: float = Field(0.0, ge=0, lt=1)  # after each projector's hidden layer
        image_input: Literal["global"] = "global"
        text_input: Literal["features", "tfidf"] = "features"

    params: ACMR.Params
    batch_extras = ("labels",)

    def __init__(self, params: ACMR.Params, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ConfigError("ACMR needs vector text features (model.text_input: features or tfidf)",
                              key="model.text_input")
        self.img_proj = _projector(dims.image_dim, params.image_hidden, params.dim, params.dropout)
        self.txt_proj = _projector(dims.text_dim, params.text_hidden, params.dim, params.dropout)
        self.modality_classifier = nn.Sequential(
            nn.Linear(params.dim, params.adversary_hidden), nn.Tanh(), nn.Linear(params.adversary_hidden, 2))
        # sized by the training labels (prepare_training) or by loaded weights
        self.label_classifier: nn.Linear | None = None
        self.register_load_state_dict_pre_hook(self._build_classifier_from_state)

    # --- sizing by the training split -----------------------------------------------

    @property
    def n_classes(self) -> int | None:
        """``C``, or None before :meth:`prepare_training`."""
        return None if self.label_classifier is None else int(self.label_classifier.out_features)

    def build_label_classifier(self, n_classes: int) -> None:
        """(Re)build the label classifier for ``n_classes`` classes on the projectors' device."""
        if self.n_classes == n_classes:
            return
        device = self.img_proj[0].weight.device
        self.label_classifier = nn.Linear(self.params.dim, int(n_classes)).to(device)

    def prepare_training(self, split: Any) -> None:
        """Size the label classifier by the training split's ``extras["labels"]``."""
        labels = split.split.extras.get("labels")
        if labels is None:
            raise DataError(f"split {split.name!r} has no labels (extras 'labels'); ACMR's label classifier and "
                            "triplets need them")
        self.build_label_classifier(count_classes(labels, split=split.name))

    def _build_classifier_from_state(self, module, state_dict, prefix, *args) -> None:
        weight = state_dict.get(f"{prefix}label_classifier.weight")
        if weight is not None:
            self.build_label_classifier(int(weight.shape[0]))

    # --- the parts the training method updates --------------------------------------

    def projector_weights(self) -> list[torch.Tensor]:
        """The weight matrices ``W_v^l``, ``W_t^l`` of both projectors (Eq. 7), no biases."""
        return [layer.weight for proj in (self.img_proj, self.txt_proj) for layer in proj if isinstance(layer, nn.Linear)]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """``theta_V``, ``theta_T`` and ``theta_imd``: what Algorithm 1's embedding steps update."""
        if self.label_classifier is None:
            raise TrainingError("the ACMR model has no label classifier yet: prepare_training(split) sizes it by the "
                                "training labels")
        return [*self.img_proj.parameters(), *self.txt_proj.parameters(), *self.label_classifier.parameters()]

    def adversary_parameters(self) -> list[nn.Parameter]:
        """``theta_D``: what Algorithm 1's classifier steps update."""
        return list(self.modality_classifier.parameters())

    def label_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb (B, dim)`` -> ``(B, C)`` logits of the label classifier (softmax: Eq. 2's ``p^``)."""
        if self.label_classifier is None:
            raise TrainingError("the ACMR model has no label classifier yet: prepare_training(split) sizes it by the "
                                "training labels")
        return self.label_classifier(emb)

    def modality_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb (B, dim)`` -> ``(B, 2)`` logits of the modality classifier (softmax: Eq. 1's ``D``)."""
        return self.modality_classifier(emb)

    # --- retrieval --------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, V)`` -> ``f_V (B, dim)``."""
        return self.img_proj(images)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """``text.vectors (B, T)`` -> ``f_T (B, dim)``."""
        if text.vectors is None:
            raise TrainingError("ACMR reads text as feature vectors (model.text_input: features or tfidf)")
        return self.txt_proj(text.vectors)

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``sims (N_img, N_txt)``: minus the Euclidean distance of the projections."""
        return -torch.cdist(img_emb, txt_emb, compute_mode="donot_use_mm_for_euclid_dist")

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Aligned pairs ``(P, dim)``, ``(P, dim)`` -> ``(P,)`` minus their Euclidean distances."""
        return -torch.linalg.vector_norm(img_emb - txt_emb, dim=-1)
