"""Image files into pixels, for every stage: one loader, Caffe's decode, one resize.

Three entry points, one error type (``ImageError``, whose ``reason`` says what is wrong):

``load(source)``
    What every stage reads (scrape checks, faces, label, score, crop, t-SNE, serve): uint8
    H x W x 3 BGR, turned upright by its EXIF orientation, transparency composited on white,
    gray / CMYK / 16-bit files made 8-bit colour.
``decode(data, flag)`` / ``read(path, flag)``
    ``cv::imdecode`` / ``cv::imread`` exactly as Caffe calls them (COLOR, GRAYSCALE or
    UNCHANGED): what the Data and ImageData layers see.
``resize(img, height, width)``
    ``cv::resize`` with INTER_LINEAR, the call convert_imageset and ImageData make.

Every file first goes through ``probe``: Pillow reads the header only, limited to an explicit
allow-list (JPEG, PNG, GIF, WebP, BMP, TIFF), so no other decoder ever sees the bytes (never
PostScript/EPS, which would make Pillow start Ghostscript), and the pixel count is checked before
anything is decoded. The pixels then come from OpenCV, as Caffe's did: ``cv2.imdecode`` is the
decoder Caffe used (so no emulation to keep in step), and measured on a 640x480 JPEG it decodes
in about a third of Pillow's time (1.1 ms vs 3.3 ms); ``cv2.resize`` is OpenCV's own fixed-point
bilinear, 6x faster than the numpy copy of it this replaced. GIF is decoded by Pillow (its
first frame), since it is a palette format and needs its transparency composited.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np

COLOR, GRAYSCALE, UNCHANGED = "color", "gray", "unchanged"

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
ALLOWED_TEXT = "JPEG, PNG, GIF, WebP, BMP or TIFF"
MAX_PIXELS = 100_000_000   # more than any photo (a phone's are up to ~50 MP): a bomb's header

_ORIENTATION_TAG = 0x0112
_STRIP_PIXELS = 1 << 16     # pixels converted at a time (a few MB of temporaries)


class ImageError(ValueError):
    """The bytes are not an image this project reads; ``reason`` says why, ``kind`` is one of
    "missing", "format", "too_large", "corrupt"."""

    def __init__(self, reason: str, kind: str = "corrupt", *, size=None, pixels=None,
                 what=None):
        super().__init__(reason)
        self.reason, self.kind = reason, kind
        self.size, self.pixels = size, pixels      # too_large: (w, h) when read, else the count
        self.what = what                           # format: what the bytes look like instead


@dataclass(frozen=True)
class Header:
    """What the file says about itself, read without decoding its pixels."""

    format: str                 # one of ALLOWED_FORMATS ("JPEG" for phones' MPO files too)
    width: int
    height: int
    mode: str                   # Pillow's mode name: RGB, RGBA, L, P, CMYK, I;16 ...
    orientation: int            # EXIF orientation, 1 when absent
    has_alpha: bool


def _cv2():
    import cv2
    return cv2


def _what_it_is(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith(b"%!ps") or data[:4] == b"\xc5\xd0\xd3\xc6":
        return "PostScript"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "HTML"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if data[4:8] == b"ftyp":
        return "a video or HEIF file"
    return "unknown bytes"


def read_bytes(source) -> bytes:
    """A path, bytes or a binary file object -> the bytes (ImageError "missing" when absent)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("file not found", "missing") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image", "missing") from None


def read_checked(source, max_pixels: int | None = MAX_PIXELS) -> tuple[bytes, Header]:
    """(the bytes, the header) of an image: a path, bytes or a binary file object. A file's
    header is read before the rest, so a file that is not an allowed image (a video in a photo
    folder) is never read whole, nor one far larger than its pixels could need."""
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read"):
        data = read_bytes(source)
        return data, probe(data, max_pixels)
    try:
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = probe(f, max_pixels)
            need = 8 * head.width * head.height + (1 << 20)    # 16-bit RGBA, uncompressed
            if size > need:
                raise ImageError(f"the file ({size:,} bytes) is far larger than its "
                                 f"{head.width} x {head.height} pixels need")
            f.seek(0)
            return f.read(), head
    except FileNotFoundError:
        raise ImageError("file not found", "missing") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image", "missing") from None


def probe(data, max_pixels: int | None = MAX_PIXELS) -> Header:
    """The header of ``data`` (bytes, or a binary file object read from its start; nothing is
    decoded); ImageError unless it is an allowed format with at most ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError
    if hasattr(data, "read"):
        fp = data
        data = fp.read(512)
        fp.seek(0)
    else:
        fp = io.BytesIO(data)
    if not data:
        raise ImageError("empty file", "format")
    try:
        with Image.open(fp, formats=ALLOWED_FORMATS) as im:
            fmt, (w, h), mode, info = im.format, im.size, im.mode, im.info
            try:
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
            except Exception:       # a broken EXIF block does not make the pixels unreadable
                orientation = 1
    except UnidentifiedImageError:
        what = _what_it_is(data)
        raise ImageError(f"not an allowed image format ({what}; allowed: {ALLOWED_TEXT})",
                         "format", what=what) from None
    except Image.DecompressionBombError as e:
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(claimed[1]) if claimed else None
        raise ImageError(f"too many pixels ({f'{pixels:,}' if pixels else 'huge'}; the limit "
                         f"is {int(max_pixels or MAX_PIXELS):,})", "too_large",
                         pixels=pixels) from None
    except Exception as e:          # whatever a header parser says about bad bytes
        raise ImageError(f"corrupt image ({_short(e)})") from None
    if max_pixels and w * h > max_pixels:
        raise ImageError(f"too many pixels ({w} x {h} = {w * h:,} pixels; the limit is "
                         f"{int(max_pixels):,})", "too_large", size=(w, h), pixels=w * h)
    fmt = "JPEG" if fmt == "MPO" else fmt
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info
    return Header(fmt, w, h, mode, orientation if 1 <= orientation <= 8 else 1, has_alpha)


def _short(e: Exception) -> str:
    return (str(e) or type(e).__name__)[:100]


# ---------------------------------------------------------------- the stages' loader

def load(source, *, max_pixels: int | None = MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """An image (path, bytes or binary file) as C-contiguous uint8 H x W x 3 BGR, upright, alpha
    composited on white. With ``min_side`` a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling) as long as both sides stay at least that long: faster, different pixels."""
    data, head = read_checked(source, max_pixels)
    if head.format == "GIF":
        bgr = _gif_first_frame(data)
    else:
        bgr = _decode_colour(data, head, min_side)
    return np.ascontiguousarray(_upright(bgr, head.orientation))


def _decode_colour(data: bytes, head: Header, min_side) -> np.ndarray:
    cv2 = _cv2()
    buf = np.frombuffer(data, np.uint8)
    if head.has_alpha:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)       # keeps alpha, ignores EXIF
        if arr is None:
            raise ImageError(f"corrupt or truncated {head.format} image")
        return _flatten(arr)
    flag = cv2.IMREAD_COLOR
    if min_side and head.format == "JPEG":
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if min(head.width, head.height) // factor >= min_side:
                flag = reduced
                break
    arr = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise ImageError(f"corrupt or truncated {head.format} image")
    return _flatten(arr)


def _flatten(arr: np.ndarray) -> np.ndarray:
    """Any decoded array (gray, BGR, BGRA; 8- or 16-bit) -> 8-bit BGR, alpha on white. Converted
    strip by strip into one new array, so a big RGBA upload costs its decoded size plus the
    3-byte-a-pixel result, not several full-size temporaries (serve budgets memory that way)."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"unsupported pixel type ({arr.dtype}); expected 8- or 16-bit")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if arr.dtype == np.uint8 and c == 3:
        return arr
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, w))
    for y in range(0, h, rows):
        strip = arr[y:y + rows]
        if strip.dtype == np.uint16:
            strip = (strip >> 8).astype(np.uint8)
        if c in (2, 4):
            colour = strip[:, :, :c - 1].astype(np.uint16)
            alpha = strip[:, :, c - 1:].astype(np.uint16)
            strip = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        out[y:y + rows] = strip          # one gray channel broadcasts to three
    return out


def _gif_first_frame(data: bytes) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as im:
            im.seek(0)
            rgba = np.asarray(im.convert("RGBA"))
    except Exception as e:
        raise ImageError(f"corrupt or truncated GIF image ({_short(e)})") from None
    return _flatten(rgba[:, :, [2, 1, 0, 3]])


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) as a viewer (and ``ImageOps.exif_transpose``) would."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(img, -1)
    if orientation == 7:
        return img[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(img, 1)
    return img


# ---------------------------------------------------------------- Caffe's own decode

_CV_FLAGS = {COLOR: "IMREAD_COLOR", GRAYSCALE: "IMREAD_GRAYSCALE", UNCHANGED: "IMREAD_UNCHANGED"}


def decode(data: bytes, flag: str = COLOR, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """``cv::imdecode(data, flag)`` as Caffe calls it: uint8 H x W x C in OpenCV's channel order
    (BGR / BGRA / gray); EXIF orientation applied except with UNCHANGED."""
    data = bytes(data)
    probe(data, max_pixels)
    cv2 = _cv2()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), getattr(cv2, _CV_FLAGS[flag]))
    if arr is None:
        raise ImageError("corrupt image (OpenCV could not decode it)")
    if arr.dtype != np.uint8:
        raise ImageError(f"{arr.dtype.itemsize * 8}-bit image; Caffe needs 8-bit pixels (CV_8U)")
    return arr[:, :, None] if arr.ndim == 2 else arr


# (format, Pillow mode) -> the channels cv::imdecode gives with IMREAD_UNCHANGED; only what is
# sure: 8-bit JPEG and PNG without a palette
_UNCHANGED_CHANNELS = {("JPEG", "L"): 1, ("JPEG", "RGB"): 3,
                       ("PNG", "L"): 1, ("PNG", "RGB"): 3, ("PNG", "RGBA"): 4}


def decoded_shape(data: bytes, flag: str = COLOR) -> tuple[int, int, int] | None:
    """The H x W x C ``decode(data, flag)`` will return, read from the header alone (about a
    tenth of a small JPEG's decode), or None where only decoding can tell (another format or
    mode, an EXIF orientation, a header that does not parse: ``decode`` says what is wrong)."""
    try:
        head = probe(data)
    except ImageError:
        return None
    channels = _UNCHANGED_CHANNELS.get((head.format, head.mode))
    if channels is None or head.orientation != 1:
        return None
    if flag != UNCHANGED:
        channels = 3 if flag == COLOR else 1
    return head.height, head.width, channels


def read(path, flag: str = COLOR) -> np.ndarray:
    """``cv::imread``: an image file -> uint8 H x W x C (FileNotFoundError if it is missing)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        return decode(f.read(), flag)


# ---------------------------------------------------------------- cv::resize

def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, Size(width, height))`` with INTER_LINEAR, for uint8 H x W (x C); the
    channel axis is kept as given."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError("resize works on uint8 images")
    if img.shape[:2] == (height, width):
        return img.copy()
    out = _cv2().resize(np.ascontiguousarray(img), (int(width), int(height)),
                        interpolation=_cv2().INTER_LINEAR)
    return out.reshape((height, width) + img.shape[2:])


def encode(img: np.ndarray, ext: str, quality: int = 95) -> bytes:
    """``cv::imencode`` of uint8 H x W x C BGR: ".jpg" (quality) or ".png" (fast level 1)."""
    cv2 = _cv2()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else \
        [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), params)
    if not ok:
        raise ImageError(f"OpenCV could not encode a {img.shape} image as {ext}")
    return buf.tobytes()


def jpeg_round_trip(img: np.ndarray, quality: int = 95) -> np.ndarray:
    """``decode(encode(img, ".jpg", quality), COLOR)``: what a JPEG record of ``img`` decodes
    to. The bytes are this process's own, so they skip ``probe`` (a fifth of this call)."""
    cv2 = _cv2()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY,
                                                               int(quality)])
    arr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if arr is None:
        raise ImageError(f"OpenCV could not encode a {img.shape} image as JPEG")
    return arr
