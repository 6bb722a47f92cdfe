"""The largest blob the runtime will allocate: a net whose prototxt asks for more (an ``Input``
of 100000 x 100000 x 100000, a layer with billions of weights) is refused before anything is
allocated, with one line naming the prototxt, the layer and the shape, instead of a raw
allocation error or gigabytes of memory. (Caffe itself checks only that a blob's count fits in
an int.) ``caffe.set_max_blob_bytes(n)`` changes the limit; it is per blob, in float32 bytes."""
from __future__ import annotations

import math

from .errors import CaffeError

DEFAULT_MAX_BLOB_BYTES = 4 << 30      # VGG16's largest blob at batch 256 (conv1, 3.3 GB) fits
_max_bytes = DEFAULT_MAX_BLOB_BYTES


class BlobTooLarge(CaffeError):
    """A blob shape over the limit (or with a negative axis)."""


def set_max_blob_bytes(n: int) -> None:
    """Refuse blobs of more than ``n`` bytes from now on."""
    global _max_bytes
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise CaffeError(f"must be a positive number of bytes, not {n!r}",
                         field="max_blob_bytes")
    _max_bytes = n


def max_blob_bytes() -> int:
    return _max_bytes


def shape_text(shape) -> str:
    return " x ".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def check_blob_shape(shape, itemsize: int = 4, *, path=None, field=None) -> None:
    """Raise BlobTooLarge (naming ``path`` and ``field``) when a blob of ``shape`` would hold
    more than max_blob_bytes, or has a negative axis."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise BlobTooLarge(f"shape {shape_text(dims)} has a negative axis", path=path,
                           field=field)
    nbytes = math.prod(dims) * itemsize
    if nbytes > _max_bytes:
        raise BlobTooLarge(f"shape {shape_text(dims)} needs {_human(nbytes)}, more than the "
                           f"limit of {_human(_max_bytes)} per blob (max_blob_bytes)",
                           path=path, field=field)


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"
