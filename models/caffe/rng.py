"""Caffe's random numbers: ``boost::mt19937`` and the boost distributions Caffe draws through.

Caffe draws everything from a 32-bit Mersenne Twister (``boost::mt19937``) seeded with the
standard ``init_genrand``, which is exactly numpy's legacy ``RandomState(seed)``; its raw words
come from that bit generator in blocks, so filling a large blob costs numpy operations, not a
Python loop per weight.

- ``seed(s)`` / ``caffe_rng_rand()``: the global generator (``Caffe::set_random_seed``, and its
  next 32-bit word). Unseeded it starts from OS entropy, as Caffe's ``cluster_seedgen`` does;
  ``seeded()`` says whether a seed was set, so callers may keep torch's own fast fillers when
  nothing can be reproduced anyway.
- ``Stream(seed)``: one generator (a data transformer's, an ImageData shuffle's): ``draw()``,
  ``rand(n) = draw() % n`` (``DataTransformer::Rand``), ``uniform_int`` (boost ``uniform_int``).
- The distributions, as boost 1.62 and later computes them (the golden weights real Caffe 1.0
  drew tell the versions apart: a Box-Muller normal, or a tail drawn with log(), does not give
  them), in the given precision, each consuming words exactly as boost does:
  ``uniform_real(n, a, b)`` is ``caffe_rng_uniform`` (boost ``uniform_real`` on [a, nextafter(b)));
  ``gaussian(n, mean, std)`` is ``caffe_rng_gaussian`` (boost's ziggurat ``normal_distribution``:
  one word per try, a second for the wedge test, ziggurat exponential draws for the tail);
  ``bernoulli(n, p, double)`` is ``caffe_rng_bernoulli`` (one word per draw; none when p == 0).
- ``shuffle(items, stream)``: ``caffe::shuffle``.
"""
from __future__ import annotations

import math

import numpy as np

_U32 = 0xFFFFFFFF
_F32 = np.float32


class Stream:
    """One ``boost::mt19937``: raw 32-bit words in order, with words read ahead put back."""

    def __init__(self, seed: int | None = None):
        if seed is None:                       # Caffe's cluster_seedgen: entropy
            seed = int.from_bytes(np.random.SeedSequence().generate_state(1).tobytes()[:4],
                                  "little")
        self._bits = np.random.RandomState(int(seed) & _U32)._bit_generator
        self._ahead = np.empty(0, np.uint32)   # words taken from the twister, not yet used

    def words(self, n: int) -> np.ndarray:
        """The next ``n`` words (uint32)."""
        n = int(n)
        if n <= len(self._ahead):
            out, self._ahead = self._ahead[:n], self._ahead[n:]
            return out
        fresh = self._bits.random_raw(n - len(self._ahead)).astype(np.uint32)
        out = np.concatenate([self._ahead, fresh]) if len(self._ahead) else fresh
        self._ahead = np.empty(0, np.uint32)
        return out

    def put_back(self, unused: np.ndarray) -> None:
        """Return words read ahead; they come out next, in order."""
        if len(unused):
            self._ahead = np.concatenate([np.asarray(unused, np.uint32), self._ahead])

    def draw(self) -> int:
        return int(self.words(1)[0])

    def draws(self, n: int) -> np.ndarray:
        return self.words(n)

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

    # ------------------------------------------------------------ boost's distributions
    def uniform_real(self, n: int, a: float, b: float, dtype=np.float32) -> np.ndarray:
        """``caffe_rng_uniform``: boost ``uniform_real(a, nextafter(b))``, computed in ``dtype``
        as boost does: (word / 2^32) * (hi - lo) + lo, drawn again when it reaches hi."""
        t = np.dtype(dtype).type
        lo, hi = t(a), np.nextafter(t(b), t(np.inf))
        span = hi - lo
        out = np.empty(int(n), dtype)
        done = 0
        while done < len(out):
            need = min(len(out) - done, _BLOCK)
            w = self.words(need)
            val = w.astype(dtype) / t(4294967296.0) * span + lo
            if not (val >= hi).any():           # the rule: no word drawn again
                out[done:done + need] = val
                done += need
                continue
            take = np.flatnonzero(val < hi)     # a redraw: the words after it shift along
            out[done:done + len(take)] = val[take]
            done += len(take)
        return out

    def bernoulli(self, n: int, p: float, dtype=np.float32) -> np.ndarray:
        """``caffe_rng_bernoulli`` as 0/1 ints: word <= p * (2^32 - 1), in ``dtype``
        (Dropout passes a double p, the sparse gaussian filler a float one)."""
        t = np.dtype(dtype).type
        if t(p) == 0:
            return np.zeros(int(n), np.int32)      # boost draws nothing for p == 0
        w = self.words(n)
        return (w.astype(dtype) <= t(p) * t(4294967295.0)).astype(np.int32)

    def gaussian(self, n: int, mean: float, std: float) -> np.ndarray:
        """``caffe_rng_gaussian`` in float32: boost's ziggurat unit normal * std + mean."""
        out = np.empty(int(n), np.float32)
        done, margin = 0, 64
        while done < len(out):
            vals = _ziggurat_block(self, len(out) - done, margin)
            out[done:done + len(vals)] = vals
            done += len(vals)
            margin = 64 if len(vals) else margin * 4   # a try longer than the margin
        return out * _F32(std) + _F32(mean)

    def uniform_01(self) -> float:
        """boost ``uniform_01<float>``: word * 2^-32 in float32, drawn again when it rounds
        to 1."""
        while True:
            r = _F32(self.draw()) * _F32(2.0 ** -32)
            if r < _F32(1.0):
                return r


# ---------------------------------------------------------------- the ziggurat's tables
def _ziggurat_tables():
    """Boost's 128-layer ziggurat for exp(-x^2/2): x[1] = r = 3.442619855899 (the tail's start),
    each layer of area v, x[0] = v / f(r), x[128] = 0; y[i] = f(x[i]), y[128] = 1."""
    def f(x):
        return math.exp(-x * x / 2)
    r = 3.442619855899
    v = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    xs = [v / f(r), r]
    for _ in range(1, 127):
        xs.append(math.sqrt(-2 * math.log(f(xs[-1]) + v / xs[-1])))
    xs.append(0.0)
    ys = [0.0] + [f(x) for x in xs[1:128]] + [1.0]
    return np.array(xs), np.array(ys)


def _exponential_tables():
    """Boost's 256-layer ziggurat for exp(-x): x[1] = r = 7.69711747013104972, x[0] = v / f(r),
    x[256] = 0; y[i] = f(x[i]), y[0] = 0, y[256] = 1."""
    r = 7.69711747013104972
    v = r * math.exp(-r) + math.exp(-r)
    xs = [v / math.exp(-r), r]
    for _ in range(1, 255):
        xs.append(-math.log(math.exp(-xs[-1]) + v / xs[-1]))
    xs.append(0.0)
    ys = [0.0] + [math.exp(-x) for x in xs[1:256]] + [1.0]
    return np.array(xs), np.array(ys)


_TX, _TY = _ziggurat_tables()
_EX, _EY = _exponential_tables()
_TX32 = _TX.astype(np.float32)
_TY32 = _TY.astype(np.float32)
_DY32 = (_TY[1:] - _TY[:-1]).astype(np.float32)   # boost casts the double difference
_TAIL32 = _F32(_TX[1])


def _wedge_accepts(i, x, y01):
    """Boost's test of a point in layer ``i`` outside its rectangle (float32 arrays): below
    the tangent accept, above the chord reject, else compare with exp(-x^2/2)."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = _TY32[i] + y01 * _DY32[i]
        tx, ty = _TX32[i], _TY32[i]
        chord = (_TX[i] - _TX[i + 1]).astype(np.float32) * y01 - (tx - x)
        tangent = y - (ty + (tx - x) * ty * tx)
        convex = _TX[i] >= 1
        above_ub = np.where(convex, chord, tangent)
        above_lb = np.where(convex, tangent, chord)
        return (above_ub < 0) & ((above_lb < 0) | (y < np.exp(-(x * x / _F32(2.0)))))


def _one_normal(words: np.ndarray, q: int):
    """One ziggurat try sequence from ``words[q:]`` done word by word (the tail and the rare
    redraws): (value, words used), or None when the block ends first."""
    pos = q

    def word():
        nonlocal pos
        if pos >= len(words):
            raise IndexError
        pos += 1
        return int(words[pos - 1])

    def unit01():
        while True:
            r = _F32(word()) * _F32(2.0 ** -32)
            if r < _F32(1.0):
                return r

    def exponential(lam):      # boost >= 1.62: a ziggurat too, the tail a shifted repeat
        shift = _F32(0.0)
        while True:
            w = word()
            i = w & 0xFF
            x = _F32(w >> 8) * _F32(2.0 ** -24) * _F32(_EX[i])
            if x < _F32(_EX[i + 1]):
                return (shift + x) / lam
            if i == 0:
                shift += _F32(_EX[1])
                continue
            y01 = unit01()
            y = _F32(_EY[i]) + y01 * _F32(_EY[i + 1] - _EY[i])
            above_ub = _F32(_EX[i] - _EX[i + 1]) * y01 - (_F32(_EX[i]) - x)
            above_lb = y - (_F32(_EY[i + 1]) + (_F32(_EX[i + 1]) - x) * _F32(_EY[i + 1]))
            if above_ub < 0 and (above_lb < 0 or y < _F32(np.exp(-x))):
                return (x + shift) / lam

    try:
        while True:
            w = word()
            i, sign = (w & 0xFF) >> 1, _F32((w & 1) * 2 - 1)
            x = _F32(w >> 8) * _F32(2.0 ** -24) * _TX32[i]
            if float(x) < _TX[i + 1]:
                return x * sign, pos - q
            if i == 0:                           # the tail, from the exponential(r) proposal
                while True:
                    ex = exponential(_TAIL32)
                    ey = exponential(_F32(1.0))
                    if _F32(2.0) * ey > ex * ex:
                        return (ex + _TAIL32) * sign, pos - q
            y01 = unit01()
            if _wedge_accepts(np.array([i]), np.array([x], np.float32),
                              np.array([y01], np.float32))[0]:
                return x * sign, pos - q
    except IndexError:
        return None


_BLOCK = 1 << 22      # values per vectorised block (bounds the temporary arrays)


def _ziggurat_block(stream: Stream, need: int, margin: int = 64) -> np.ndarray:
    """Up to ``need`` unit normals (at least one), consuming exactly the words boost would;
    words read ahead go back to the stream.

    Every word is first tried as the start of a try, all at once: ~98.8% land inside their
    rectangle and are done with one word. Only the rest (a wedge needs the next word too, the
    tail and uniform_01's rare redraw need more) are walked in order, to find which words start
    a try and which were used inside the one before."""
    need = min(int(need), _BLOCK)
    w = stream.words(need + need // 40 + margin)
    n = len(w)
    i = (w & 0xFF) >> 1
    sign = (w & 1).astype(np.float32) * _F32(2.0) - _F32(1.0)
    x = (w >> 8).astype(np.float32) * _F32(2.0 ** -24) * _TX32[i]
    fast = x.astype(np.float64) < _TX[i + 1]
    value = x * sign
    nxt = np.empty(n, np.float32)               # a wedge try at j uses word j + 1 for y01
    nxt[:-1] = w[1:].astype(np.float32) * _F32(2.0 ** -32)
    nxt[-1] = 2.0
    irregular = np.flatnonzero(~fast)
    special = ((i[irregular] == 0) | (nxt[irregular] >= 1.0)).tolist()
    wedges, specials = [], []
    pos, end = 0, n
    for q, sp in zip(irregular.tolist(), special):
        if q < pos:
            continue                            # a word used inside the try before
        if q + margin > n:
            end = q                             # finish this try in the next block
            break
        if sp:                                  # tail, or uniform_01 drawing again
            got = _one_normal(w, q)
            if got is None:
                end = q
                break
            specials.append((q, got[0], got[1]))
            pos = q + got[1]
        else:
            wedges.append(q)
            pos = q + 2
    produces = fast
    length = np.ones(n, np.int32)
    consumed = np.zeros(n, bool)
    if wedges:
        wq = np.array(wedges)
        produces[wq] = _wedge_accepts(i[wq], x[wq], nxt[wq])
        length[wq] = 2
        consumed[wq + 1] = True
    for q, v, used in specials:
        value[q], length[q], produces[q] = v, used, True
        consumed[q + 1:q + used] = True
    starts = np.flatnonzero(produces[:end] & ~consumed[:end])
    if len(starts) >= need:
        starts = starts[:need]
        used = int(starts[-1] + length[starts[-1]])
    else:
        used = end                              # every try before ``end`` is complete
    stream.put_back(w[used:])
    return value[starts]


# ---------------------------------------------------------------- Caffe's global generator
_global = Stream()
_seeded = False


def seed(value: int) -> None:
    """Seed Caffe's global generator (``caffe.set_random_seed`` calls this)."""
    global _global, _seeded
    _global = Stream(int(value) & _U32)
    _seeded = True


def seeded() -> bool:
    """Whether ``caffe.set_random_seed`` fixed the global generator."""
    return _seeded


def engine() -> Stream:
    """The global generator (``caffe_rng()``)."""
    return _global


def caffe_rng_rand() -> int:
    """The next number of the global generator (seeded by ``caffe.set_random_seed``). It is
    this module's own, so that other code drawing from numpy's generator cannot shift it."""
    return _global.draw()


def shuffle(items: list, stream: Stream) -> None:
    """caffe::shuffle, in place."""
    for i in range(len(items) - 1, 0, -1):
        j = stream.uniform_int(i)
        items[i], items[j] = items[j], items[i]
