"""The synthetic world: a seeded generator of scenes, captions and image features.

It needs no download and gives the same bytes for the same parameters on every
machine. See ``docs/synthetic_world.md`` for the generative model.

- :func:`load_synthetic`: generate once into the cache, open through the precomp reader;
- :func:`generate_world`: the splits in memory;
- :func:`write_synthetic`: write a world to a directory in the precomp layout.

Beside the image-caption world, each through the writer and loader of its real format:
``labelled.load_synthetic_labelled`` (ACMR-shaped labelled feature sets),
``entities.load_synthetic_entities`` (phrases, boxes and region proposals) and
``wordvec.load_synthetic_word_vectors`` (a GloVe text file). ``semantics`` makes the
detector output, image-level tags, tag expansion and labels every split carries.
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
