"""How an image (uint8 H x W x 3 BGR, from the one loader) becomes net input (N x 3 x H x W).

``AsTrained`` (the default, from the model card) reproduces the TEST phase of the training net:
the label run's resize (``label.resize.resize_image``: its size and DIGITS mode, cv::resize), the
LMDB's JPEG round trip when its records are JPEG, then Caffe's DataTransformer with the TEST
``transform_param`` (center crop, the mean image cropped at the same offset or the mean values,
scale). With a lossless label run (png or raw records), a file scores exactly as its record does
in the TEST net.

``Preprocess`` keeps the three hand-set modes (``--resize``), with per-channel mean values:
  squash       resize the whole image to the net's input (the article's bot did this)
  crop         squash to the training resize (256) and take the center crop
  oversample   squash to 256 and average over ten crops (corners, center, mirrors), as
               pycaffe's Classifier does
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from deepselfie.errors import UserError
from models.caffe import image

RESIZE_MODES = ("trained", "squash", "crop", "oversample")


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """The one resize (cv::resize, INTER_LINEAR) of an H x W x 3 uint8 image."""
    return img if img.shape[:2] == (h, w) else image.resize(img, h, w)


@dataclasses.dataclass
class Preprocess:
    """The hand-set modes: 3 x H x W float32, BGR, mean values subtracted, scaled."""

    height: int
    width: int
    mean: np.ndarray
    resize: str = "squash"
    base: int | None = None        # the training resize (crop/oversample); default 256/224
    scale: float = 1.0

    def __post_init__(self):
        if self.resize not in RESIZE_MODES[1:]:
            raise UserError(f"must be one of {', '.join(RESIZE_MODES)}", path="--resize",
                            field=self.resize)
        if self.base is None:
            self.base = max(self.height, self.width) * 256 // 224

    @property
    def needed_side(self) -> int:
        """The longest side the preprocessing resizes an image to."""
        return max(self.height, self.width, 0 if self.resize == "squash" else self.base)

    @property
    def crops(self) -> int:
        return 10 if self.resize == "oversample" else 1

    def signature(self) -> list:
        return [[round(float(v), 4) for v in self.mean], self.resize, self.base, self.scale,
                self.height, self.width]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 BGR -> crops x 3 x H x W float32."""
        out = np.empty((self.crops, 3, self.height, self.width), np.float32)
        self.into(img, out)
        return out

    def into(self, img: np.ndarray, out: np.ndarray) -> None:
        """Write the crops x 3 x H x W float32 input of an H x W x 3 uint8 BGR image into
        ``out`` (a batch buffer's rows: no other array of that size is made)."""
        h, w = self.height, self.width
        if self.resize == "squash":
            views = [resize(img, h, w)]
        else:
            big = resize(img, max(self.base, h), max(self.base, w))
            bh, bw = big.shape[:2]
            y, x = (bh - h) // 2, (bw - w) // 2
            if self.resize == "crop":
                views = [big[y:y + h, x:x + w]]
            else:
                starts = [(0, 0), (0, bw - w), (bh - h, 0), (bh - h, bw - w), (y, x)]
                five = [big[a:a + h, b:b + w] for a, b in starts]
                views = five + [v[:, ::-1] for v in five]
        mean = np.asarray(self.mean)[:, None, None]
        for view, dst in zip(views, out):      # the arithmetic (and its types) of the old stack
            np.subtract(view.transpose(2, 0, 1), mean, out=dst)
            if self.scale != 1.0:
                dst *= self.scale


class _CardError:
    """The transformer's ``error(message, field)``: a UserError naming the model card (a class,
    not a closure, so that the preprocessing pickles to a scorer's worker processes)."""

    def __init__(self, where):
        self.where = where

    def __call__(self, message, field):
        return UserError(message, path=self.where, field=field)


class AsTrained:
    """The TEST phase of the training net, as a model card describes it."""

    resize = "trained"
    crops = 1

    def __init__(self, card: dict, *, mean=None, scale=None):
        """``mean`` (a mean.binaryproto path or 3 BGR values) and ``scale`` override the card's."""
        from models.caffe.proto import caffe_pb2
        from models.caffe.transformer import DataTransformer
        where = card.get("path", "model card")
        if not card.get("image_size"):
            raise UserError("the model card does not say the label run's image size (its "
                            "training LMDB has no label run manifest.json); pass --resize "
                            "squash|crop|oversample with --mean", path=where)
        t = card["transform"]
        self.image_size = tuple(int(v) for v in card["image_size"])
        self.resize_mode = card.get("resize_mode", "squash")
        self.lossy = card.get("encoding") == "jpg"
        self.jpeg_quality = int(card.get("jpeg_quality", 95))
        self.seed = int(card.get("seed", 0))
        param = caffe_pb2.TransformationParameter()
        param.scale = float(t["scale"] if scale is None else scale)
        if t.get("crop_size"):
            param.crop_size = int(t["crop_size"])
        if mean is None:
            if t.get("mean_file"):
                param.mean_file = t["mean_file"]
            param.mean_value.extend(t.get("mean_value") or [])
        elif isinstance(mean, (str, os.PathLike)) and str(mean).endswith(".binaryproto"):
            param.mean_file = str(mean)
        else:
            from .score import read_mean
            param.mean_value.extend(float(v) for v in read_mean(mean))

        error = _CardError(where)
        self.transformer = DataTransformer(param, caffe_pb2.TEST, error)
        self.scale = float(param.scale)
        self.mean_spec = param.mean_file or [round(float(v), 4) for v in param.mean_value]
        h, w = self.image_size
        self.shape = self.transformer.output_shape((3, h, w))
        self.transformer.check((3, h, w))
        self.height, self.width = self.shape[1], self.shape[2]
        self.base = max(h, w)
        self.mean = np.zeros(3, np.float32)      # (the hand-set modes' field; unused here)

    @property
    def needed_side(self) -> int:
        return max(self.image_size)

    def signature(self) -> list:
        return ["trained", self.image_size, self.resize_mode, self.lossy, self.jpeg_quality,
                self.mean_spec, self.scale, self.height, self.width]

    def record(self, img: np.ndarray) -> np.ndarray:
        """The image as the label run stored it: resized, JPEG round trip when records are JPEG
        -> C x H x W uint8 BGR."""
        from label.image import noise_rng
        from label.resize import resize_image
        h, w = self.image_size
        pads = self.resize_mode in ("fill", "half_crop")
        out = resize_image(img, h, w, self.resize_mode,
                           noise_rng(self.seed, "score") if pads else None)
        if self.lossy:
            out = image.jpeg_round_trip(out, self.jpeg_quality)
        return out.transpose(2, 0, 1)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 BGR -> 1 x 3 x h x w float32, as the TEST net's Data layer gives it."""
        out = np.empty((1,) + tuple(self.shape), np.float32)
        self.into(img, out)
        return out

    def into(self, img: np.ndarray, out: np.ndarray) -> None:
        """Write the 1 x 3 x h x w input of an H x W x 3 uint8 BGR image into ``out``."""
        self.transformer.transform(self.record(img), (None, None, None), out[0])
