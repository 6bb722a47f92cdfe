"""Box arithmetic for the MTCNN cascade, on numpy arrays of boxes (x1, y1, x2, y2).

Boxes are in continuous pixel coordinates: pixel (col, row) covers [col, col + 1) x [row, row + 1),
so a box's width is x2 - x1 (MTCNN's MATLAB "x2 - x1 + 1" for inclusive pixel boxes).
"""
from __future__ import annotations

import numpy as np


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first.

    A box is dropped when its overlap with a better kept box exceeds ``threshold``; the overlap
    is intersection over union (``union``) or over the smaller box (``min``, which also removes
    boxes nested inside a bigger one).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    area = areas(boxes)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        h = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        if mode == "min":
            denom = np.minimum(area[i], area[rest])
        else:
            denom = area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each edge by its offset times the box's width (x) or height (y)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """The square with the same center whose side is the longer side of the box."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx = boxes[:, 0] + w / 2
    cy = boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def to_pixels(boxes: np.ndarray) -> np.ndarray:
    """Round to whole pixels, at least one pixel wide and high (the crop that a net sees)."""
    out = np.round(boxes).astype(np.int64)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


def clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out
