"""Reading and writing Caffe's files: prototxt (text), .caffemodel / .solverstate (binary
NetParameter / SolverState), .binaryproto (BlobProto, e.g. a mean image).

Every failure a user can cause becomes one CaffeError line: a bad prototxt names
file:line:column and the problem; a truncated or foreign binary file says so.
"""
from __future__ import annotations

import pathlib
import re

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from .atomic import atomic_write
from .errors import CaffeError
from .proto import caffe_pb2


def _read_bytes(path) -> bytes:
    p = pathlib.Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise CaffeError("file not found", path=p) from None
    except IsADirectoryError:
        raise CaffeError("is a directory, not a file", path=p) from None
    except OSError as e:
        raise CaffeError(f"cannot read ({e.strerror})", path=p) from None


def parse_text(text: str, message, source="<string>"):
    """Parse prototxt text into ``message``; errors name source:line:column."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        detail = re.sub(r"^\d+:\d+\s*:\s*", "", detail)  # protobuf prefixes "line:col : "
        where = f"{source}:{line}:{col}" if line is not None else str(source)
        raise CaffeError(detail, path=where) from None
    return message


def read_prototxt(path, message_type=caffe_pb2.NetParameter):
    """A text-format file as a message of ``message_type``."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeError("not a text prototxt (binary content; is it a .caffemodel?)",
                         path=path) from None
    return parse_text(text, message_type(), source=str(path))


def read_binary(path, message_type):
    """A binary protobuf file as a message of ``message_type``, or one clear error."""
    data = _read_bytes(path)
    what = message_type.DESCRIPTOR.name
    if not data:
        raise CaffeError(f"empty file, expected a binary {what}", path=path)
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (pb_message.DecodeError, RuntimeError, ValueError) as e:
        hint = ""
        if data[:200].lstrip().startswith((b"name", b"layer", b"input", b"#", b"net")):
            hint = " (it looks like a text prototxt)"
        raise CaffeError(f"not a binary {what}: truncated or foreign file{hint} ({e})",
                         path=path) from None
    return msg


def read_binary_or_text(path, message_type):
    """Caffe accepts weights/means in either encoding; try binary, then text."""
    try:
        return read_binary(path, message_type)
    except CaffeError as binary_error:
        try:
            return read_prototxt(path, message_type)
        except CaffeError:
            raise binary_error from None


def atomic_write_bytes(path, data: bytes) -> None:
    """Write via a temporary file and a rename: readers never see half a file."""
    atomic_write(path, data, fsync=True)


def write_binary(path, message) -> None:
    atomic_write_bytes(path, message.SerializeToString())


def write_prototxt(path, message) -> None:
    atomic_write_bytes(path, text_format.MessageToString(message).encode("utf-8"))


# ---------------------------------------------------------------- blobs

def blob_shape(blob: caffe_pb2.BlobProto) -> tuple:
    """A BlobProto's shape: ``shape.dim`` or, in old files, num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return ()          # Caffe writes no shape for a 0-axis (scalar) blob


def blob_is_legacy(blob: caffe_pb2.BlobProto) -> bool:
    return not blob.HasField("shape") and any(
        blob.HasField(f) for f in ("num", "channels", "height", "width"))


def legacy_shape_matches(shape: tuple, blob: caffe_pb2.BlobProto) -> bool:
    """Caffe's Blob::ShapeEquals: legacy 4-D dims match a shape padded with leading 1s."""
    if not blob_is_legacy(blob):
        return tuple(shape) == blob_shape(blob)
    if len(shape) > 4:
        return False
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    return padded == (blob.num, blob.channels, blob.height, blob.width)


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data (or diff) as a float32 array of its shape."""
    shape = blob_shape(blob)
    if return_diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
    arr = np.asarray(values, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise ValueError(f"blob holds {arr.size} values but its shape {shape} needs {count}")
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None, *, legacy: bool = False) -> caffe_pb2.BlobProto:
    """An array as a BlobProto (``shape`` form; ``legacy`` writes num/channels/height/width)."""
    arr = np.asarray(arr, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    if legacy:
        if arr.ndim > 4:
            raise ValueError("legacy blobs have at most 4 axes")
        n, c, h, w = (1,) * (4 - arr.ndim) + arr.shape
        blob.num, blob.channels, blob.height, blob.width = n, c, h, w
    else:
        blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


def read_blobproto(path) -> np.ndarray:
    """A .binaryproto file (e.g. a mean) as a float32 array."""
    blob = read_binary_or_text(path, caffe_pb2.BlobProto)
    try:
        return blobproto_to_array(blob)
    except ValueError as e:
        raise CaffeError(str(e), path=path) from None


def read_mean_image(path, error=None) -> np.ndarray:
    """A mean image .binaryproto (compute_image_mean's 1 x C x H x W, or C x H x W) as float32
    C x H x W; ``error(message)`` makes the error for another shape (default: a CaffeError)."""
    mean = read_blobproto(path)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        message = f"holds a {mean.shape} blob; a mean image is 1 x C x H x W"
        raise error(message) if error else CaffeError(message, path=path)
    return np.ascontiguousarray(mean, dtype=np.float32)


def mean_image_bytes(mean) -> bytes:
    """A C x H x W mean as compute_image_mean writes it: a BlobProto with num 1, channels,
    height, width and the float data."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim != 3:
        raise ValueError(f"a mean image is C x H x W, not {mean.shape}")
    return array_to_blobproto(mean, legacy=True).SerializeToString()


# ---------------------------------------------------------------- fast encoding of big weights
# protobuf's Python API copies floats one by one; VGG16's 138M weights would take ~20 s. These
# helpers emit the same bytes directly: a packed float field is its tag, its byte length and the
# little-endian float32 values.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_blob(arr) -> bytes:
    """BlobProto bytes: shape { dim... } and packed float data."""
    arr = np.asarray(arr, dtype="<f4")          # (ascontiguousarray would make 0-d arrays 1-d)
    dims = b"".join(_varint(int(d)) for d in arr.shape)
    shape = _field(7, _field(1, dims)) if arr.shape else b""   # scalars: no shape, as Caffe
    return shape + _field(5, arr.tobytes())


def encode_net(net: caffe_pb2.NetParameter, layer_blobs: list) -> bytes:
    """NetParameter bytes: ``net`` (its layers without blobs) with layer i's blobs appended from
    ``layer_blobs[i]`` (a list of arrays)."""
    head = caffe_pb2.NetParameter()
    head.CopyFrom(net)
    del head.layer[:]
    parts = [head.SerializeToString()]
    for lp, blobs in zip(net.layer, layer_blobs):
        body = lp.SerializeToString() + b"".join(_field(7, encode_blob(b)) for b in blobs)
        parts.append(_field(100, body))
    return b"".join(parts)
