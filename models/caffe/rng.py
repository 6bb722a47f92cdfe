"""Caffe's random streams for the data layers.

Caffe draws from ``boost::mt19937``, the standard Mersenne Twister seeded with ``init_genrand``,
which is exactly numpy's legacy ``RandomState(seed)``:

- ``caffe_rng_rand()``: the next 32-bit number of the global generator, which
  ``caffe.set_random_seed`` seeds. A data layer draws its
  own seeds from it while the net is built, in Caffe's order.
- ``Stream(seed)``: a layer's own generator; ``draw()`` is one 32-bit number and
  ``rand(n) = draw() % n`` is Caffe's ``DataTransformer::Rand``.
- ``shuffle(items, stream)``: ``caffe::shuffle`` (Fisher-Yates from the back, each index drawn
  with boost's ``uniform_int``), so ImageData's ``shuffle: true`` orders a list as Caffe does.
"""
from __future__ import annotations

import numpy as np

_U32 = 0xFFFFFFFF


_global = np.random.RandomState()     # Caffe's global generator; unseeded until asked


def seed(value: int) -> None:
    """Seed Caffe's global generator (``caffe.set_random_seed`` calls this)."""
    global _global
    _global = np.random.RandomState(int(value) & _U32)


def caffe_rng_rand() -> int:
    """The next number of the global generator (seeded by ``caffe.set_random_seed``). It is
    this module's own, so that other code drawing from numpy's generator cannot shift it."""
    return int(_global.randint(0, 1 << 32, dtype=np.uint32))


class Stream:
    """One layer's mt19937 generator."""

    def __init__(self, seed: int):
        self._mt = np.random.RandomState(int(seed) & _U32)

    def draw(self) -> int:
        return int(self._mt.randint(0, 1 << 32, dtype=np.uint32))

    def draws(self, n: int) -> np.ndarray:
        return self._mt.randint(0, 1 << 32, size=n, dtype=np.uint32)

    def rand(self, n: int) -> int:
        return self.draw() % n

    def uniform_int(self, hi: int) -> int:
        """boost::uniform_int(0, hi) on this generator."""
        if hi == 0:
            return 0
        bucket = _U32 // (hi + 1)
        if _U32 % (hi + 1) == hi:
            bucket += 1
        while True:
            r = self.draw() // bucket
            if r <= hi:
                return r


def shuffle(items: list, stream: Stream) -> None:
    """caffe::shuffle, in place."""
    for i in range(len(items) - 1, 0, -1):
        j = stream.uniform_int(i)
        items[i], items[j] = items[j], items[i]
