"""Reading a photo for the face detector: RGB pixels as displayed (EXIF orientation applied),
optionally decoded at reduced size (JPEG draft mode) when the detector will shrink it anyway."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from deepselfie.errors import UserError

_SWAPS_AXES = {5, 6, 7, 8}   # EXIF orientations that rotate by 90 degrees


def load_rgb(path, *, at_least: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """(H x W x 3 uint8 RGB, (sx, sy)): multiply x by sx and y by sy to get pixel coordinates of
    the full-size image. With ``at_least`` > 0 a JPEG may be decoded at 1/2, 1/4 or 1/8 size, but
    never with its longer side below ``at_least``."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = pathlib.Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                full_w, full_h = im.size
                if at_least and im.format == "JPEG" and max(full_w, full_h) > 2 * at_least:
                    f = at_least / max(full_w, full_h)
                    im.draft("RGB", (max(1, round(full_w * f)), max(1, round(full_h * f))))
                im.load()
                got_w, got_h = im.size
                orientation = im.getexif().get(0x0112, 1)
                im = ImageOps.exif_transpose(im)
                rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    except IsADirectoryError:
        raise UserError("is a directory, not an image", path=path) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise UserError(f"too many pixels to decode safely ({e})", path=path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"not a readable image ({e})", path=path) from None
    sx, sy = full_w / got_w, full_h / got_h
    if orientation in _SWAPS_AXES:
        sx, sy = sy, sx
    return rgb, (sx, sy)
