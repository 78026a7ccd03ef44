"""Dataset registry: kind name -> :class:`DatasetKind`, a builder taking a
:class:`DataConfig` and returning RetrievalData, and the ``data.*`` keys of the kind.

A cell config may set only the keys of the kind it names (``data.name``); validation
(``xmrbench/recipe/config.py``) rejects the others with the kind's keys listed. The
builder still receives the one flat :class:`DataConfig` (why it stays flat: its
docstring), in which the other kinds' keys hold their defaults.

Every builder applies the sparse-corpus keys (``data.sparse_images``,
``data.sparse_sentences``, ``data.sparse_seed``; A3VSE Sec. 4.1) the same way: the
``train`` split keeps the sampled images with ``sparse_sentences`` captions each and a
split ``unannotated`` holds the other training images (see ``xmrbench/data/sparse.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from xmrbench.config import DataConfig
from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.errors import DataError
from xmrbench.registry import Registry


def build_synthetic(cfg: DataConfig) -> RetrievalData:
    """The embedded synthetic world (generated once, cached on disk, read back like real data)."""
    from xmrbench.data.synthetic import load_synthetic

    data = load_synthetic(size=cfg.size, seed=cfg.world_seed, region_dim=cfg.region_dim, global_dim=cfg.global_dim)
    return apply_sparse(apply_labels_from(data, cfg), cfg)


def build_precomp(cfg: DataConfig) -> RetrievalData:
    """Precomputed features in the SCAN "precomp" layout under ``data.root``.

    The directory must hold ``train`` and ``dev`` splits (training selects its model
    on dev); the splits a protocol scores (test, testall) are looked up when evaluated.
    """
    from xmrbench.data.precomp import load_precomp

    if not cfg.root:
        raise DataError("data.name is 'precomp' but no data.root was given (use --data-root DIR)")
    data = load_precomp(cfg.root, captions_per_image=cfg.captions_per_image, name=cfg.dataset)
    _require_train_and_dev(data, cfg.root, "{split}_caps.txt with {split}_ims.npy or {split}_global.npy")
    if cfg.dataset:
        data.info["dataset"] = cfg.dataset
    return apply_sparse(apply_labels_from(data, cfg, where=cfg.root), cfg)


def build_labelled(cfg: DataConfig) -> RetrievalData:
    """A labelled feature set (ACMR's layout, ``docs/formats/labelled.md``) under ``data.root``:
    image features as ``global``, one text per image as features (``model.text_input:
    features``), labels for the ``label`` task (protocol ``test_labels``)."""
    from xmrbench.data.labelled import labelled_retrieval_data

    if not cfg.root:
        raise DataError("data.name is 'labelled' but no data.root was given (use --data-root DIR)")
    data = labelled_retrieval_data(cfg.root, dev_from_train=cfg.dev_from_train, dataset=cfg.dataset)
    return apply_sparse(data, cfg)


def build_synthetic_labelled(cfg: DataConfig) -> RetrievalData:
    """A synthetic labelled set in the shape of one of ACMR's datasets (``data.dataset``:
    wikipedia, pascal, nus-wide-10k, mscoco; ``data.variant``: deep, or shallow for
    Wikipedia), generated once into the cache in the labelled layout and read back by the
    loader real labelled sets take. ``data.size``: tiny (at most 200 training and 100
    test instances) or small (the dataset's own sizes, ACMR paper Table 1);
    ``data.world_seed`` seeds the generator; ``data.dev_from_train`` holds out the dev
    split the model is selected on (the sets have none of their own)."""
    from xmrbench.data.labelled import labelled_retrieval_data
    from xmrbench.data.synthetic.labelled import synthetic_labelled_dir

    if not cfg.dataset:
        raise DataError("data.name is 'synthetic_labelled' but no data.dataset was given "
                        "(wikipedia, pascal, nus-wide-10k or mscoco)")
    if cfg.size == "medium":
        raise DataError("data.size 'medium' does not exist for synthetic labelled sets: use tiny or small")
    if cfg.dev_from_train is None:
        raise DataError("data.name is 'synthetic_labelled' but no data.dev_from_train was given: the synthetic "
                        "labelled sets have no dev split, so hold out that many training instances to select on")
    root = synthetic_labelled_dir(cfg.dataset, variant=cfg.variant, seed=cfg.world_seed,
                                  size="tiny" if cfg.size == "tiny" else "paper")
    data = labelled_retrieval_data(root, dev_from_train=cfg.dev_from_train, dataset=f"synthetic-{cfg.dataset}")
    return apply_sparse(data, cfg)


def build_entities(cfg: DataConfig) -> RetrievalData:
    """Phrase-region annotations with region proposals (the Flickr30K Entities style
    layout, ``docs/formats/entities.md``) under ``data.root``: image-caption splits with
    each split's phrases in ``extras["entities"]`` (protocol ``test_phrases``)."""
    from xmrbench.data.entities import entities_retrieval_data

    if not cfg.root:
        raise DataError("data.name is 'entities' but no data.root was given (use --data-root DIR)")
    data = entities_retrieval_data(cfg.root, captions_per_image=cfg.captions_per_image, name=cfg.dataset)
    _require_train_and_dev(data, cfg.root, "{split}_phrases.jsonl and its files")
    return apply_sparse(data, cfg)


def build_synthetic_entities(cfg: DataConfig) -> RetrievalData:
    """The synthetic world's phrase-region annotations with region proposals
    (``docs/synthetic_world.md``), generated once into the cache in the entities layout
    and read back as the entities kind reads real data: the world's images (each
    described by the mean of its proposals' features) and captions, with each split's
    phrases in ``extras["entities"]``. ``data.size``, ``data.world_seed`` and
    ``data.region_dim`` (the proposal features' size) name the world."""
    from xmrbench.data.entities import entities_retrieval_data
    from xmrbench.data.synthetic.entities import synthetic_entities_dir

    root = synthetic_entities_dir(size=cfg.size, seed=cfg.world_seed, region_dim=cfg.region_dim)
    return entities_retrieval_data(root, name=f"synthetic-entities-{cfg.size}")


def _require_train_and_dev(data: RetrievalData, root: str, files: str) -> None:
    """A one-line error unless ``data`` has the train split (training needs it) and the dev
    split (the model is selected on it); ``files`` names what a split is made of."""
    for needed, why in (("train", "training needs it"), ("dev", "the model is selected on it")):
        if needed not in data.split_names:
            have = ", ".join(data.split_names) or "none"
            raise DataError(f"no {needed!r} split ({files.format(split=needed)}); {why}; found: {have}", where=root)


def apply_labels_from(data: RetrievalData, cfg: DataConfig, where: str | None = None) -> RetrievalData:
    """``data`` whose splits carry ``extras[cfg.labels_from]`` also as ``extras["labels"]``
    (the class labels label-trained models and the ``label`` task read), when
    ``data.labels_from`` is set; else ``data``. The splits stay lazy; a split without
    that extra raises a one-line ``DataError`` when it is read."""
    if cfg.labels_from is None:
        return data
    loaders = {name: partial(_relabelled, loader, cfg.labels_from, where) for name, loader in data.loaders.items()}
    info = dict(data.info)
    info["labels_from"] = cfg.labels_from
    return RetrievalData(name=data.name, fingerprint=data.fingerprint, loaders=loaders, info=info)


def _relabelled(loader: Callable[[], Split], key: str, where: str | None) -> Split:
    from dataclasses import replace

    split = loader()
    if key not in split.extras:
        have = ", ".join(sorted(split.extras)) or "none"
        raise DataError(f"data.labels_from is {key!r} but split {split.name!r} has no such extra (it has: {have})",
                        where=where)
    labels = split.extras[key]
    if getattr(labels, "ndim", None) not in (1, 2) or len(labels) != split.n_images:
        raise DataError(f"data.labels_from {key!r}: split {split.name!r} holds {getattr(labels, 'shape', '?')} for "
                        f"{split.n_images} images; class labels need one row per image", where=where)
    return replace(split, extras={**split.extras, "labels": labels})


def apply_sparse(data: RetrievalData, cfg: DataConfig) -> RetrievalData:
    """``data`` with its ``train`` split sparsified and an ``unannotated`` split added,
    when ``data.sparse_images`` or ``data.sparse_sentences`` is set; else ``data``.

    The splits stay lazy: nothing is read until ``train`` or ``unannotated`` is asked
    for. ``info["sparse"]`` records the fraction, sentences, seed and the counts.
    """
    from xmrbench.data.sparse import UNANNOTATED, sparse_counts

    if cfg.sparse_images is None and cfg.sparse_sentences is None:
        return data
    if "train" not in data.split_names:
        raise DataError(f"dataset {data.name!r} has no train split to make sparse", where=cfg.root)
    if UNANNOTATED in data.split_names:
        raise DataError(f"dataset {data.name!r} already has a split named {UNANNOTATED!r}", where=cfg.root)
    split_info = data.info.get("splits", {}).get("train", {})
    n_train = split_info.get("images")
    cpi = int(data.info.get("captions_per_image", cfg.captions_per_image))
    if n_train is None:  # a source without header info: read the split once
        n_train = data.split("train").n_images
    counts = sparse_counts(int(n_train), fraction=cfg.sparse_images, sentences=cfg.sparse_sentences,
                           captions_per_image=cpi)
    source = _SparseSource(data.loaders["train"], cfg.sparse_images, cfg.sparse_sentences, cfg.sparse_seed)
    loaders: dict[str, Callable[[], Split]] = {}
    for name, loader in data.loaders.items():
        loaders[name] = partial(source.split, "train") if name == "train" else loader
    if counts.unannotated:
        loaders[UNANNOTATED] = partial(source.split, UNANNOTATED)
    info = dict(data.info)
    info["sparse"] = {
        "images_fraction": cfg.sparse_images,
        "sentences": counts.sentences,
        "seed": cfg.sparse_seed,
        "train_images": counts.images,
        "pairs": counts.pairs,
        "unannotated_images": counts.unannotated,
    }
    return RetrievalData(name=data.name, fingerprint=data.fingerprint, loaders=loaders, info=info)


class _SparseSource:
    """Samples the sparse corpus once and hands out its two splits (picklable, lazy)."""

    def __init__(self, train_loader: Callable[[], Split], fraction: float | None, sentences: int | None, seed: int):
        self.train_loader = train_loader
        self.fraction, self.sentences, self.seed = fraction, sentences, seed
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        from xmrbench.data.sparse import UNANNOTATED, sparse_splits

        if not self._splits:
            kept, pool = sparse_splits(self.train_loader(), fraction=self.fraction, sentences=self.sentences,
                                       seed=self.seed)
            self._splits["train"] = kept
            if pool is not None:
                self._splits[UNANNOTATED] = pool
        return self._splits[name]


@dataclass(frozen=True)
class DatasetKind:
    """A dataset kind: its builder and the ``data.*`` keys (besides ``name``) a cell of it may set."""

    build: Callable[[DataConfig], RetrievalData]
    keys: tuple[str, ...]

    def __call__(self, cfg: DataConfig) -> RetrievalData:
        return self.build(cfg)


#: keys of the kinds whose texts are captions: the vocabulary, word vectors and the captions kept per image
CAPTION_KEYS = ("vocab_min_count", "max_caption_len", "tokenizer", "vocab_file", "word_vectors", "vocab_texts",
                "sparse_sentences")
#: the caption keys that do not select captions
WORD_KEYS = tuple(key for key in CAPTION_KEYS if key != "sparse_sentences")
#: keys of every kind but synthetic_entities: which training images are used
IMAGE_KEYS = ("train_images", "sparse_images", "sparse_seed")

DATASETS: Registry[DatasetKind] = Registry(
    "dataset",
    {
        "synthetic": DatasetKind(build_synthetic,
                                 ("size", "world_seed", "region_dim", "global_dim", "labels_from", *CAPTION_KEYS,
                                  *IMAGE_KEYS)),
        "precomp": DatasetKind(build_precomp, ("root", "dataset", "captions_per_image", "labels_from", *CAPTION_KEYS,
                                               *IMAGE_KEYS)),
        "labelled": DatasetKind(build_labelled, ("root", "dataset", "dev_from_train", *IMAGE_KEYS)),
        "synthetic_labelled": DatasetKind(build_synthetic_labelled,
                                          ("dataset", "variant", "size", "world_seed", "dev_from_train", *IMAGE_KEYS)),
        "entities": DatasetKind(build_entities, ("root", "dataset", "captions_per_image", *CAPTION_KEYS, *IMAGE_KEYS)),
        # the world's phrases are read as its captions are; no sparse or first-n views (the
        # annotations are per image)
        "synthetic_entities": DatasetKind(build_synthetic_entities,
                                          ("size", "world_seed", "region_dim", *WORD_KEYS)),
    },
)
