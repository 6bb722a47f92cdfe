"""Drawing detected faces onto the photo: a box per face, its score, its five landmarks."""
from __future__ import annotations

import io
import pathlib

import numpy as np

from deepselfie.errors import UserError

BOX = (0, 255, 64)
LANDMARK = (255, 40, 40)


def check_out_path(out_path) -> str:
    """The image format for out_path's extension; a UserError if it cannot be written."""
    from PIL import Image
    out_path = pathlib.Path(out_path)
    fmt = Image.registered_extensions().get(out_path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError("unknown image extension: use .png or .jpg", path=out_path,
                        field="--draw")
    if not out_path.parent.is_dir():
        raise UserError("folder does not exist", path=out_path.parent, field="--draw")
    return fmt


def draw_faces(rgb: np.ndarray, faces, out_path) -> pathlib.Path:
    """Write ``rgb`` with ``faces`` drawn on it to out_path (format from its extension),
    atomically: an existing file is replaced only by a complete new one."""
    from PIL import Image, ImageDraw

    from models.caffe.protoio import atomic_write_bytes
    out_path = pathlib.Path(out_path)
    fmt = check_out_path(out_path)
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("RGB")
    pen = max(2, round(max(im.size) / 300))
    draw = ImageDraw.Draw(im)
    for face in faces:
        x1, y1, x2, y2 = face.box
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=BOX, width=pen)
        r = pen + 1
        for x, y in face.landmarks:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=LANDMARK)
        label = f"{face.score:.3f}"
        tx, ty = x1, max(0, y1 - 12 - pen)
        draw.rectangle(draw.textbbox((tx, ty), label), fill=BOX)
        draw.text((tx, ty), label, fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path
