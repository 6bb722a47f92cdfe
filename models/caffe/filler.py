"""Caffe's weight fillers: constant, uniform, gaussian (optionally sparse), positive_unitball,
xavier, msra, bilinear; ``variance_norm`` picks fan_in, fan_out or their average.

Fan-in is count / shape[0] and fan-out count / shape[1] (integer division), as Caffe computes
them for any blob.

After ``caffe.set_random_seed`` the random fillers draw from Caffe's own generator
(``rng.engine()``: boost mt19937 and boost's distributions, in float32 as Caffe computes), so a
net built from a seed has the very weights real Caffe's fillers give. Unseeded, Caffe's stream
starts from entropy and cannot be reproduced anyway: the fillers then use torch's generator.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import rng
from .errors import CaffeError
from .proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def _fan(shape, norm) -> np.float32:
    """Caffe's n for xavier/msra, a float32 from the integer fans."""
    count = math.prod(shape) if shape else 1
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    if norm == FP.FAN_OUT:
        return np.float32(fan_out)
    if norm == FP.AVERAGE:
        return np.float32(fan_in + fan_out) / np.float32(2)
    return np.float32(fan_in)


def _caffe_draws(kind, shape, p, count) -> np.ndarray | None:
    """The random fillers' values drawn as Caffe draws them, from its global generator; None
    for the kinds that draw nothing."""
    eng = rng.engine()
    f32 = np.float32
    if kind == "uniform":
        return eng.uniform_real(count, p.min, p.max)
    if kind == "gaussian":
        data = eng.gaussian(count, p.mean, p.std)
        if p.sparse >= 0:
            keep = min(f32(1), f32(p.sparse) / f32(shape[0]))
            data *= eng.bernoulli(count, keep, np.float32).astype(np.float32)
        return data
    if kind == "positive_unitball":
        data = eng.uniform_real(count, 0.0, 1.0).reshape(shape[0] if shape else 1, -1)
        sums = np.cumsum(data, axis=1, dtype=np.float32)[:, -1:]   # Caffe adds in order
        return (data / sums).reshape(-1)
    if kind == "xavier":
        scale = np.sqrt(f32(3) / _fan(shape, p.variance_norm))
        return eng.uniform_real(count, -scale, scale)
    if kind == "msra":
        return eng.gaussian(count, 0.0, np.sqrt(f32(2) / _fan(shape, p.variance_norm)))
    return None


def fill(shape, param: caffe_pb2.FillerParameter | None, device="cpu",
         where="filler") -> torch.Tensor:
    """A new float32 tensor of ``shape`` filled as ``param`` says (default: constant 0)."""
    shape = tuple(int(s) for s in shape)
    p = param if param is not None else FP()
    kind = p.type
    if kind == "gaussian" and p.sparse >= 0 and (len(shape) < 1 or shape[0] == 0):
        raise CaffeError("sparse gaussian needs a blob with a first axis", path=where)
    # Caffe's CHECKs in caffe_rng_uniform / caffe_rng_gaussian (written so NaN fails too)
    if kind == "uniform" and not (math.isfinite(p.min) and math.isfinite(p.max)
                                  and p.min <= p.max):
        raise CaffeError(f"uniform filler needs finite min <= max, got min {p.min} max {p.max}",
                         path=where)
    if kind == "gaussian" and not (math.isfinite(p.mean) and math.isfinite(p.std)
                                   and p.std >= 0):
        raise CaffeError(f"gaussian filler needs a finite mean and std >= 0, got mean {p.mean} "
                         f"std {p.std}", path=where)
    if rng.seeded() and kind in ("uniform", "gaussian", "positive_unitball", "xavier", "msra"):
        values = _caffe_draws(kind, shape, p, math.prod(shape))
        return torch.from_numpy(values.reshape(shape)).to(device)
    t = torch.empty(shape, dtype=torch.float32)
    if kind == "constant":
        t.fill_(p.value)
    elif kind == "uniform":
        t.uniform_(p.min, p.max)
    elif kind == "gaussian":
        t.normal_(p.mean, p.std)
        if p.sparse >= 0:
            keep = min(1.0, p.sparse / shape[0])
            t *= torch.bernoulli(torch.full(shape, keep))
    elif kind == "positive_unitball":
        t.uniform_(0.0, 1.0)
        n = shape[0] if shape else 1
        rows = t.view(n, -1)
        rows /= rows.sum(dim=1, keepdim=True)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / float(_fan(shape, p.variance_norm)))
        t.uniform_(-scale, scale)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / float(_fan(shape, p.variance_norm))))
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise CaffeError(f"bilinear needs a square 4-D kernel, got {shape}", path=where)
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        idx = torch.arange(math.prod(shape), dtype=torch.float64)
        x = idx % k
        y = (idx // k) % shape[2]
        t = ((1 - (x / f - c).abs()) * (1 - (y / f - c).abs())).float().view(shape)
    else:
        raise CaffeError(f"unknown filler type {kind!r} (constant, uniform, gaussian, "
                         "positive_unitball, xavier, msra, bilinear)", path=where)
    return t.to(device)
