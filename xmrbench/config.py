"""The configuration of one cell: everything needed to build, train and evaluate a run.

This module is the one place the cell-config types live; the data layer, the
training engine, the recipe layer and the runner all import it, and it imports
nothing of theirs. Validating a raw mapping against the registries (which model,
loss, sampler, dataset and protocol names exist) is the recipe layer's job
(``xmrbench/recipe/config.py``).

A cell config is pure data. Defaults live here and nowhere else. Model, loss and
sampler parameters are validated by the ``Params`` class of the registered
component they name (``model.name``, ``loss.name``), so a new model brings its own
parameter schema without an edit to this file.

Dotted keys (``train.lr``, ``model.hidden``) address values everywhere: in recipe
``set:`` blocks, ``--set key=value`` overrides and sweeps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from xmrbench.params import StrictModel

#: Bump when the meaning of a config key changes; it is part of every cell hash.
CONFIG_VERSION = 1


Strict = StrictModel


def hashed_form(section: BaseModel, later_keys: tuple[str, ...]) -> dict[str, Any]:
    """``section`` as its config hash sees it: every key with its value, except the keys
    added after the first hashes were recorded (``later_keys``) while at their default."""
    out = section.model_dump(mode="json")
    for key in later_keys:
        default = type(section).model_fields[key].default
        if out[key] == (list(default) if isinstance(default, tuple) else default):  # JSON has no tuples
            del out[key]
    return out


class DataConfig(Strict):
    """Which dataset a cell trains and evaluates on: the keys of every dataset kind.

    Each kind (``xmrbench/data/registry.py``: synthetic, precomp, labelled, entities) declares
    which of these keys a cell of that kind may set; validation
    (``xmrbench/recipe/config.py``) rejects the keys of other kinds, so here they stay
    at their defaults. The config is nevertheless kept flat, one model for all kinds,
    because its dump is part of the cell hash: the hashed ``data`` dict of every cell is
    the union of the kinds' keys with their defaults, exactly as it was when there was
    one flat config, so no existing cell hash (and no stored result or regression
    reference keyed by it) changes. A key added later must leave the hash of configs
    that do not set it alone: :meth:`to_dict` leaves it out while it holds its default
    (``dev_from_train``, as ``CellConfig.method``).
    """

    name: str = "synthetic"  # dataset registry name: synthetic | synthetic_labelled | precomp | labelled | entities
    # synthetic world (synthetic_labelled: tiny, or small = the labelled set's own sizes)
    size: Literal["tiny", "small", "medium"] = "small"
    world_seed: int = Field(0, ge=0)
    region_dim: int = Field(128, ge=1)
    global_dim: int = Field(256, ge=1)
    # features on disk (precomp, labelled)
    root: str | None = None
    dataset: str | None = None  # what the directory holds (flickr30k, mscoco, ...), for the fingerprint
    captions_per_image: int = Field(5, ge=1)
    # text processing (vocabulary built from the training captions, and ``vocab_texts``)
    vocab_min_count: int = Field(1, ge=1)
    max_caption_len: int = Field(50, ge=1)
    # use only the first n training images (fast profiles); None = all
    train_images: int | None = Field(None, ge=1)
    # a vocabulary json (SCAN or ADAPT order) instead of one built from the training
    # captions; a relative path is looked up under data.root first, then the working directory
    vocab_file: str | None = None
    # how captions are split into words (xmrbench/core/text/vocab.py): "words" (punctuation
    # dropped) or "treebank" (the peers' NLTK tokenizer, punctuation kept)
    tokenizer: Literal["words", "treebank"] = "words"
    # pretrained word vectors (GloVe / word2vec text format, docs/formats/word_vectors.md)
    # that initialise the model's token embedding (``RetrievalModel.word_embedding``),
    # aligned to the vocabulary; a relative path is looked up like vocab_file
    word_vectors: str | None = None
    # machine-made texts whose words the vocabulary counts besides the training captions'
    # (A3VSE encodes its regional semantics or image-level tags with the captions' word
    # embedding): "semantics" and/or "tags" of the training and un-annotated images
    vocab_texts: tuple[Literal["semantics", "tags"], ...] = ()
    # sparse corpora (A3VSE Sec. 4.1): keep a fraction of the training images with
    # sparse_sentences captions each; the other training images form the "unannotated" split
    sparse_images: float | None = Field(None, gt=0, le=1)
    sparse_sentences: int | None = Field(None, ge=1)
    sparse_seed: int = Field(0, ge=0)
    # labelled sets without a dev split (ACMR's): hold out this many training instances,
    # drawn with a fixed seed, as the dev split the model is selected on; None = the
    # directory's own dev split
    dev_from_train: int | None = Field(None, ge=1)
    # synthetic labelled sets: the deep features, or Wikipedia's shallow ones (ACMR Table 2)
    variant: Literal["deep", "shallow"] = "deep"
    # image-caption data: the per-image array of the split's extras that serves as its class
    # labels (extras "labels": what label-trained models such as ACMR learn from), e.g.
    # "object_labels" of the synthetic world (multi-hot over the object classes) or
    # "scene_label"; None: the split's own "labels", if it has them
    labels_from: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _sparse_sentences_fit(self) -> DataConfig:
        if self.sparse_sentences is not None and self.sparse_sentences > self.captions_per_image:
            raise ValueError(
                f"data.sparse_sentences={self.sparse_sentences} exceeds "
                f"data.captions_per_image={self.captions_per_image}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The hashed form: every key with its value, except later keys at their default."""
        return hashed_form(self, HASHED_WHEN_SET)


#: Data keys added after the first cell hashes were recorded: in the hashed form only
#: when a config sets them to something other than their default.
HASHED_WHEN_SET = ("dev_from_train", "word_vectors", "tokenizer", "vocab_texts", "variant", "labels_from")


#: ``train.plateau_window`` and ``train.plateau_gain`` of a config that does not set them
PLATEAU_DEFAULTS = (3, 0.01)


class TrainConfig(Strict):
    """Optimisation and model selection."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=2)
    sampler: str = "random"  # sampler registry name: random | neighbourhood
    optimizer: Literal["adam", "adamax", "sgd"] = "adam"
    lr: float = Field(2e-4, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_decay: float = Field(0.1, gt=0, le=1)
    lr_decay_every: int | None = Field(None, ge=1)  # epochs; None = constant learning rate
    grad_clip: float | None = Field(2.0, gt=0)  # max gradient norm; None = no clipping
    # dev metric for model selection; "map": the dev split is scored by label mAP (the
    # ``label`` task: ACMR's datasets), the others by image-sentence recall
    select_by: Literal["rsum", "r1_r5", "map", "phrase"] = "rsum"
    # convergence (core/convergence.py): a run has converged when its best dev selection
    # score gained less than ``plateau_gain`` (relative) over its last ``plateau_window``
    # epochs; ``early_stop`` ends training there, ``epochs`` being then the maximum
    plateau_window: int = Field(PLATEAU_DEFAULTS[0], ge=1)
    plateau_gain: float = Field(PLATEAU_DEFAULTS[1], ge=0)
    early_stop: bool = False
    # an epoch passes over the training pairs (in new orders) until it has drawn at least
    # this many; None: once. A tiny training set (the sparse A3VSE corpora) then gets as
    # many updates per epoch as a larger one, so its plateau is measured on the same scale
    min_epoch_pairs: int | None = Field(None, ge=1)

    def to_dict(self) -> dict[str, Any]:
        """The hashed form: every key with its value, except later keys at their default."""
        return hashed_form(self, TRAIN_HASHED_WHEN_SET)


#: Train keys added after the first cell hashes were recorded (see ``HASHED_WHEN_SET``).
TRAIN_HASHED_WHEN_SET = ("plateau_window", "plateau_gain", "early_stop", "min_epoch_pairs")


class EvalConfig(Strict):
    """Which evaluation protocols a cell reports and how they are computed."""

    protocols: tuple[str, ...] = ("test",)  # protocol registry names
    dev_images: int | None = Field(None, ge=1)  # evaluate dev on the first n images; None = all
    batch_size: int = Field(256, ge=1)  # encoding batch size
    block_images: int = Field(1000, ge=1)  # similarity computed in blocks of this many images
    sentence_retrieval: bool = False  # also report s2s_r1/5/10 (two-branch Table 4)
    store_ranks: bool = True  # keep per-query ranks in the result, for paired tests over queries


class ComponentConfig(Strict):
    """A registered component and its validated parameters."""

    name: str
    params: Any  # the component's own Params instance

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.hashed()}


class CellConfig(Strict):
    """Everything one run needs except the seed."""

    data: DataConfig = DataConfig()
    model: ComponentConfig
    loss: ComponentConfig | None  # None: a closed-form model fitted without a loss (CCA)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    # the training method (engine/methods.py); None: the model's default (gradient
    # descent, or the closed-form fit). Left out of ``to_dict`` (and so of the hash) when
    # None, so that cells written before methods existed keep their hashes.
    method: ComponentConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "loss": self.loss.to_dict() if self.loss is not None else None,
            "train": self.train.to_dict(),
            "eval": self.eval.model_dump(mode="json"),
        }
        if self.method is not None:
            out["method"] = self.method.to_dict()
        return out

    def hash(self) -> str:
        """Content hash of the resolved config (defaults included)."""
        return content_hash({"config_version": CONFIG_VERSION, **self.to_dict()})

    def get(self, dotted: str) -> Any:
        return get_dotted(self.to_dict(), dotted)


def content_hash(obj: Any, length: int = 12) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


#: eval keys that choose what a run reports, not what it trains or selects
REPORTING_KEYS = ("protocols", "sentence_retrieval", "store_ranks")


def training_hash(config: Mapping[str, Any]) -> str:
    """Content hash of what a run trains: its stored config (the cell config, with
    ``needs`` for a later stage) without the eval keys that only choose what is reported.
    Two runs with one training hash and seed train the same model."""
    reduced = dict(config)
    reduced["eval"] = {k: v for k, v in config.get("eval", {}).items() if k not in REPORTING_KEYS}
    return content_hash(reduced, length=16)


# ---------------------------------------------------------------------------
# dotted-key helpers


def get_dotted(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def expand_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``; non-dict values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
