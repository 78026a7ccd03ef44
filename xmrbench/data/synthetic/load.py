"""Write the synthetic world to disk and open it through the precomp reader.

Synthetic data takes exactly the path real data takes: the world is written in the
precomp layout (once, into the cache) and read back with
:func:`xmrbench.data.precomp.load_precomp`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xmrbench.data.cache import cache_root, materialize
from xmrbench.data.dataset import RetrievalData
from xmrbench.data.precomp import load_precomp, write_precomp
from xmrbench.data.synthetic.world import CAPTIONS_PER_IMAGE, GENERATOR_VERSION, check_params, generate_world

WORLD_FILE = "world.json"


def world_params(*, size: str, seed: int, region_dim: int, global_dim: int, regions: int) -> dict:
    """The parameters that determine a world's bytes (recorded in ``world.json``)."""
    return {
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "regions": regions,
        "region_dim": region_dim,
        "global_dim": global_dim,
    }


def cache_key(*, size: str, seed: int, region_dim: int, global_dim: int, regions: int) -> str:
    """Directory name of a world in the cache, e.g. ``small-s0-r36x128-g256-v1``."""
    return f"{size}-s{seed}-r{regions}x{region_dim}-g{global_dim}-v{GENERATOR_VERSION}"


def write_synthetic(
    out_dir: str | os.PathLike,
    *,
    size: str = "tiny",
    seed: int = 0,
    region_dim: int = 128,
    global_dim: int = 256,
    regions: int = 36,
) -> Path:
    """Generate a world and write it to ``out_dir`` in the precomp layout; returns ``out_dir``.

    Besides the precomp files, ``world.json`` records the generator parameters.
    """
    out = Path(out_dir)
    params = world_params(size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)
    splits = generate_world(size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)
    write_precomp(out, splits)
    (out / WORLD_FILE).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    return out


def load_synthetic(
    *,
    size: str = "small",
    seed: int = 0,
    region_dim: int = 128,
    global_dim: int = 256,
    regions: int = 36,
    cache_dir: str | os.PathLike | None = None,
) -> RetrievalData:
    """The synthetic world as a :class:`RetrievalData`, generated once and cached.

    The world lives in ``<cache>/synthetic/<key>/`` where ``<cache>`` is ``cache_dir``
    if given, else :func:`xmrbench.data.cache.cache_root`, and ``<key>`` encodes size,
    seed, dimensions and ``GENERATOR_VERSION``. Splits: ``train``, ``dev``, ``test`` (the
    first fold of ``testall``) and ``testall`` (5 folds of ``n_test`` images).
    ``name`` is ``synthetic-<size>``; ``info`` is the precomp info plus the generator
    parameters; ``fingerprint`` is the directory fingerprint.
    """
    check_params(size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)
    params = world_params(size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    key = cache_key(size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)
    dest = root / "synthetic" / key

    def build(tmp: Path) -> None:
        write_synthetic(tmp, size=size, seed=seed, region_dim=region_dim, global_dim=global_dim, regions=regions)

    path = materialize(dest, build, meta=params)
    data = load_precomp(path, captions_per_image=CAPTIONS_PER_IMAGE, name=f"synthetic-{size}")
    data.info.update({"source": "synthetic", **params})
    return data
