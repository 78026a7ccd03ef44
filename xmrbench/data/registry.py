"""Dataset registry: name -> builder taking a :class:`DataConfig` and returning RetrievalData."""

from __future__ import annotations

from collections.abc import Callable

from xmrbench.data.dataset import RetrievalData
from xmrbench.errors import DataError
from xmrbench.recipe.config import DataConfig
from xmrbench.registry import Registry


def build_synthetic(cfg: DataConfig) -> RetrievalData:
    """The embedded synthetic world (generated once, cached on disk, read back like real data)."""
    from xmrbench.data.synthetic import load_synthetic

    return load_synthetic(size=cfg.size, seed=cfg.world_seed, region_dim=cfg.region_dim, global_dim=cfg.global_dim)


def build_precomp(cfg: DataConfig) -> RetrievalData:
    """Precomputed features in the SCAN "precomp" layout under ``data.root``."""
    from xmrbench.data.precomp import load_precomp

    if not cfg.root:
        raise DataError("data.name is 'precomp' but no data.root was given (use --data-root DIR)")
    data = load_precomp(cfg.root, captions_per_image=cfg.captions_per_image, name=cfg.dataset)
    if cfg.dataset:
        data.info["dataset"] = cfg.dataset
    return data


DATASETS: Registry[Callable[[DataConfig], RetrievalData]] = Registry(
    "dataset",
    {
        "synthetic": build_synthetic,
        "precomp": build_precomp,
    },
)
