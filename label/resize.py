"""Resizing as Caffe's convert_imageset does it, in the four shapes DIGITS offers.

``cv_resize_linear`` reproduces OpenCV's ``cv::resize(..., INTER_LINEAR)`` on 8-bit images bit for
bit (the call convert_imageset makes): pixel centres at +0.5, 11-bit fixed-point weights, columns
clamped at the borders, rows read clamped, and the rounding of OpenCV's vectorised vertical pass.
tests/test_label_golden.py checks it against LMDBs written by real Caffe (OpenCV may round a few
pixels differently where its SIMD loop leaves a scalar tail; no golden case showed one).

``resize_image`` gives the geometry of DIGITS' resize modes (digits/utils/image.py):
  squash     stretch to height x width
  crop       scale so the image covers the target, keep the aspect ratio, cut the centre
  fill       scale so the image fits inside, keep the aspect ratio, pad both sides with noise
  half_crop  scale by the mean of the two ratios: cut the long side, pad the short one with noise
DIGITS draws the padding noise from an unseeded generator; here the caller passes the generator,
so a rebuild writes the same pixels.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")

_COEF_BITS = 11                # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def _weights(frac: np.ndarray):
    """(1 - f, f) as OpenCV's 11-bit fixed-point shorts (saturate_cast rounds half to even)."""
    one = np.float32(1.0)
    w0 = np.rint((one - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    return w0, w1


def _source_positions(src: int, dst: int):
    """For each output index: floor position and fraction, computed as OpenCV does (float32)."""
    scale = 1.0 / (dst / src)                       # OpenCV: scale = 1. / inv_scale
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos).astype(np.int64)
    frac = pos - start.astype(np.float32)
    return start, frac


def _frozen(*arrays):
    """Cached tables are shared between calls: make them read-only."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.lru_cache(maxsize=256)
def _column_taps(src_w: int, width: int, channels: int):
    """Which source values and weights each output value of a row combines (clamped borders)."""
    x0, fx = _source_positions(src_w, width)
    left = x0 < 0
    fx[left], x0[left] = 0, 0
    right = x0 >= src_w - 1
    fx[right], x0[right] = 0, src_w - 1
    x1 = np.minimum(x0 + 1, src_w - 1)
    a0, a1 = _weights(fx)
    lanes = np.arange(channels)
    i0 = (x0[:, None] * channels + lanes).ravel()     # rows are flattened to W*C values
    i1 = (x1[:, None] * channels + lanes).ravel()
    return _frozen(i0, i1, np.repeat(a0, channels), np.repeat(a1, channels))


@functools.lru_cache(maxsize=256)
def _row_taps(src_h: int, height: int):
    """The source rows used, and for each output row its two rows (indices into those) and
    weights. The fraction is kept at the borders; the row index is clamped when read."""
    y0, fy = _source_positions(src_h, height)
    b0, b1 = _weights(fy)
    rows = np.concatenate([np.clip(y0, 0, src_h - 1), np.clip(y0 + 1, 0, src_h - 1)])
    used, where = np.unique(rows, return_inverse=True)
    return _frozen(used, where[:height], where[height:], b0[:, None], b1[:, None])


class _Scratch(threading.local):
    """Work arrays kept between calls (per thread): fresh multi-megabyte arrays cost more in
    page faults than the arithmetic done in them."""

    def __init__(self):
        self.arrays = {}

    def get(self, name, shape, dtype):
        """A contiguous array of this shape, carved from a buffer that only ever grows."""
        size = int(np.prod(shape))
        a = self.arrays.get(name)
        if a is None or a.size < size or a.dtype != dtype:
            a = self.arrays[name] = np.empty(size, dtype)
        return a[:size].reshape(shape)


_scratch = _Scratch()


def cv_resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a uint8 H x W (x C) image to height x width like cv::resize INTER_LINEAR."""
    if img.dtype != np.uint8:
        raise TypeError("cv_resize_linear takes uint8 images")
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (height, width):
        return img.copy()
    if img.ndim == 2:
        return cv_resize_linear(img[:, :, None], width, height)[:, :, 0]
    channels = img.shape[2]
    i0, i1, w0, w1 = _column_taps(src_w, width, channels)
    used, top_row, bottom_row, b0, b1 = _row_taps(src_h, height)
    flat = np.ascontiguousarray(img).reshape(src_h, src_w * channels)
    if len(used) < src_h:
        flat = np.take(flat, used, axis=0, out=_scratch.get("rows", (len(used),) + flat.shape[1:],
                                                              np.uint8))
    n, m = flat.shape[0], width * channels

    # Horizontal pass over the source rows that are used: int sums scaled by 2^11. Only
    # (sum >> 4) is ever read by the vertical pass.
    picked = _scratch.get("picked", (n, m), np.uint8)
    horiz = _scratch.get("horiz", (n, m), np.int32)
    right = _scratch.get("right", (n, m), np.int32)
    np.copyto(horiz, np.take(flat, i0, axis=1, out=picked))
    horiz *= w0
    np.copyto(right, np.take(flat, i1, axis=1, out=picked))
    right *= w1
    horiz += right
    horiz >>= 4

    # Vertical pass, with the rounding of OpenCV's SIMD path (VResizeLinearVec_32s8u):
    # ((top >> 4) * b0 >> 16) + ((bottom >> 4) * b1 >> 16), then (+2) >> 2. The weights of a
    # pass sum to at most 2049, so the result stays within 0..255 without clipping.
    top = np.take(horiz, top_row, axis=0, out=_scratch.get("top", (height, m), np.int32))
    top *= b0
    top >>= 16
    bottom = np.take(horiz, bottom_row, axis=0, out=_scratch.get("bottom", (height, m), np.int32))
    bottom *= b1
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return top.astype(np.uint8).reshape(height, width, channels)


def _round(x: float) -> int:
    """Round half away from zero, as DIGITS' Python 2 round() did (sizes are positive)."""
    return int(np.floor(x + 0.5))


def _noise(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 255, size=shape, dtype=np.uint8)    # DIGITS: randint(0, 255)


def resize_image(img: np.ndarray, height: int, width: int, mode: str = "squash",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A uint8 H x W x C image resized to height x width in one of DIGITS' modes."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (height, width):
        return img.copy()
    width_ratio = src_w / width
    height_ratio = src_h / height
    if mode == "squash" or width_ratio == height_ratio:
        return cv_resize_linear(img, width, height)
    wide = width_ratio > height_ratio                # the source is wider than the target shape

    if mode == "crop":
        if wide:
            new_h, new_w = height, _round(src_w / height_ratio)
        else:
            new_h, new_w = _round(src_h / width_ratio), width
        scaled = cv_resize_linear(img, new_w, new_h)
        return _center_cut(scaled, height, width, wide)

    if mode == "fill":
        if wide:
            new_h, new_w = _round(src_h / width_ratio), width
            new_h += (height - new_h) % 2            # keep the padding even on both sides
        else:
            new_h, new_w = height, _round(src_w / height_ratio)
            new_w += (width - new_w) % 2
        scaled = cv_resize_linear(img, new_w, new_h)
    else:  # half_crop
        ratio = (width_ratio + height_ratio) / 2.0
        new_h, new_w = _round(src_h / ratio), _round(src_w / ratio)
        if wide:
            new_h += (height - new_h) % 2
        else:
            new_w += (width - new_w) % 2
        scaled = _center_cut(cv_resize_linear(img, new_w, new_h), height, width, wide)

    rng = rng if rng is not None else np.random.default_rng(0)
    if wide:                                         # pad rows above and below
        pad = (height - scaled.shape[0]) // 2
        noise = _noise(rng, (pad,) + scaled.shape[1:])
        return np.concatenate([noise, scaled, noise], axis=0)
    pad = (width - scaled.shape[1]) // 2             # pad columns left and right
    noise = _noise(rng, (scaled.shape[0], pad) + scaled.shape[2:])
    return np.concatenate([noise, scaled, noise], axis=1)


def _center_cut(img: np.ndarray, height: int, width: int, wide: bool) -> np.ndarray:
    """Cut the centre of the dimension that is too long (width when wide, else height)."""
    if wide:
        start = _round((img.shape[1] - width) / 2.0)
        return img[:, start:start + width]
    start = _round((img.shape[0] - height) / 2.0)
    return img[start:start + height]
