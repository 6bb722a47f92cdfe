"""Image files to Datum payloads and back: the pixel work, done in worker processes.

``encode_file`` does what convert_imageset's ReadImageToDatum does for one line of a list file:
read the image as 3-channel colour (EXIF orientation applied, as cv::imread does), resize it,
then either encode it (``jpg``/``png``: the file bytes, like ``--encoded --encode_type=jpg``) or
keep the raw pixels as uint8 C x H x W in BGR order. ``decode_payload`` is the reverse, as
compute_image_mean and the Data layer read a record. Only numpy and PIL are imported here, so
worker processes start quickly.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .resize import resize_image

ENCODINGS = ("jpg", "png", "raw")
_ORIENTATION = 0x0112          # the EXIF orientation tag


@dataclass(frozen=True)
class EncodeSettings:
    """How every record of an LMDB is made."""

    height: int = 256
    width: int = 256
    resize_mode: str = "squash"
    encoding: str = "jpg"          # jpg | png | raw
    jpeg_quality: int = 95         # cv::imencode's default
    seed: int = 0                  # seeds the padding noise of fill / half_crop


@dataclass(frozen=True)
class Payload:
    """What goes into one Datum besides its label (channels/height/width are 0 when encoded)."""

    data: bytes
    encoded: bool
    channels: int = 0
    height: int = 0
    width: int = 0


class ImageReadError(Exception):
    """The file is missing or is not an image PIL can decode."""


def load_rgb(path) -> np.ndarray:
    """The image at path as uint8 H x W x 3 RGB, turned upright by its EXIF orientation."""
    try:
        with Image.open(path) as im:
            if im.getexif().get(_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"not a readable image ({e})") from None


def noise_rng(seed: int, key: str) -> np.random.Generator:
    """The padding-noise generator for one image: fixed by the seed and the image's key."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def encode_array(rgb: np.ndarray, settings: EncodeSettings, noise_key: str = "") -> Payload:
    """An RGB array resized and packed as settings say."""
    pads = settings.resize_mode in ("fill", "half_crop")
    out = resize_image(rgb, settings.height, settings.width, settings.resize_mode,
                       noise_rng(settings.seed, noise_key) if pads else None)
    if settings.encoding == "raw":
        chw = np.ascontiguousarray(out[:, :, ::-1].transpose(2, 0, 1))   # RGB HWC -> BGR CHW
        return Payload(chw.tobytes(), False, *chw.shape)
    buf = io.BytesIO()
    if settings.encoding == "jpg":
        Image.fromarray(out).save(buf, format="JPEG", quality=settings.jpeg_quality)
    elif settings.encoding == "png":
        Image.fromarray(out).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not "
                         f"{settings.encoding!r}")
    return Payload(buf.getvalue(), True)


def encode_file(path, settings: EncodeSettings, noise_key: str = "") -> Payload:
    return encode_array(load_rgb(path), settings, noise_key)


def encode_chunk(task):
    """Worker entry: (settings, [(path, noise_key), ...]) -> [Payload or (path, error)]."""
    settings, jobs = task
    out = []
    for path, noise_key in jobs:
        try:
            out.append(encode_file(path, settings, noise_key))
        except ImageReadError as e:
            out.append((str(path), str(e)))
    return out


def decode_payload(data: bytes, encoded: bool, channels=0, height=0, width=0) -> np.ndarray:
    """A record's pixels as uint8 C x H x W, BGR (as Caffe's readers see them)."""
    if not encoded:
        return np.frombuffer(data, np.uint8).reshape(channels, height, width)
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def sum_encoded(blobs):
    """Worker entry: the int64 pixel sum (C x H x W) of encoded records, and their shape."""
    total, shape = None, None
    for data in blobs:
        img = decode_payload(data, True)
        if total is None:
            total, shape = np.zeros(img.shape, np.int64), img.shape
        elif img.shape != shape:
            return None, img.shape
        total += img
    return total, shape
