"""The image store: every image decoded fully before it is kept, then stored once by content.

``ImageStore.keep(data)`` checks the bytes (a known format, at most ``max_pixels`` pixels, both
sides at least ``min_side``), decodes every pixel, and writes ``images/<aa>/<sha256>.<ext>``
under the data dir through a temporary file in ``images/.tmp`` and an atomic rename: a reader (or
a process killed halfway) sees the whole file or none. The original bytes are kept as downloaded;
the same picture downloaded twice is stored once.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import tempfile

from PIL import Image

from deepselfie.catalog import StoredImage

# Formats kept, and the extension each is stored under. Image.open is limited to these, so no
# other (rarer, less hardened) decoder ever sees downloaded bytes. MPO is how Pillow names the
# JPEGs many phones write.
FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
OPENERS = ["JPEG", "PNG", "WEBP", "GIF"]   # Pillow's openers for those (MPO comes via JPEG)


class Rejected(Exception):
    """Not kept, for good: the reason says why (not an image, too many pixels, truncated...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _what_it_is(data: bytes, content_type: str | None) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "HTML"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if data[4:8] == b"ftyp":
        return "a video or HEIF file"
    return content_type or "unknown bytes"


def inspect_image(data: bytes, *, max_pixels: int, min_side: int,
                  content_type: str | None = None) -> tuple[str, int, int]:
    """Decode ``data`` fully -> (format, width, height); Rejected if it is not a keepable image.

    The size is checked from the header before any pixel is decoded, so a small file claiming
    30000 x 30000 pixels (a decompression bomb) costs nothing.
    """
    if not data:
        raise Rejected("empty file")
    try:
        with Image.open(io.BytesIO(data), formats=OPENERS) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > max_pixels:
                raise Rejected(f"too many pixels ({w}x{h} > {max_pixels})")
            if min(w, h) < min_side:
                raise Rejected(f"too small ({w}x{h}, min side {min_side})")
            im.load()
    except Rejected:
        raise
    except Image.DecompressionBombError as e:
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        raise Rejected(f"too many pixels ({claimed[1] if claimed else 'huge'} > {max_pixels})"
                       ) from None
    except Image.UnidentifiedImageError:
        raise Rejected(f"not an image ({_what_it_is(data, content_type)})") from None
    except Exception as e:  # whatever a decoder says about bad bytes: truncated, broken, ...
        raise Rejected(f"undecodable image ({_reason(e)})") from None
    return fmt, w, h


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text[:100]


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
