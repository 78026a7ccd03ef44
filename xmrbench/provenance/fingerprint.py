"""Protocol fingerprints: what a number was measured on.

Two numbers are comparable only when the *comparable* part of their fingerprints
is equal: the dataset, the split and its size, captions per image, the folds, and
the metric definition. The setup part (image features, text features, vocabulary)
is shown as a caveat when it differs, because papers of this field routinely
compare across feature extractors.
"""

from __future__ import annotations

from typing import Any

from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.recipe.schema import PaperProtocol

#: the metric definition xmrbench implements (and the papers in scope use):
#: recall@k = hit@k (at least one match in the top k), i2t ranks by the best caption.
METRIC_DEFINITION = "hit@k; i2t=best caption; ranks 1-based; medr=floor(median)+1"

COMPARABLE = ("dataset", "revision", "split", "images", "captions_per_image", "folds", "metric")
SETUP = ("features", "text_features", "vocabulary")


def paper_fingerprint(proto: PaperProtocol) -> dict[str, Any]:
    return {
        "dataset": proto.dataset,
        "revision": None,  # unknown for a paper: not compared
        "split": proto.split,
        "images": proto.images,
        "captions_per_image": proto.captions_per_image,
        "folds": proto.folds,
        "metric": METRIC_DEFINITION,
        "features": proto.features,
        "text_features": proto.text_features,
        "vocabulary": proto.vocabulary,
    }


def dataset_label(info: dict[str, Any], name: str) -> str:
    """The dataset's name as compared: the declared real dataset, else the loader's name."""
    return str(info.get("dataset") or name)


def run_fingerprint(
    protocol: str, *, dataset_name: str, dataset_fingerprint: str, dataset_info: dict[str, Any], split_images: int,
    captions_per_image: int, config: dict[str, Any], text_input: str, image_input: str, vocabulary: str | None = None,
) -> dict[str, Any]:
    """What a run's numbers on ``protocol`` were measured on.

    ``vocabulary``: what the run's vocabulary was (``PreparedData.vocabulary``: a
    vocabulary file by name and content hash, so that another file's content changes
    the fingerprint); None: built from the training captions with the config's
    ``data.vocab_min_count``.
    """
    proto = PROTOCOLS[protocol]
    data_cfg = config.get("data", {})
    source = dataset_info.get("source", data_cfg.get("name"))
    if source == "synthetic":
        feats = f"synthetic world ({image_input}, regions {data_cfg.get('region_dim')}-d, global {data_cfg.get('global_dim')}-d)"
    else:
        feats = f"precomputed ({image_input}) from {dataset_info.get('root', '?')}"
    return {
        "dataset": dataset_label(dataset_info, dataset_name),
        "revision": dataset_fingerprint,
        "split": proto.split,
        "images": split_images,
        "captions_per_image": captions_per_image,
        "folds": proto.folds,
        "metric": METRIC_DEFINITION,
        "features": feats,
        "text_features": text_input,
        "vocabulary": vocabulary or f"train captions, min_count={data_cfg.get('vocab_min_count')}",
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(comparable, differences that break comparability, setup caveats).

    A key that one side does not know (None) is not compared.
    """
    breaks = [
        f"{k}: {a.get(k)} vs {b.get(k)}"
        for k in COMPARABLE
        if a.get(k) is not None and b.get(k) is not None and a.get(k) != b.get(k)
    ]
    caveats = [f"{k}: {a.get(k)} vs {b.get(k)}" for k in SETUP if a.get(k) and b.get(k) and a.get(k) != b.get(k)]
    return not breaks, breaks, caveats
