"""The layer contract and the registry of layer types.

A layer is a small class registered under its Caffe type name. The net builds it from its
LayerParameter, calls ``setup`` once with the bottom tensors (their shapes are what matters: they
may be on the "meta" device), then ``forward(bottoms, params)`` returns the top tensors. Gradients
come from torch autograd through ``forward``; a layer whose Caffe backward differs from the plain
derivative of its forward implements a torch.autograd.Function for it.

Class attributes tell the net what Caffe's layer traits are:
  bottoms / tops      (min, max) counts, max None for "any"
  is_loss             the first top has loss_weight 1 unless the prototxt says otherwise
  no_backward         Caffe has no backward for it (Accuracy, ArgMax): forward runs without autograd
  is_source           it has no bottoms and makes its tops (Input, Data): they keep their storage
  label_bottoms       bottom indices force_backward never reaches (a loss's labels)
  inplace_capable     it can compute its top in its bottom's storage; the net turns this on
                      (sets ``self.inplace``) where the prototxt is in-place and it is safe
  top_reusable        its top is a new tensor that its backward never reads, so an in-place
                      layer after it may overwrite it (as Caffe's in-place ReLU does)
  bf16_params         autocast (fast mode) runs it in bf16, parameters included: a fast net
                      that never runs backward may store them in bf16

``output_shapes(bottom_shapes)`` gives the top shapes without computing anything; a layer that
does not say (None) is run forward on "meta" tensors instead.
"""
from __future__ import annotations

import torch

from .blob import Blob
from .errors import CaffeError
from .filler import fill
from .limits import check_blob_shape

LAYERS: dict[str, type] = {}


def register(cls):
    """Class decorator: register ``cls`` under ``cls.type`` (and ``cls.aliases``)."""
    for name in (cls.type, *getattr(cls, "aliases", ())):
        LAYERS[name] = cls
    return cls


def layer_type_list() -> list[str]:
    return sorted(LAYERS)


def create_layer(lp, phase, device, source="<net>"):
    cls = LAYERS.get(lp.type)
    if cls is None:
        raise CaffeError(f"unknown layer type {lp.type!r}", path=source,
                         field=f"layer {lp.name!r}")
    return cls(lp, phase, device, source)


class Layer:
    type: str = ""
    bottoms: tuple = (1, 1)
    tops: tuple = (1, 1)
    is_loss = False
    no_backward = False
    is_source = False
    hands_over_tops = False     # a source whose tops the blobs may keep (no copy each pass)
    label_bottoms: tuple = ()
    inplace_capable = False
    top_reusable = False
    bf16_params = False

    def __init__(self, lp, phase, device, source="<net>"):
        self.param = lp
        self.name = lp.name
        self.phase = phase
        self.device = device
        self.source = source
        self.blobs: list[Blob] = []
        self.inplace = False

    # -- helpers for subclasses
    def error(self, message, field=None):
        """A CaffeError naming the prototxt, this layer and (optionally) the field."""
        where = f"layer {self.name!r} ({self.type})" + (f": {field}" if field else "")
        return CaffeError(message, path=self.source, field=where)

    def check_shape(self, shape, what):
        """Refuse a blob of ``shape`` (this layer's ``what``) over the size limit (limits.py)."""
        check_blob_shape(shape, path=self.source, field=f"layer {self.name!r} ({self.type}): "
                                                        f"{what}")

    def add_param(self, shape, filler=None, what="blob"):
        """Append a learnable blob of ``shape`` filled by ``filler`` (a FillerParameter)."""
        self.check_shape(shape, what)
        t = fill(shape, filler, self.device, where=f"{self.source}: layer {self.name!r} {what}")
        self.blobs.append(Blob(device=self.device, tensor=t))
        return self.blobs[-1]

    @staticmethod
    def canonical_axis(axis: int, ndim: int) -> int:
        if not -ndim <= axis < max(ndim, 1):
            raise IndexError(axis)
        return axis % ndim if ndim else 0

    def axis(self, axis: int, ndim: int, field="axis") -> int:
        try:
            return self.canonical_axis(axis, ndim)
        except IndexError:
            raise self.error(f"axis {axis} is out of range for a {ndim}-axis blob",
                             field) from None

    # -- the contract
    def setup(self, bottoms: list[torch.Tensor]) -> None:
        """Check the bottoms and create parameter blobs (called once, bottoms may be meta)."""

    def output_shapes(self, bottom_shapes: list[tuple]) -> list[tuple] | None:
        """The top shapes for these bottom shapes, or None: "run forward on meta tensors"."""
        return None

    def forward(self, bottoms: list[torch.Tensor], params: list[torch.Tensor]):
        raise NotImplementedError

    def scratch_diff(self, bottom_index, top_grad, bottoms, params):
        """What Caffe's backward leaves in a bottom's diff that it does not propagate to (its
        scratch space), or None. Only Scale uses this."""
        return None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index not in self.label_bottoms

    def __repr__(self):
        return f"<{self.type} layer {self.name!r}>"
