"""Caffe's weight fillers: constant, uniform, gaussian (optionally sparse), positive_unitball,
xavier, msra, bilinear; ``variance_norm`` picks fan_in, fan_out or their average.

Fan-in is count / shape[0] and fan-out count / shape[1], as Caffe computes them for any blob.
"""
from __future__ import annotations

import math

import torch

from .errors import CaffeError
from .proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def _fan(shape, norm) -> float:
    count = math.prod(shape) if shape else 1
    fan_in = count / shape[0] if shape else count
    fan_out = count / shape[1] if len(shape) > 1 else count
    if norm == FP.FAN_OUT:
        return fan_out
    if norm == FP.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(shape, param: caffe_pb2.FillerParameter | None, device="cpu",
         where="filler") -> torch.Tensor:
    """A new float32 tensor of ``shape`` filled as ``param`` says (default: constant 0)."""
    shape = tuple(int(s) for s in shape)
    p = param if param is not None else FP()
    kind = p.type
    t = torch.empty(shape, dtype=torch.float32)
    if kind == "constant":
        t.fill_(p.value)
    elif kind == "uniform":
        t.uniform_(p.min, p.max)
    elif kind == "gaussian":
        t.normal_(p.mean, p.std)
        if p.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise CaffeError("sparse gaussian needs a blob with a first axis", path=where)
            keep = min(1.0, p.sparse / shape[0])
            t *= torch.bernoulli(torch.full(shape, keep))
    elif kind == "positive_unitball":
        t.uniform_(0.0, 1.0)
        n = shape[0] if shape else 1
        rows = t.view(n, -1)
        rows /= rows.sum(dim=1, keepdim=True)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _fan(shape, p.variance_norm))
        t.uniform_(-scale, scale)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _fan(shape, p.variance_norm)))
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
