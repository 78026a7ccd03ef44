"""A3VSE's unsupervised baseline with image-level semantics (A3VSE paper Sec. 4.2).

No parallel annotation is used. Every image carries image-level semantic scores
``s_g`` (tags from pre-trained classifiers, scores in [0, 1]); every caption becomes
a k-hot query ``q`` over the same concepts: its words are expanded with a
synonym/hypernym dictionary (WordNet synsets in the paper) and every concept one
of them matches is set to 1 (k = the number of matched concepts). The score of an
(image, caption) pair is ``r = s_g^T q`` (Sec. 4.2).

The data contract (``Split.extras``): ``tags`` holds, per image, a list of
``[tag, score]`` pairs; ``tag_expansion`` maps a caption word to the tags it
matches. A word that is itself a tag matches that tag too (a lemma belongs to its
own synset).

The ``tags`` input kind (``xmrbench/engine/inputs.py``) turns a split into
``s_g (N_img, T)`` and ``q (N_txt, T)`` over the tags present in that split's
images; concepts no image of the split carries add zero to every score, so leaving
them out changes nothing. This model then scores by the dot product, so
``sims[i, j] = sum over matched concepts c of caption j of s_g[i, c]``.
"""

from __future__ import annotations

from typing import Literal

import torch

from xmrbench.core.models.base import RetrievalModel, TextBatch
from xmrbench.params import Params


class SGBaseline(RetrievalModel):
    """``r = s_g^T q``: image-level tag scores against tag-expanded caption words."""

    closed_form = True

    class Params(Params):
        image_input: Literal["tags"] = "tags"
        text_input: Literal["tags"] = "tags"

    def fit(self, split) -> None:
        """Nothing to learn: the baseline uses no (image, caption) pairs (Sec. 4.2,
        "using NO parallel annotations"). The hook lets recipes run it with ``loss: null``."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``s_g (B, T)`` tag scores, unchanged."""
        return images

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """``q (B, T)`` k-hot tag queries, unchanged."""
        return text.vectors
