"""Image files to Datum payloads and back: the pixel work, done in worker processes.

``encode_file`` does what convert_imageset's ReadImageToDatum does for one line of a list file:
read the image with the project's one loader (``models.caffe.image.load``: BGR, EXIF orientation
applied as cv::imread does, transparency on white), resize it with cv::resize, then either encode
it with cv::imencode (``jpg``/``png``: like ``--encoded --encode_type=jpg``) or keep the raw
pixels as uint8 C x H x W in BGR order. ``decode_payload`` is the reverse, as compute_image_mean
and the Data layer read a record. The work runs in worker threads (label.workers): OpenCV
releases the GIL.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from models.caffe import image

from .resize import resize_image

ENCODINGS = ("jpg", "png", "raw")


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


ImageReadError = image.ImageError     # the one image error: its reason says what is wrong


def noise_rng(seed: int, key: str) -> np.random.Generator:
    """The padding-noise generator for one image: fixed by the seed and the image's key."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def encode_array(bgr: np.ndarray, settings: EncodeSettings, noise_key: str = "") -> Payload:
    """A uint8 H x W x 3 BGR array resized and packed as settings say."""
    pads = settings.resize_mode in ("fill", "half_crop")
    out = resize_image(bgr, settings.height, settings.width, settings.resize_mode,
                       noise_rng(settings.seed, noise_key) if pads else None)
    if settings.encoding == "raw":
        chw = np.ascontiguousarray(out.transpose(2, 0, 1))          # HWC -> CHW, BGR kept
        return Payload(chw.tobytes(), False, *chw.shape)
    if settings.encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not "
                         f"{settings.encoding!r}")
    return Payload(image.encode(out, "." + settings.encoding, settings.jpeg_quality), True)


def encode_file(path, settings: EncodeSettings, noise_key: str = "") -> Payload:
    return encode_array(image.load(path), settings, noise_key)


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
    return np.ascontiguousarray(image.decode(data, image.COLOR).transpose(2, 0, 1))


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
