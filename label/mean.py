"""The mean image of an LMDB, as Caffe's compute_image_mean computes and writes it.

compute_image_mean decodes every record (BGR, C x H x W), sums the pixels and divides by the
number of records; it writes a BlobProto with num=1, channels, height, width and the mean as
float data, and logs the per-channel means. Here the sums are exact integers, turned into float32
and divided in float32: the same numbers as compute_image_mean's float sums for up to 65,793
images (while every sum stays below 2^24), and the exact mean beyond.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepselfie.errors import UserError

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


def mean_to_binaryproto(mean: np.ndarray) -> bytes:
    """A C x H x W mean as compute_image_mean's BlobProto (num=1, channels, height, width)."""
    from models.caffe.proto import caffe_pb2
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(np.asarray(mean, np.float32).ravel().tolist())
    return blob.SerializeToString()


def read_binaryproto(path) -> np.ndarray:
    """A mean .binaryproto (legacy num/channels/height/width or shape) as float32 C x H x W."""
    from google.protobuf.message import DecodeError

    from models.caffe.proto import caffe_pb2
    blob = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise UserError(f"not a readable BlobProto ({e})", path=path) from None
    dims = list(blob.shape.dim) if blob.HasField("shape") else \
        [blob.num, blob.channels, blob.height, blob.width]
    data = np.asarray(blob.data, np.float32)
    if int(np.prod(dims)) != data.size:
        raise UserError(f"shape {dims} does not match {data.size} values", path=path)
    data = data.reshape(dims)
    return data.reshape(data.shape[-3:]) if data.ndim == 4 else data
