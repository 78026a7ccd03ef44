"""The synthetic world: a seeded generator of scenes, captions and image features.

It needs no download and gives the same bytes for the same parameters on every
machine. See ``docs/synthetic_world.md`` for the generative model.

- :func:`load_synthetic`: generate once into the cache, open through the precomp reader;
- :func:`generate_world`: the splits in memory;
- :func:`write_synthetic`: write a world to a directory in the precomp layout.
"""

from xmrbench.data.synthetic.load import cache_key, load_synthetic, write_synthetic
from xmrbench.data.synthetic.world import GENERATOR_VERSION, SIZES, SizeSpec, generate_world

__all__ = [
    "GENERATOR_VERSION",
    "SIZES",
    "SizeSpec",
    "cache_key",
    "generate_world",
    "load_synthetic",
    "write_synthetic",
]
