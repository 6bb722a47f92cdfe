"""Images as Caffe's OpenCV calls give them: decoded to BGR uint8 H x W x C, and resized with
``cv::resize``'s INTER_LINEAR, bit for bit.

Caffe reads images with ``cv::imread`` / ``cv::imdecode`` and three flags: COLOR (3 channels,
BGR), GRAYSCALE (1 channel) and UNCHANGED (what the file holds: 1, 3 or 4 channels, used for an
encoded Datum without force_color/force_gray). Decoding here is Pillow's libjpeg-turbo / libpng,
which gives OpenCV's pixels (checked against the golden LMDBs real Caffe wrote; a JPEG decoded to
gray is libjpeg's luma plane, as OpenCV asks libjpeg for it).

``resize`` is OpenCV's fixed-point bilinear for 8-bit images: source coordinates
``(d + 0.5) * scale - 0.5`` in float, weights rounded to 11 bits, a horizontal pass into int32
and a vertical pass ``((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2``; borders
replicate.
"""
from __future__ import annotations

import io

import numpy as np

COLOR, GRAYSCALE, UNCHANGED = "color", "gray", "unchanged"

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


MAX_PIXELS = 100_000_000   # more than any training image: a decompression bomb's header


class ImageDecodeError(ValueError):
    """The bytes are not an image this runtime can turn into 8-bit pixels (the message says why)."""


def check_pixels(width: int, height: int, limit: int = MAX_PIXELS) -> None:
    """ImageDecodeError when a header claims more than ``limit`` pixels (checked before
    decoding: a few hundred bytes of PNG can claim billions)."""
    if width * height > limit:
        raise ImageDecodeError(f"the image claims {width} x {height} = {width * height:,} "
                               f"pixels, more than {limit:,} (a decompression bomb?)")


def decode(data: bytes, flag: str = COLOR) -> np.ndarray:
    """Image file bytes -> uint8 H x W x C in OpenCV's channel order (BGR / BGRA / gray); the
    array may be a read-only, strided view."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(*im.size)
            if flag == GRAYSCALE and im.format == "JPEG":
                im.draft("L", im.size)      # libjpeg's own grayscale output, as OpenCV asks
            im.load()
            fmt = im.format
            if flag != UNCHANGED and im.getexif().get(0x0112, 1) != 1:
                im = ImageOps.exif_transpose(im)   # OpenCV applies it unless UNCHANGED
            return _to_array(im, flag, fmt)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, ImageDecodeError):
            raise
        raise ImageDecodeError(f"corrupt image ({e})") from None


def read(path, flag: str = COLOR) -> np.ndarray:
    """``cv::imread``: an image file -> uint8 H x W x C (FileNotFoundError if it is missing)."""
    with open(path, "rb") as f:
        return decode(f.read(), flag)


def _to_array(im, flag, fmt) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):   # 16-bit gray
        if flag == UNCHANGED:
            raise ImageDecodeError("16-bit image; Caffe needs 8-bit pixels (CV_8U)")
        arr = (np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8)   # libpng's strip_16
        return arr[:, :, None] if flag == GRAYSCALE else np.repeat(arr[:, :, None], 3, axis=2)
    if flag == COLOR:
        return np.asarray(_rgb(im))[:, :, ::-1]
    if flag == GRAYSCALE:
        if mode in ("L", "1"):
            return np.asarray(im.convert("L"))[:, :, None]
        rgb = np.asarray(_rgb(im))
        return _libpng_gray(rgb) if fmt == "PNG" else _cv_gray(rgb)
    # UNCHANGED: the channels the file holds
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"))[:, :, None]
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        return rgba[:, :, [2, 1, 0, 3]]
    return np.asarray(_rgb(im))[:, :, ::-1]


def _rgb(im):
    return im if im.mode == "RGB" else im.convert("RGB")


def _cv_gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's cvtColor(BGR2GRAY) for 8-bit: 14-bit fixed point, rounded."""
    r, g, b = (rgb[:, :, i].astype(np.int32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)[:, :, None]


def _libpng_gray(rgb: np.ndarray) -> np.ndarray:
    """libpng's rgb_to_gray as OpenCV sets it up (0.299, 0.587): 15-bit fixed point, truncated."""
    r, g, b = (rgb[:, :, i].astype(np.int32) for i in range(3))
    return ((r * 9797 + g * 19234 + b * 3737) >> 15).astype(np.uint8)[:, :, None]


# ---------------------------------------------------------------- cv::resize, INTER_LINEAR

def _axis_table(src: int, dst: int):
    """Per destination index: left/top source index, right/bottom one, and 11-bit weights."""
    scale = 1.0 / (dst / src)                       # OpenCV's scale_x = 1 / inv_scale_x
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    return i0, frac


def _weights(frac):
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    return w0, w1


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, Size(width, height))`` with INTER_LINEAR, for uint8 H x W x C."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError("resize works on uint8 images")
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img[:, :, 0].copy() if squeeze else img.copy()

    # horizontal pass: int32 rows, weights 11-bit; at and past the right border the last pixel
    sx, fx = _axis_table(w, width)
    left = sx < 0
    fx[left], sx[left] = 0, 0
    a0, a1 = _weights(fx)
    border = sx + 1 >= w                            # from here on: S[sx] * ONE
    if border.any():
        first = int(np.argmax(border))
        border[first:] = True
    sx = np.minimum(sx, w - 1)
    a0[border], a1[border] = _COEF_SCALE, 0
    sx1 = np.minimum(sx + 1, w - 1)

    sy, fy = _axis_table(h, height)                 # rows clamp; weights stay as computed
    b0, b1 = _weights(fy)
    y0 = np.clip(sy, 0, h - 1)
    y1 = np.clip(sy + 1, 0, h - 1)
    rows = np.unique(np.concatenate([y0, y1]))
    src = img[rows].astype(np.int32)
    horiz = src[:, sx] * a0[None, :, None] + src[:, sx1] * a1[None, :, None]
    pos = np.searchsorted(rows, np.arange(h))       # source row -> index into horiz
    r0 = horiz[pos[y0]] >> 4
    r1 = horiz[pos[y1]] >> 4
    out = ((b0[:, None, None] * r0) >> 16) + ((b1[:, None, None] * r1) >> 16)
    out = np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out
