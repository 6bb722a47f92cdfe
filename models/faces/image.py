"""Reading a photo for the face detector: RGB pixels as displayed, through the project's one
loader (models.caffe.image: allow-listed formats, EXIF orientation, alpha on white), optionally
decoded at reduced size (JPEG DCT scaling) when the detector will shrink it anyway."""
from __future__ import annotations

import pathlib

import numpy as np

from deepselfie.errors import UserError
from models.caffe import image

_SWAPS_AXES = {5, 6, 7, 8}   # EXIF orientations that rotate by 90 degrees


def load_rgb(path, *, at_least: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """(H x W x 3 uint8 RGB, (sx, sy)): multiply x by sx and y by sy to get pixel coordinates of
    the full-size image. With ``at_least`` > 0 a JPEG may be decoded at 1/2, 1/4 or 1/8 size, but
    never with its longer side below ``at_least``."""
    path = pathlib.Path(path)
    try:
        data, head = image.read_checked(path)
        min_side = None
        if at_least:
            # the shorter side that keeps the longer one at least ``at_least`` long
            long, short = max(head.width, head.height), min(head.width, head.height)
            min_side = max(1, -(-at_least * short // long))
        bgr = image.load(data, min_side=min_side)
    except image.ImageError as e:
        raise UserError(e.reason if e.kind == "missing" else f"not a readable image ({e.reason})",
                        path=path) from None
    full_w, full_h = head.width, head.height
    if head.orientation in _SWAPS_AXES:
        full_w, full_h = full_h, full_w
    got_h, got_w = bgr.shape[:2]
    return np.ascontiguousarray(bgr[:, :, ::-1]), (full_w / got_w, full_h / got_h)
