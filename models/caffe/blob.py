"""Blob: a named N-d array with its diff, as pycaffe shows it (``.data``, ``.diff`` numpy arrays
you can write into, ``.shape``, ``.reshape``), held as torch tensors on the net's device.

On the CPU in float32 ``.data`` and ``.diff`` are views of the tensors: writes land directly. On
CUDA (or in bf16), they are host copies, like Caffe's SyncedMemory: reading makes a copy, and the
net copies it back before it next computes, so ``blob.data[...] = x`` works everywhere (into a
bf16 blob of fast mode, rounded to bf16). A copy the user did not change is not copied back.

A reshaped blob holds no memory until something reads or writes it (its tensor is a "meta"
placeholder of the right shape until then), so building a net allocates its parameters only.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from .limits import check_blob_shape


def _is_view_safe(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32


class Blob:
    __slots__ = ("_t", "_d", "_host", "_handed", "_host_diff", "_diff_views", "device")

    def __init__(self, shape=(), device=None, tensor=None):
        self.device = torch.device(device or "cpu")
        self._t = tensor if tensor is not None else torch.zeros(tuple(shape), device=self.device)
        self._d = None
        self._host = None       # host copy of data handed out (device/bf16 tensors only)
        self._handed = None     # ... and what it held when handed out
        self._host_diff = None
        self._diff_views = []   # weak references to the .diff arrays handed out (views of _d)

    # -------------------------------------------------------------- tensors (for the engine)
    @property
    def tensor(self) -> torch.Tensor:
        """The data tensor, after applying writes made through ``.data``."""
        if self._t.is_meta:      # shaped, never written: zeros from now on
            self._t = torch.zeros(self._t.shape, dtype=self._t.dtype, device=self.device)
        if self._host is not None:
            host, handed = self._host, self._handed
            self._host = self._handed = None
            if not np.array_equal(host, handed, equal_nan=True):    # the user wrote into it
                self._push(self._t, host)
        return self._t

    @property
    def shaped(self) -> torch.Tensor:
        """The data tensor, or its meta placeholder if never written: for shape work only."""
        return self._t

    def set_tensor(self, t: torch.Tensor):
        self._t = t
        self._host = self._handed = None

    def release(self):
        """Drop the data (keeping shape and dtype): the net does this to blobs it is about to
        recompute, so that the old and the new values are never held together."""
        if not self._t.is_meta:
            self.set_tensor(torch.empty(self._t.shape, dtype=self._t.dtype, device="meta"))

    @property
    def diff_tensor(self) -> torch.Tensor:
        """The diff: float32 zeros until written; a backward in fast mode leaves bf16 there."""
        if self._d is None or self._d.shape != self._t.shape:
            if self._t.is_meta:
                self._d = torch.zeros(self._t.shape, device=self.device)
            else:
                self._d = torch.zeros_like(self._t, dtype=torch.float32, requires_grad=False)
            self._host_diff = None
            self._diff_views = []
        if self._host_diff is not None:
            self._push(self._d, self._host_diff)
            self._host_diff = None
        return self._d

    def set_diff(self, d: torch.Tensor):
        self._d = d
        self._host_diff = None
        self._diff_views = []

    @property
    def diff_in_view(self) -> bool:
        """Whether a ``.diff`` array handed out earlier (a view of the diff's buffer, on the
        CPU in float32) is still alive: then the buffer must stay the one it shows."""
        self._diff_views = [r for r in self._diff_views if r() is not None]
        return bool(self._diff_views)

    def take_diff(self, grad: torch.Tensor):
        """Make ``grad`` the diff: copied into the buffer while an array handed out shows it
        (one buffer, as Caffe's), else the diff simply becomes ``grad`` (no copy)."""
        if self.diff_in_view and self._d.shape == grad.shape:
            with torch.no_grad():
                self._d.copy_(grad)
        else:
            self.set_diff(grad)

    @property
    def has_diff(self) -> bool:
        """False while the diff is all zeros because nothing has been written to it."""
        return self._d is not None and self._d.shape == self._t.shape

    def clear_diff(self):
        """Zero the diff. It is one buffer, as Caffe's: a ``.diff`` array taken earlier sees the
        zeros (and what the next backward accumulates there). Where no such array is alive the
        buffer is dropped instead (reading it gives new zeros), so that nothing is held and a
        backward can take autograd's gradient as the diff without an addition."""
        if self._host_diff is not None:
            self._host_diff[...] = 0
        if self._d is not None and self.diff_in_view:
            with torch.no_grad():
                self._d.zero_()
            return
        self._d = None
        self._host_diff = None
        if self._t.is_leaf and self._t.grad is not None:
            self._t.grad = None

    @staticmethod
    def _push(t, host):
        with torch.no_grad():
            t.copy_(torch.from_numpy(host).reshape(t.shape))

    # -------------------------------------------------------------- pycaffe surface
    @property
    def data(self) -> np.ndarray:
        t = self.tensor
        if _is_view_safe(t):
            return t.detach().numpy()
        self._host = t.detach().float().cpu().numpy()
        self._handed = self._host.copy()
        return self._host

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        d = self.diff_tensor
        if _is_view_safe(d):
            arr = d.detach().numpy()
            self._diff_views = [r for r in self._diff_views if r() is not None]
            self._diff_views.append(weakref.ref(arr))
            return arr
        self._host_diff = d.detach().float().cpu().numpy()
        return self._host_diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def shape(self) -> tuple:
        return tuple(self._t.shape)

    @property
    def count(self) -> int:
        return int(self._t.numel())

    def _legacy(self, i):
        shape = self.shape
        return shape[i] if len(shape) > i else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        """Give the blob a new shape (its contents are then undefined, as in Caffe)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        check_blob_shape(shape, field="blob reshape")
        if shape != self.shape:
            if self._t.requires_grad and self._t.is_leaf:    # an input the net differentiates
                t = torch.zeros(shape, device=self.device, dtype=self._t.dtype)
                t.requires_grad_(True)
            else:
                t = torch.empty(shape, device="meta", dtype=self._t.dtype)
            self.set_tensor(t)
            self.set_diff(None)

    def __repr__(self):
        return f"Blob{self.shape}"
