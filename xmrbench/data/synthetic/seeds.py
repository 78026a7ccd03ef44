"""Named random streams derived from one world seed.

Every random draw of the synthetic world comes from a stream keyed by the world seed
and a purpose (and usually a split), for example ``("captions", "train")``. Keys are
turned into integers with SHA-256, never with ``hash()`` (which is salted per process),
so a stream depends only on the seed and its key: changing how captions are drawn
cannot change the scenes, and the same key gives the same numbers on every machine.

Two kinds of generator are handed out:

- :func:`numpy_rng`: a ``numpy.random.Generator`` (PCG64) for bulk arrays;
- :func:`python_rng`: a ``random.Random`` for the per-image loops, of which only
  ``random()`` is used (the one method whose stream Python promises to keep stable
  across versions). :class:`Draw` wraps it with the few choices the world needs.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def _key_words(keys: Sequence[str]) -> tuple[int, ...]:
    return tuple(int.from_bytes(hashlib.sha256(k.encode("utf-8")).digest()[:4], "little") for k in keys)


def seed_sequence(seed: int, *keys: str) -> np.random.SeedSequence:
    """The ``SeedSequence`` of the stream named ``keys`` in the world ``seed``."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=_key_words(keys))


def numpy_rng(seed: int, *keys: str) -> np.random.Generator:
    """A PCG64 generator for the stream named ``keys``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))


def python_rng(seed: int, *keys: str) -> Draw:
    """A :class:`Draw` over ``random.Random`` for the stream named ``keys``."""
    words = seed_sequence(seed, *keys).generate_state(4, dtype=np.uint32)
    return Draw(sum(int(w) << (32 * i) for i, w in enumerate(words)))


class Draw:
    """Scalar random choices built only on ``random.Random.random()``."""

    __slots__ = ("random",)

    def __init__(self, seed: int):
        self.random = random.Random(seed).random

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        return min(int(self.random() * n), n - 1)

    def between(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return lo + self.below(hi - lo + 1)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def chance(self, p: float) -> bool:
        return self.random() < p

    def pick(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]

    def weighted(self, weights: Sequence[float]) -> int:
        """An index drawn with probability proportional to ``weights``."""
        return self.cumulative(list(accumulate(weights)))

    def cumulative(self, cum: Sequence[float]) -> int:
        """An index drawn by cumulative weights ``cum`` (precomputed for speed)."""
        return min(bisect_right(cum, self.random() * cum[-1]), len(cum) - 1)

    def sample_weighted(self, weights: Sequence[float], k: int) -> list[int]:
        """``k`` distinct indices drawn one by one proportionally to ``weights``."""
        left = list(range(len(weights)))
        w = list(weights)
        out: list[int] = []
        for _ in range(min(k, len(left))):
            j = self.weighted(w)
            out.append(left.pop(j))
            w.pop(j)
        return out
