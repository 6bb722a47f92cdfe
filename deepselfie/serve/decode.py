"""An upload -> H x W x 3 uint8 BGR, decoding only allow-listed formats, with one full copy.

``open_image`` is the one place serve asks Pillow to identify a file, and it names the formats
it accepts: without ``formats=``, Pillow would also open PostScript/EPS (and run Ghostscript on
it), among other formats nobody uploads as a selfie. (When the runtime's one allow-listed
image loader lands, ``open_image`` is what to swap for it.)

``decode_bgr`` gives the same pixels as models.selfie.score.load_bgr (EXIF orientation applied,
transparency composited on white) but converts the decoded image strip by strip into one
preallocated array instead of making several full-size copies: a 49-megapixel RGBA PNG costs
its decoded size plus the 3-byte-a-pixel result, not five times that.
"""
from __future__ import annotations

import numpy as np

from models.selfie.score import ImageTooLarge, UnreadableImage

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
STRIP_ROWS = 256
ORIENTATION = 0x0112          # EXIF tag


def open_image(fp):
    """Pillow's Image.open restricted to ALLOWED_FORMATS (a file of any other format is
    'not an image')."""
    from PIL import Image
    return Image.open(fp, formats=ALLOWED_FORMATS)


def bytes_needed(width: int, height: int) -> int:
    """Memory to reserve for decoding and scoring an image: the decoded image (at most 4 bytes a
    pixel in Pillow), the BGR result (3) and the scorer's resized working copy (at most 4)."""
    return int(width) * int(height) * 11


def header_size(fp, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the header; nothing is decoded. UnreadableImage, ImageTooLarge."""
    from PIL import UnidentifiedImageError
    try:
        with open_image(fp) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableImage(f"unreadable image ({e})") from None
    finally:
        fp.seek(0)
    if max_pixels and w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w} x {h} = {w * h:,} pixels; the limit is "
                            f"{int(max_pixels):,}")
    return w, h


def decode_bgr(fp, max_pixels: int | None = None) -> np.ndarray:
    """The image in ``fp`` as H x W x 3 uint8 BGR. UnreadableImage (ImageTooLarge from the
    header, before anything is decoded)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with open_image(fp) as im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise ImageTooLarge(f"the image is {w} x {h} = {w * h:,} pixels; the limit is "
                                    f"{int(max_pixels):,}")
            orientation = im.getexif().get(ORIENTATION, 1)
            im.load()
            alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode == "P" and "transparency" in im.info)
            out = np.empty((h, w, 3), np.uint8)
            for y in range(0, h, STRIP_ROWS):
                strip = im.crop((0, y, w, min(h, y + STRIP_ROWS)))
                if alpha:
                    rgba = strip.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    strip = Image.alpha_composite(white, rgba)
                out[y:y + strip.height] = np.asarray(strip.convert("RGB"))[:, :, ::-1]
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableImage(f"unreadable image ({e})") from None
    except Image.DecompressionBombError as e:
        raise UnreadableImage(str(e)) from None
    return oriented(out, orientation)


def oriented(a: np.ndarray, orientation) -> np.ndarray:
    """``a`` (H x W x C) turned the way EXIF orientation 1-8 says, as Pillow's exif_transpose
    turns it (a copy only when it turns)."""
    turn = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
            5: lambda x: x.transpose(1, 0, 2), 6: lambda x: np.rot90(x, -1),
            7: lambda x: x[::-1, ::-1].transpose(1, 0, 2), 8: lambda x: np.rot90(x, 1)}
    if orientation not in turn:
        return a
    return np.ascontiguousarray(turn[orientation](a))
