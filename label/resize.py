"""Resizing as Caffe's convert_imageset does it, in the four shapes DIGITS offers.

Every scaling is ``models.caffe.image.resize``: OpenCV's own ``cv::resize(..., INTER_LINEAR)``,
the call convert_imageset makes (tests/test_label_golden.py checks the result against LMDBs
written by real Caffe). ``resize_image`` gives the geometry of DIGITS' resize modes
(digits/utils/image.py):
  squash     stretch to height x width
  crop       scale so the image covers the target, keep the aspect ratio, cut the centre
  fill       scale so the image fits inside, keep the aspect ratio, pad both sides with noise
  half_crop  scale by the mean of the two ratios: cut the long side, pad the short one with noise
DIGITS draws the padding noise from an unseeded generator; here the caller passes the generator,
so a rebuild writes the same pixels. Scoring calls the same function, so a net sees at scoring
time the pixels it was trained on.
"""
from __future__ import annotations

import numpy as np

from models.caffe.image import resize as _cv_resize

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")


def cv_resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv::resize(img, Size(width, height)) with INTER_LINEAR (note: width first, as OpenCV)."""
    return _cv_resize(img, height, width)


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
