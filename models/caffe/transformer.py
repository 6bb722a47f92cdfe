"""Caffe's DataTransformer: what ``transform_param`` does to each image on its way into a batch.

In Caffe's order, for one image (C x H x W, BGR, from a Datum or decoded):
  1. mirror: if ``mirror``, a coin from the layer's generator (``Rand(2)``), in any phase;
  2. crop: with ``crop_size``, TRAIN takes a random offset (``Rand(H - crop + 1)``, then
     ``Rand(W - crop + 1)``), TEST the center ((H - crop) / 2, (W - crop) / 2);
  3. each value becomes ``(pixel - mean) * scale`` in float32, where the mean is ``mean_file``'s
     pixel at the same (uncropped) position or ``mean_value`` per channel (one value serves all
     channels); the mirror flips the result left-right.

The random numbers are drawn up front, in that order, by ``draw()``, so a pool of decoders can
transform images in any order and still give Caffe's sequence; ``transform`` then finishes
``Rand(n)`` as ``draw % n`` once the image size is known.
"""
from __future__ import annotations

import numpy as np

from . import glog, image, protoio
from .datum import datum_pixels
from .proto import caffe_pb2
from .rng import Stream, caffe_rng_rand

TRAIN = caffe_pb2.TRAIN


class DataTransformer:
    def __init__(self, param: caffe_pb2.TransformationParameter, phase, error):
        """``error(message, field)`` makes the layer's CaffeError (it names the layer)."""
        self.error = error
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.crop = int(param.crop_size)
        self.train = phase == TRAIN
        if param.force_color and param.force_gray:
            raise error("cannot set both force_color and force_gray", "transform_param")
        self.flag = (image.COLOR if param.force_color else
                     image.GRAYSCALE if param.force_gray else image.UNCHANGED)
        self.mean = None            # C x H x W float32 (mean_file)
        self.mean_values = None     # float32 (mean_value)
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise error("cannot specify mean_file and mean_value at the same time",
                            "transform_param")
            glog.info("data_transformer.cpp:25", f"Loading mean file from: {param.mean_file}")
            self.mean = protoio.read_mean_image(param.mean_file, lambda message: error(
                f"mean_file {param.mean_file} {message}", "transform_param.mean_file"))
            self.mean_file = param.mean_file
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self.needs_rand = self.mirror or (self.train and self.crop > 0)
        self.stream = None
        self.init_rand()

    def init_rand(self):
        """Caffe's ``InitRand``: a generator of its own, seeded from the global one, when the
        transformer needs one. A prefetching data layer calls it twice (when the transformer
        is made, and again just before its prefetch thread starts); the second one counts."""
        self.stream = Stream(caffe_rng_rand()) if self.needs_rand else None

    def __getstate__(self):
        """Pickled for a decode worker, which transforms with draws made here: no generator."""
        return dict(self.__dict__, stream=None)

    # ------------------------------------------------------------ randomness, in Caffe's order
    def draw(self):
        """The random numbers one image will use: (mirror, h, w), each None when not drawn."""
        return self.draw_many(1)[0]

    def draw_many(self, n: int):
        """``draw()`` for ``n`` images in turn, from one read of the generator (the same
        words, in the same order)."""
        if not self.needs_rand:
            return [(None, None, None)] * n
        crop = self.train and self.crop > 0
        per = int(self.mirror) + 2 * crop
        words = self.stream.words(per * n).tolist()
        out = []
        for k in range(0, per * n, per):
            mirror = words[k] if self.mirror else None
            hw = words[k + per - 2:k + per] if crop else (None, None)
            out.append((mirror, hw[0], hw[1]))
        return out

    # ------------------------------------------------------------ shapes and checks
    def output_shape(self, shape):
        """C x h x w of a transformed C x H x W image."""
        c, h, w = shape
        if self.crop:
            if h < self.crop or w < self.crop:
                raise self.error(f"crop_size {self.crop} is larger than the {h}x{w} image",
                                 "transform_param.crop_size")
            return c, self.crop, self.crop
        return c, h, w

    def check(self, shape):
        """Fail early, naming the layer, where Caffe's CHECKs would."""
        self.output_shape(shape)
        c, h, w = shape
        if self.mean is not None and self.mean.shape != (c, h, w):
            m = self.mean.shape
            raise self.error(f"mean_file {self.mean_file} is {m[0]}x{m[1]}x{m[2]} but the "
                             f"images are {c}x{h}x{w} (C x H x W); compute the mean from the "
                             "same data", "transform_param.mean_file")
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise self.error(f"{len(self.mean_values)} mean_value(s) for {c}-channel images: "
                             "give one, or one per channel", "transform_param.mean_value")

    # ------------------------------------------------------------ decoding
    def datum_image(self, datum: caffe_pb2.Datum) -> np.ndarray:
        """A Datum's pixels as C x H x W (uint8, or float32 for float_data), decoding an
        encoded one as Caffe does (force_color / force_gray, else the file's own channels)."""
        return datum_pixels(datum, self.flag)

    # ------------------------------------------------------------ the transform
    def transform(self, img: np.ndarray, draws, out: np.ndarray) -> None:
        """Write the transformed C x H x W ``img`` into ``out`` (float32, C x h x w)."""
        c, h, w = img.shape
        self.check(img.shape)
        mirror_draw, h_draw, w_draw = draws
        h0 = w0 = 0
        if self.crop:
            if self.train:
                h0 = h_draw % (h - self.crop + 1)
                w0 = w_draw % (w - self.crop + 1)
            else:
                h0, w0 = (h - self.crop) // 2, (w - self.crop) // 2
            img = img[:, h0:h0 + self.crop, w0:w0 + self.crop]
        mirror = mirror_draw is not None and mirror_draw % 2
        if img.dtype == np.uint8 and img.strides[0] == 1 and img.strides[2] == c:
            self._transform_planes(img.transpose(1, 2, 0), mirror, h0, w0, out)
            return
        dst = out[:, :, ::-1] if mirror else out
        dst[...] = img      # to float32 first, then in place: faster than a casting subtract
        if self.mean is not None:
            mean = self.mean[:, h0:h0 + img.shape[1], w0:w0 + img.shape[2]]
            np.subtract(dst, mean, out=dst)
        elif self.mean_values is not None:
            mv = self.mean_values if len(self.mean_values) == c else \
                np.repeat(self.mean_values, c)
            np.subtract(dst, mv[:, None, None], out=dst)
        if self.scale != 1:
            np.multiply(out, self.scale, out=out)

    def _transform_planes(self, hwc, mirror, h0, w0, out):
        """``transform`` of a decoded image (uint8 H x W x C, as OpenCV gives it, cropped):
        OpenCV mirrors it and splits it into contiguous channel planes, and each plane is
        converted and has its mean subtracted in one pass into its row of ``out``. The same
        float32 values as the general path, in about half its time (which reads
        the interleaved pixels with a stride of C)."""
        import cv2
        mean = None
        if self.mean is not None:
            mean = self.mean[:, h0:h0 + hwc.shape[0], w0:w0 + hwc.shape[1]]
            if mirror:
                mean = mean[:, :, ::-1]
        if mirror:
            hwc = cv2.flip(hwc, 1)
        c = out.shape[0]
        planes = cv2.split(hwc) if c > 1 else [hwc.reshape(hwc.shape[:2])]
        values = self.mean_values
        if values is not None and len(values) != c:
            values = np.repeat(values, c)
        for k in range(c):
            if mean is not None:
                np.subtract(planes[k], mean[k], out=out[k], dtype=np.float32)
            elif values is not None:
                np.subtract(planes[k], values[k], out=out[k], dtype=np.float32)
            else:
                out[k] = planes[k]
        if self.scale != 1:
            np.multiply(out, self.scale, out=out)
