"""The mean image of an LMDB, as Caffe's compute_image_mean computes and writes it.

compute_image_mean decodes every record (BGR, C x H x W), sums the pixels and divides by the
number of records; it writes a BlobProto with num=1, channels, height, width and the mean as
float data, and logs the per-channel means. Here the sums are exact integers, turned into float32
and divided in float32: the same numbers as compute_image_mean's float sums for up to 65,793
images (while every sum stays below 2^24), and the exact mean beyond. Writing and reading the
.binaryproto is the runtime's codec (models/caffe/protoio.py), under label's names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepselfie.errors import UserError
from models.caffe.protoio import mean_image_bytes as mean_to_binaryproto  # noqa: F401
from models.caffe.protoio import read_mean_image as read_binaryproto  # noqa: F401

from .image import decode_payload, sum_encoded
from .lmdb_writer import iter_lmdb
from .workers import Workers, as_workers

CHUNK = 64


@dataclass
class ImageMean:
    mean: np.ndarray            # float32 C x H x W, BGR
    count: int
    channel_means: list         # BGR, float, over every pixel of every image

    def to_json(self) -> dict:
        c, h, w = self.mean.shape
        return {"images": self.count, "channels": c, "height": h, "width": w,
                "mean_value_bgr": [float(v) for v in self.channel_means]}


def _shape_error(path, first, other):
    return UserError(f"records of different shapes ({first} and {other}): compute_image_mean "
                     "needs one size", path=path)


def compute_mean(path, processes: int | Workers = 1) -> ImageMean:
    """The mean over every record of the LMDB at path; encoded records are decoded by
    ``processes`` processes (or a Workers pool)."""
    total, shape, count = None, None, 0
    pending = []                                 # chunks of encoded images to decode

    def add(partial_sum, partial_shape):
        nonlocal total, shape
        if shape is None:
            shape, total = partial_shape, np.zeros(partial_shape, np.int64)
        if partial_sum is None or partial_shape != shape:
            raise _shape_error(path, shape, partial_shape)
        total += partial_sum

    chunk = []
    for _key, _label, payload in iter_lmdb(path):
        count += 1
        if payload.encoded:
            chunk.append(payload.data)
            if len(chunk) == CHUNK:
                pending.append(chunk)
                chunk = []
        else:
            img = decode_payload(payload.data, False, payload.channels, payload.height,
                                 payload.width)
            add(img.astype(np.int64), img.shape)
    if chunk:
        pending.append(chunk)
    workers, own = as_workers(processes)
    try:
        for partial in workers.map(sum_encoded, pending, ordered=False):
            add(*partial)
    finally:
        if own:
            workers.close()
    if count == 0:
        raise UserError("no records to average: the split is empty", path=path)
    mean = total.astype(np.float32) / np.float32(count)
    pixels = count * shape[1] * shape[2]
    channel_means = [float(s) / pixels for s in total.reshape(shape[0], -1).sum(axis=1)]
    return ImageMean(mean.astype(np.float32), count, channel_means)
