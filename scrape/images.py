"""The image store: every image decoded fully before it is kept, then stored once by content.

``ImageStore.keep(data)`` checks the bytes (a known format, at most ``max_pixels`` pixels, both
sides at least ``min_side``), decodes every pixel, and writes ``images/<aa>/<sha256>.<ext>``
under the data dir through a temporary file in ``images/.tmp`` and an atomic rename: a reader (or
a process killed halfway) sees the whole file or none. The original bytes are kept as downloaded;
the same picture downloaded twice is stored once.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

from deepselfie.catalog import StoredImage
from models.caffe import image

# Formats the store keeps (a subset of the loader's allow-list), and the extension each is
# stored under.
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


class Rejected(Exception):
    """Not kept, for good: the reason says why (not an image, too many pixels, truncated...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def inspect_image(data: bytes, *, max_pixels: int, min_side: int,
                  content_type: str | None = None) -> tuple[str, int, int]:
    """Decode ``data`` fully -> (format, width, height); Rejected if it is not a keepable image.

    The project's one loader (models.caffe.image) reads the header first, limited to its
    allow-list of formats, so a small file claiming 30000 x 30000 pixels (a decompression bomb)
    or a PostScript file costs nothing and starts nothing; then every pixel is decoded.
    """
    if not data:
        raise Rejected("empty file")
    try:
        head = image.probe(data, max_pixels)
    except image.ImageError as e:
        raise _rejected(e, max_pixels, content_type) from None
    w, h = head.width, head.height
    if head.format not in FORMATS:
        raise Rejected(f"not an allowed image format ({head.format}; kept: JPEG, PNG, WebP, "
                       "GIF)")
    if min(w, h) < min_side:
        raise Rejected(f"too small ({w}x{h}, min side {min_side})")
    try:
        image.load(data, max_pixels=max_pixels)
    except image.ImageError as e:
        raise Rejected(f"undecodable image ({e.reason})") from None
    return head.format, w, h


def _rejected(e: image.ImageError, max_pixels: int, content_type) -> Rejected:
    if e.kind == "too_large":
        claimed = f"{e.size[0]}x{e.size[1]}" if e.size else (e.pixels or "huge")
        return Rejected(f"too many pixels ({claimed} > {max_pixels})")
    if e.kind == "format":
        if e.what == "PostScript":
            return Rejected("not an allowed image format (PostScript)")
        what = content_type if e.what == "unknown bytes" and content_type else e.what
        return Rejected(f"not an image ({what})")
    return Rejected(f"undecodable image ({e.reason})")


class ImageStore:
    """images/<aa>/<sha256>.<ext> under ``data_dir``; paths in the catalog are relative to it."""

    def __init__(self, data_dir, *, max_pixels: int = 50_000_000, min_side: int = 64):
        self.data_dir = pathlib.Path(data_dir)
        self.root = self.data_dir / "images"
        self.tmp = self.root / ".tmp"
        self.max_pixels = max_pixels
        self.min_side = min_side

    def clean_temp(self) -> int:
        """Remove temporary files a killed run left behind (call while holding the stage lock)."""
        n = 0
        if self.tmp.is_dir():
            for p in self.tmp.iterdir():
                p.unlink(missing_ok=True)
                n += 1
        return n

    def keep(self, data: bytes, *, content_type: str | None = None) -> StoredImage:
        """Check and decode ``data``, store it once by content -> StoredImage; Rejected if bad."""
        fmt, w, h = inspect_image(data, max_pixels=self.max_pixels, min_side=self.min_side,
                                  content_type=content_type)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.{FORMATS[fmt]}"
        final = self.data_dir / rel
        if not (final.is_file() and final.stat().st_size == len(data)):
            self._write_atomically(final, data)
        return StoredImage(sha, rel, w, h, len(data), "JPEG" if fmt == "MPO" else fmt)

    def _write_atomically(self, final: pathlib.Path, data: bytes) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
