"""MTCNN face detection: an image pyramid through P-Net, then R-Net and O-Net on the survivors.

    det = FaceDetector(weights_dir, device="cpu")
    faces = det.detect([rgb_uint8_array, ...])      # one list of Face per image

1. Pyramid: the image is scaled by 12 / min_face_size (so a face of that size fills P-Net's
   12x12 window), then again and again by ``scale_factor`` while the short side is >= 12.
2. P-Net on each level: every output cell above thresholds[0] proposes a box; NMS per level
   (IoU 0.5), then across levels (IoU 0.7); boxes move by the regression, become squares.
3. R-Net on 24x24 crops of those boxes: keep scores above thresholds[1], NMS (IoU 0.7),
   regress, square.
4. O-Net on 48x48 crops: keep scores above thresholds[2]; five landmarks; regress; NMS on the
   overlap with the smaller box (0.7), which also drops boxes nested in a face.

Images of one call are batched: P-Net runs once per level on all images of the same size; the
R-Net and O-Net crops of all images go through their nets together. Images with a side longer
than ``max_side`` are detected on a copy scaled down to it. Results are in the original image's
pixel coordinates (continuous: the left edge is x = 0, the right edge x = width), boxes clipped
to the image, best score first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import boxes as B
from .convert import NETS, caffemodel_path, prototxt_path

CELL, STRIDE = 12, 2            # P-Net's window and its step, in pyramid-level pixels
NMS_LEVEL, NMS_PYRAMID, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
MAX_PROPOSALS_PER_LEVEL = 5000  # best-scoring cells kept per level before NMS


@dataclass
class Face:
    box: tuple                    # (x1, y1, x2, y2) in pixels of the original image
    score: float
    landmarks: list = field(default_factory=list)   # [(x, y)] x 5: eyes, nose, mouth corners

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def scaled(self, sx: float, sy: float) -> "Face":
        """The same face with x multiplied by sx and y by sy."""
        x1, y1, x2, y2 = self.box
        return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), self.score,
                    [(x * sx, y * sy) for x, y in self.landmarks])

    def to_json(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 6),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}


class FaceDetector:
    def __init__(self, weights_dir=None, *, models_dir=None, min_face_size: int = 20,
                 scale_factor: float = 0.709, thresholds=(0.6, 0.7, 0.95), max_side: int = 1024,
                 device="cpu", fast: bool = False, crop_batch: int = 256, compile: str = "off",
                 compile_cache=None):
        import models.caffe as caffe
        from models.caffe import compiled
        if weights_dir is None and models_dir is None:
            raise TypeError("FaceDetector needs weights_dir or models_dir")
        if min_face_size < 1:
            raise ValueError("min_face_size must be at least 1")
        if not 0 < scale_factor < 1:
            raise ValueError("scale_factor must be between 0 and 1")
        if len(thresholds) != 3:
            raise ValueError("thresholds needs three values (P-Net, R-Net, O-Net)")
        self.min_face_size = int(min_face_size)
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_side = int(max_side)
        self.device = torch.device(device)
        self.fast = bool(fast)
        self.crop_batch = int(crop_batch)
        if compile not in compiled.MODES:
            raise ValueError(f"compile must be one of {', '.join(compiled.MODES)}")
        # compiled inference (models.caffe.compiled): runtime.compile, its cache folder, and the
        # number of images the current job will run (what "auto" weighs against the compile)
        self.compile, self.compile_cache, self.work_images = compile, compile_cache, None
        self.nets = {}
        for name in NETS:
            weights = (caffemodel_path(models_dir, name) if weights_dir is None
                       else f"{weights_dir}/{name}.caffemodel")
            self.nets[name] = caffe.Net(str(prototxt_path(name)), str(weights), caffe.TEST,
                                        device=self.device, fast=self.fast)

    # ------------------------------------------------------------ running a net
    def _forward(self, name: str, x: torch.Tensor, outputs) -> list[torch.Tensor]:
        """Run one of the nets on x (N x 3 x H x W, normalized); the named outputs as float."""
        from models.caffe import compiled
        net = self.nets[name]
        # channels-last: torch's CPU convolutions on few channels are several times faster
        net.blobs["data"].set_tensor(x.contiguous(memory_format=torch.channels_last))
        # P-Net sees another input shape at every pyramid level (and image size): one compile
        # each, which "auto" does not take on (benchmarks/bench_faces.py --compiled, 640x480,
        # 2 threads: all three nets compiled 26.9 img/s vs 23.8 eager, after a 42 s compile for
        # that one image size: pays after ~9000 images of one size). R-Net and O-Net run
        # batches of crops padded to one compiled batch.
        how = dict(mode="off" if name == "pnet" and self.compile == "auto" else self.compile,
                   work_images=self.work_images, cache_dir=self.compile_cache,
                   pad_batch=name != "pnet")
        if compiled.compiled_forward(net, outputs, **how) is None:
            net.forward()
        else:   # (a net that fails to compile is logged once, then runs eagerly)
            compiled.forward(net, outputs, **how)
        return [net.blobs[o].tensor.detach().float() for o in outputs]

    def _forward_crops(self, name, crops: torch.Tensor, outputs) -> list[np.ndarray]:
        parts = [self._forward(name, crops[i:i + self.crop_batch], outputs)
                 for i in range(0, len(crops), self.crop_batch)]
        return [torch.cat([p[k] for p in parts]).cpu().numpy() for k in range(len(outputs))]

    # ------------------------------------------------------------ the cascade
    def pyramid_scales(self, height: int, width: int) -> list[float]:
        scale = CELL / self.min_face_size
        scales = []
        while min(height, width) * scale >= CELL:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    @torch.no_grad()
    def detect(self, images) -> list[list[Face]]:
        """Faces in each image (H x W x 3 uint8 RGB arrays, or H x W grey)."""
        work, shrink = [], []
        for im in images:
            t, s = self._to_tensor(im)
            work.append(t)
            shrink.append(s)
        proposals = [None] * len(work)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(work):
            groups.setdefault(tuple(t.shape[1:]), []).append(i)
        for (h, w), idx in groups.items():
            found = self._propose(torch.stack([work[i] for i in idx]), h, w)
            for i, b in zip(idx, found):
                proposals[i] = b
        tables = {}     # image index -> its summed-area table, made once for R-Net and O-Net
        boxes = self._refine(work, proposals, tables)
        results = self._output(work, boxes, tables)
        faces = []
        for im, (bx, scores, marks), (sx, sy) in zip(images, results, shrink):
            height, width = np.asarray(im).shape[:2]
            bx = B.clip(bx / np.array([sx, sy, sx, sy]), width, height)
            marks = marks / np.array([sx, sy])
            faces.append([Face(tuple(float(v) for v in b), float(sc),
                               [(float(x), float(y)) for x, y in m])
                          for b, sc, m in zip(bx, scores, marks)])
        return faces

    def _to_tensor(self, im) -> tuple[torch.Tensor, tuple[float, float]]:
        """3 x h x w float pixels (0..255) on the device, scaled down to max_side; and the
        scale of x and of y."""
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {arr.shape}")
        t = torch.from_numpy(np.array(arr[:, :, :3], dtype=np.uint8)).to(self.device)
        t = t.permute(2, 0, 1).float()
        h, w = t.shape[1:]
        if not self.max_side or max(h, w) <= self.max_side:
            return t, (1.0, 1.0)
        s = self.max_side / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return _resize(t[None], size)[0], (size[1] / w, size[0] / h)

    def _propose(self, imgs: torch.Tensor, h: int, w: int) -> list[np.ndarray]:
        """P-Net over the pyramid for N same-size images -> per image (k, 4) square boxes."""
        n = len(imgs)
        per_image = [[] for _ in range(n)]
        for scale in self.pyramid_scales(h, w):
            hs, ws = math.ceil(h * scale), math.ceil(w * scale)
            x = _normalize(_resize(imgs, (hs, ws)))
            prob, reg = self._forward("pnet", x, ["prob1", "conv4-2"])
            face = prob[:, 1]
            b, i, j = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
            if not len(b):
                continue
            score = face[b, i, j]
            off = reg[b, :, i, j]
            b, i, j, score, off = (v.cpu().numpy() for v in (b, i, j, score, off))
            sy, sx = hs / h, ws / w
            cells = np.stack([STRIDE * j / sx, STRIDE * i / sy, (STRIDE * j + CELL) / sx,
                              (STRIDE * i + CELL) / sy], axis=1)
            for k in range(n):
                sel = np.flatnonzero(b == k)
                if not sel.size:
                    continue
                if sel.size > MAX_PROPOSALS_PER_LEVEL:
                    sel = sel[np.argsort(-score[sel], kind="stable")[:MAX_PROPOSALS_PER_LEVEL]]
                keep = sel[B.nms(cells[sel], score[sel], NMS_LEVEL)]
                per_image[k].append((cells[keep], score[keep], off[keep]))
        out = []
        for parts in per_image:
            if not parts:
                out.append(np.zeros((0, 4)))
                continue
            cells, score, off = (np.concatenate(p) for p in zip(*parts))
            keep = B.nms(cells, score, NMS_PYRAMID)
            out.append(B.square(B.regress(cells[keep], off[keep])))
        return out

    def _crops(self, work, boxes, size, tables) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The size x size crops of every box of every image (zeros outside the image), and
        the whole-pixel boxes they were cut from."""
        crops, pixel_boxes = [], []
        for k, (t, bx) in enumerate(zip(work, boxes)):
            px = B.to_pixels(bx) if len(bx) else np.zeros((0, 4), np.int64)
            pixel_boxes.append(px)
            if len(px):
                if k not in tables:
                    tables[k] = summed_area_table(t)
                crops.append(area_crops(tables[k], torch.from_numpy(px).to(t.device), size))
        if not crops:
            return torch.zeros((0, 3, size, size), device=self.device), pixel_boxes
        return _normalize(torch.cat(crops)), pixel_boxes

    def _refine(self, work, proposals, tables) -> list[np.ndarray]:
        """R-Net: rescore, drop, merge and tighten the proposals."""
        crops, px = self._crops(work, proposals, 24, tables)
        if not len(crops):
            return [np.zeros((0, 4)) for _ in work]
        prob, reg = self._forward_crops("rnet", crops, ["prob1", "conv5-2"])
        out, start = [], 0
        for bx in px:
            end = start + len(bx)
            score, off = prob[start:end, 1], reg[start:end]
            start = end
            sel = np.flatnonzero(score > self.thresholds[1])
            keep = sel[B.nms(bx[sel].astype(np.float64), score[sel], NMS_RNET)]
            out.append(B.square(B.regress(bx[keep].astype(np.float64), off[keep])))
        return out

    def _output(self, work, candidates, tables):
        """O-Net: final scores, boxes and landmarks per image (working-image coordinates)."""
        crops, px = self._crops(work, candidates, 48, tables)
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        if not len(crops):
            return [empty for _ in work]
        prob, reg, pts = self._forward_crops("onet", crops, ["prob1", "conv6-2", "conv6-3"])
        out, start = [], 0
        for bx in px:
            end = start + len(bx)
            score, off, p = prob[start:end, 1], reg[start:end], pts[start:end]
            start = end
            sel = np.flatnonzero(score > self.thresholds[2])
            if not sel.size:
                out.append(empty)
                continue
            bx, score, off, p = bx[sel].astype(np.float64), score[sel], off[sel], p[sel]
            w = (bx[:, 2] - bx[:, 0])[:, None]
            h = (bx[:, 3] - bx[:, 1])[:, None]
            marks = np.stack([bx[:, :1] + p[:, :5] * w, bx[:, 1:2] + p[:, 5:] * h], axis=2)
            final = B.regress(bx, off)
            keep = B.nms(final, score, NMS_ONET, mode="min")
            out.append((final[keep], score[keep].astype(np.float64), marks[keep]))
        return out


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Resize N x 3 x H x W pixels by area averaging (nearest pixel when enlarging), the
    resampling the MTCNN weights were used with."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="area")


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Pixels 0..255 -> MTCNN's input scale."""
    return (x - 127.5) * 0.0078125


def summed_area_table(t: torch.Tensor) -> torch.Tensor:
    """(3, H + 1, W + 1) float64: entry [c, y, x] is the sum of t[c, :y, :x]."""
    return F.pad(t.double().cumsum(1).cumsum(2), (1, 0, 1, 0))


def area_crops(table: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of boxes (k x 4 whole pixels, may leave the image) from the image whose
    summed-area table is ``table``, each resized to size x size by area averaging, zeros
    outside the image: what cropping, zero padding and ``F.interpolate(mode="area")`` give,
    for all boxes at once (float64 sums, so differences of large sums stay exact).

    Output pixel i of a box of width w averages input columns floor(i * w / size) up to
    ceil((i + 1) * w / size), as adaptive average pooling does.
    """
    h, w = table.shape[1] - 1, table.shape[2] - 1
    i = torch.arange(size, device=table.device)
    x1, y1, x2, y2 = boxes.T

    def edges(lo, hi, limit):
        n = (hi - lo)[:, None]
        start = lo[:, None] + (i * n) // size
        end = lo[:, None] - ((-(i + 1) * n) // size)
        return start.clamp(0, limit), end.clamp(0, limit), end - start

    xs, xe, wx = edges(x1, x2, w)
    ys, ye, wy = edges(y1, y2, h)
    ys, ye, xs, xe = ys[:, :, None], ye[:, :, None], xs[:, None, :], xe[:, None, :]
    sums = table[:, ye, xe] - table[:, ys, xe] - table[:, ye, xs] + table[:, ys, xs]
    crops = sums / (wy[:, :, None] * wx[:, None, :])                  # 3 x k x size x size
    return crops.permute(1, 0, 2, 3).float()
