"""torchvision's ImageNet VGG16 checkpoint as Caffe VGG16 weights, converted exactly.

Source: ``vgg16-397923af.pth`` (torchvision's ``VGG16_Weights.IMAGENET1K_V1``), a state dict
with keys ``features.{0,2,5,...,28}.{weight,bias}`` (13 convolutions) and
``classifier.{0,3,6}.{weight,bias}`` (3 linear layers). It is read with
``torch.load(weights_only=True)``; nothing else in the file can run.

The mapping to the layers of ``prototxt/zoo/VGG_ILSVRC_16_layers_deploy.prototxt``:

* names: ``features.i`` -> conv1_1 ... conv5_3 in order, ``classifier.0/3/6`` -> fc6, fc7, fc8;
  shapes are the same (Caffe's convolution weight is O x I x kh x kw, InnerProduct's O x I).
* fc6: torchvision flattens the 512 x 7 x 7 map of pool5 (after an adaptive average pool that
  is the identity at 7 x 7, i.e. for 224 x 224 inputs) in C, H, W order -- exactly what Caffe's
  InnerProduct does -- so its columns need no reordering.
* fc8: both use the ILSVRC-2012 class order (synsets sorted by WordNet id).
* the input, folded into conv1_1. torchvision's net takes RGB in [0, 1], normalized as
  ``(x/255 - m) / s`` with m = (0.485, 0.456, 0.406), s = (0.229, 0.224, 0.225); Caffe's
  takes BGR 0-255 minus per-channel mean values M. With M = 255 m (in BGR order:
  **103.53, 116.28, 123.675**) a Caffe input pixel is exactly 255 s times the torchvision one,
  channel by channel, so conv1_1's input channels are reversed (RGB -> BGR) and divided by
  255 s, and the bias stays as it is. The zero padding of conv1_1 then agrees too (0 in one is
  0 in the other): the converted net computes what the torch net computes, to float rounding.

  With any other mean M (``mean_bgr=``), the difference M - 255 m is folded into conv1_1's
  bias. That is exact away from the image border but not on it: Caffe pads the
  mean-subtracted input with zeros, where the torch net would see (M - 255 m) / (255 s). With
  the classic VGG mean (103.939, 116.779, 123.68) the shift is at most 0.5 of 255 in one
  channel, so the outputs differ slightly on the one-pixel border of conv1_1 only; use the
  mean above for exact results (the model card written beside the weights says so).
"""
from __future__ import annotations

import numpy as np

from deepselfie.errors import UserError

# torchvision's normalization (RGB) and the Caffe mean values that match it exactly (BGR)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = tuple(round(255 * m, 6) for m in reversed(TORCH_MEAN_RGB))  # 103.53 116.28 123.675
CLASSIC_VGG_MEAN_BGR = (103.939, 116.779, 123.68)

CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)   # torchvision's vgg16 "D"
LAYERS = tuple(zip(CONVS, (f"features.{i}" for i in FEATURE_INDEX))) + (
    ("fc6", "classifier.0"), ("fc7", "classifier.3"), ("fc8", "classifier.6"))


def _arrays(state: dict, source) -> dict:
    """{torch key: float64 array}, after checking the keys are exactly torchvision's VGG16."""
    import torch

    if not isinstance(state, dict):
        raise UserError(f"holds a {type(state).__name__}, not a state dict", path=source)
    want = {f"{key}.{p}" for _, key in LAYERS for p in ("weight", "bias")}
    got = set(state)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        raise UserError("not torchvision's VGG16 state dict: "
                        + "; ".join(filter(None, [
                            missing and f"missing {', '.join(missing[:4])}",
                            extra and f"unexpected {', '.join(map(str, extra[:4]))}"])),
                        path=source)
    out = {}
    for k in sorted(want):
        v = state[k]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise UserError(f"{k} is not a floating-point tensor", path=source)
        out[k] = v.detach().to("cpu", torch.float64).numpy()
    return out


def caffe_blobs(state: dict, *, mean_bgr=CAFFE_MEAN_BGR, source="<state dict>") -> list:
    """[(Caffe layer name, [weight, bias] float32 arrays)] for VGG16 from torchvision's
    state dict, for Caffe inputs in BGR 0-255 minus ``mean_bgr`` (scale 1)."""
    arr = _arrays(state, source)
    out = []
    in_ch = 3
    for name, key in LAYERS:
        w, b = arr[f"{key}.weight"], arr[f"{key}.bias"]
        conv = name.startswith("conv")
        if w.ndim != (4 if conv else 2) or b.shape != (w.shape[0],) or \
                (conv and (w.shape[1] != in_ch or w.shape[2:] != (3, 3))):
            raise UserError(f"{key}.weight has shape {tuple(w.shape)} (bias {tuple(b.shape)}), "
                            f"which is not VGG16's {name}", path=source)
        if name == "conv1_1":
            std_bgr = np.asarray(TORCH_STD_RGB[::-1], np.float64)
            shift = np.asarray(mean_bgr, np.float64) - 255 * np.asarray(TORCH_MEAN_RGB[::-1])
            w = w[:, ::-1] / (255 * std_bgr)[None, :, None, None]     # RGB -> BGR, 0-255 scale
            b = b + np.einsum("oikl,i->o", w, shift)
        in_ch = w.shape[0]
        out.append((name, [np.ascontiguousarray(w, np.float32), b.astype(np.float32)]))
    return out


def load_checkpoint(path):
    """The state dict in a torch checkpoint, loaded with weights_only=True on the CPU."""
    import pickle
    import zipfile

    import torch
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
            AttributeError, ImportError) as e:
        raise UserError(f"not a torch checkpoint that loads with weights_only=True "
                        f"({type(e).__name__}: {_reason(e)})", path=path) from None


def _reason(e: Exception) -> str:
    """The telling line of torch.load's (long, multi-line) error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.endswith("error:") and i + 1 < len(lines):
            return lines[i + 1][:160]
    return lines[0][:160] if lines else "no detail"


def write_caffemodel(blobs: list, dest, *, name: str = "VGG_ILSVRC_16_layers") -> None:
    """A .caffemodel holding ``blobs`` by layer name (what Caffe's CopyTrainedLayersFrom
    reads), written atomically."""
    from models.caffe import protoio
    from models.caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name=name)
    for layer, _ in blobs:
        net.layer.add(name=layer, type="Convolution" if layer.startswith("conv")
                      else "InnerProduct")
    protoio.atomic_write_bytes(dest, protoio.encode_net(net, [arrs for _, arrs in blobs]))


def convert(checkpoint, dest, *, mean_bgr=CAFFE_MEAN_BGR) -> None:
    """checkpoint (.pth) -> dest (.caffemodel)."""
    write_caffemodel(caffe_blobs(load_checkpoint(checkpoint), mean_bgr=mean_bgr,
                                 source=checkpoint), dest)
