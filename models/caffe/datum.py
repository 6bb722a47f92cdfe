"""Datum records as Caffe's tools write them (convert_imageset's CVMatToDatum and
ReadImageToDatum) and as its Data layer parses them.

A raw record carries channels, height, width, the pixels (uint8 C x H x W, BGR), its label and
``encoded: false``; an encoded one carries only the image file's bytes, its label and
``encoded: true``. The fields that are set are what makes the bytes equal Caffe's.
(pycaffe's ``caffe.io.array_to_datum`` is another function of Caffe's: it writes no
``encoded`` field and can hold float_data.)
"""
from __future__ import annotations

from google.protobuf import message as pb_message

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
