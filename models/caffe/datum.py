"""Datum records as Caffe's tools write them (convert_imageset's CVMatToDatum and
ReadImageToDatum) and as its Data layer parses and decodes them.

A raw record carries channels, height, width, the pixels (uint8 C x H x W, BGR), its label and
``encoded: false``; an encoded one carries only the image file's bytes, its label and
``encoded: true``. The fields that are set are what makes the bytes equal Caffe's.
(pycaffe's ``caffe.io.array_to_datum`` is another function of Caffe's: it writes no
``encoded`` field and can hold float_data.)
"""
from __future__ import annotations

import numpy as np
from google.protobuf import message as pb_message

from . import image
from .proto import caffe_pb2


def encode_datum(data: bytes, label: int, *, encoded: bool = False, shape=None) -> bytes:
    """A serialized Datum: ``data`` is the raw pixels of ``shape`` (C, H, W), or with
    ``encoded`` an image file's bytes (no shape, as ReadImageToDatum leaves it)."""
    datum = caffe_pb2.Datum()
    if not encoded:
        datum.channels, datum.height, datum.width = (int(v) for v in shape)
    datum.data = data
    datum.label = int(label)
    datum.encoded = bool(encoded)
    return datum.SerializeToString()


def decode_datum(value: bytes) -> caffe_pb2.Datum:
    """A stored value as a Datum, or ValueError("not a Datum (...)")."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except (pb_message.DecodeError, RuntimeError) as e:
        raise ValueError(f"not a Datum ({e})") from None
    return datum


def datum_pixels(datum: caffe_pb2.Datum, flag: str = image.UNCHANGED) -> np.ndarray:
    """A Datum's pixels as C x H x W: uint8 for raw bytes, float32 for float_data; an encoded
    Datum decoded as Caffe's DataTransformer decodes it (``flag``: image.COLOR for
    force_color, GRAYSCALE for force_gray, else UNCHANGED: the file's own channels). Raises
    ValueError (image.ImageError for an undecodable image) on a malformed record."""
    if datum.encoded:
        return image.decode(datum.data, flag).transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != count:
            raise ValueError(f"Datum holds {len(datum.data)} bytes for a "
                             f"{shape[0]}x{shape[1]}x{shape[2]} image")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise ValueError(f"Datum holds {len(datum.float_data)} floats for a "
                         f"{shape[0]}x{shape[1]}x{shape[2]} image")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
