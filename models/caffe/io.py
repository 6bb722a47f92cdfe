"""caffe.io: images in and out of Caffe's layout, and conversions between arrays and protos.

``load_image`` gives H x W x C float RGB in [0, 1] (pycaffe's convention); ``Transformer`` turns
that into the net's C x H x W input (transpose, channel swap to BGR, raw_scale, mean, input_scale)
and back.
"""
from __future__ import annotations

import numpy as np

from .datum import datum_pixels
from .errors import CaffeError
from .proto import caffe_pb2
from .protoio import array_to_blobproto, blobproto_to_array  # noqa: F401


def load_image(filename, color=True) -> np.ndarray:
    """An image file as float32 H x W x 3 (RGB) or H x W x 1 in [0, 1], read by the project's one
    loader (allow-listed formats, upright, transparency on white)."""
    from . import image
    try:
        bgr = image.load(filename)
    except image.ImageError as e:
        raise CaffeError(e.reason, path=filename) from None
    if color:
        arr = bgr[:, :, ::-1]
    else:
        import cv2
        arr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    return arr.astype(np.float32) / np.float32(255.0)


def resize_image(im: np.ndarray, new_dims, interp_order=1) -> np.ndarray:
    """Resize H x W x K to new_dims (height, width), bilinear by default, as pycaffe does."""
    import torch
    import torch.nn.functional as F
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (h, w):
        return im.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).permute(2, 0, 1)[None]
    mode = "nearest" if interp_order == 0 else ("bicubic" if interp_order >= 3 else "bilinear")
    kw = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(t, size=(h, w), mode=mode, **kw)
    return out[0].permute(1, 2, 0).numpy()


def oversample(images, crop_dims) -> np.ndarray:
    """Ten crops per image: four corners and the center, and their mirrors (N*10 x h x w x K)."""
    crop_dims = np.array(crop_dims)
    images = list(images)
    h, w = images[0].shape[:2]
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    starts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
              ((h - ch) // 2, (w - cw) // 2)]
    crops = []
    for im in images:
        five = [im[y:y + ch, x:x + cw] for y, x in starts]
        crops.extend(five + [c[:, ::-1] for c in five])
    return np.asarray(crops, dtype=np.float32)


class Transformer:
    """pycaffe's preprocessing for named inputs: ``set_transpose``, ``set_channel_swap``,
    ``set_raw_scale``, ``set_mean``, ``set_input_scale``; ``preprocess`` / ``deprocess``."""

    def __init__(self, inputs: dict):
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check(self, name):
        if name not in self.inputs:
            raise ValueError(f"{name} is not one of the net inputs: {list(self.inputs)}")

    def set_transpose(self, name, order):
        self._check(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise ValueError("transpose order needs as many dimensions as the input")
        self.transpose[name] = tuple(order)

    def set_channel_swap(self, name, order):
        self._check(name)
        if len(order) != self.inputs[name][1]:
            raise ValueError("channel swap needs one entry per channel")
        self.channel_swap[name] = tuple(order)

    def set_raw_scale(self, name, scale):
        self._check(name)
        self.raw_scale[name] = scale

    def set_mean(self, name, mean):
        """A per-channel mean (C,) or a full mean image (C x H x W, resized if needed)."""
        self._check(name)
        mean = np.asarray(mean, dtype=np.float32)
        ins = self.inputs[name]
        if mean.ndim == 1:
            if mean.shape[0] != ins[1]:
                raise ValueError("mean channels do not match the input")
            mean = mean[:, None, None]
        elif mean.shape != ins[1:]:
            if mean.shape[0] != ins[1]:
                raise ValueError("mean channels do not match the input")
            mean = resize_image(mean.transpose(1, 2, 0), ins[2:]).transpose(2, 0, 1)
        self.mean[name] = mean

    def set_input_scale(self, name, scale):
        self._check(name)
        self.input_scale[name] = scale

    def preprocess(self, name, data) -> np.ndarray:
        self._check(name)
        x = np.asarray(data, dtype=np.float32)
        size = self.inputs[name][2:]
        if x.shape[:2] != tuple(size):
            x = resize_image(x, size)
        if name in self.transpose:
            x = x.transpose(self.transpose[name])
        if name in self.channel_swap:
            x = x[list(self.channel_swap[name]), :, :]
        if name in self.raw_scale:
            x = x * self.raw_scale[name]
        if name in self.mean:
            x = x - self.mean[name]
        if name in self.input_scale:
            x = x * self.input_scale[name]
        return np.ascontiguousarray(x, dtype=np.float32)

    def deprocess(self, name, data) -> np.ndarray:
        self._check(name)
        x = np.asarray(data, dtype=np.float32).squeeze()
        if name in self.input_scale:
            x = x / self.input_scale[name]
        if name in self.mean:
            x = x + self.mean[name]
        if name in self.raw_scale:
            x = x / self.raw_scale[name]
        if name in self.channel_swap:
            x = x[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            x = x.transpose(np.argsort(self.transpose[name]))
        return x


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum as C x H x W: uint8 for raw bytes, float32 for float_data; an encoded Datum is
    decoded (to BGR, with the file's own channels, as Caffe's DecodeDatumToCVMatNative)."""
    return np.array(datum_pixels(datum))


def array_to_datum(arr, label=None) -> caffe_pb2.Datum:
    """C x H x W uint8 (raw bytes) or float (float_data) -> Datum."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("datum arrays are C x H x W")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    vec = caffe_pb2.BlobProtoVector()
    for arr in arraylist:
        vec.blobs.add().CopyFrom(array_to_blobproto(arr))
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes):
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]
