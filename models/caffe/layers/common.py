"""Layers that reshape, combine or normalize blobs: InnerProduct, BatchNorm, Scale, Bias, Eltwise,
Concat, Slice, Split, Flatten, Reshape, Crop, Softmax, ArgMax, Silence, Reduction, Tile, MVN."""
import math

import torch

from ..layer import Layer, register
from ..proto import caffe_pb2

EP = caffe_pb2.EltwiseParameter


def _count(shape, start=0, end=None):
    return math.prod(shape[start:end])


@register
class InnerProduct(Layer):
    """y = x W^T + b, with x flattened from ``axis`` on; W is (num_output, K), or (K,
    num_output) with ``transpose``."""
    type = "InnerProduct"
    top_reusable = True
    bf16_params = True

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if _count(shape, self.ax) != self.k:
            return None
        return [shape[:self.ax] + (self.param.inner_product_param.num_output,)]

    def setup(self, bottoms):
        p = self.param.inner_product_param
        x = bottoms[0]
        self.ax = self.axis(p.axis, x.dim(), "inner_product_param.axis")
        k = _count(tuple(x.shape), self.ax)
        if p.num_output == 0:
            raise self.error("num_output must be positive", "num_output")
        shape = (k, p.num_output) if p.transpose else (p.num_output, k)
        self.add_param(shape, p.weight_filler, "weights")
        if p.bias_term:
            self.add_param((p.num_output,), p.bias_filler, "bias")
        self.k = k

    def forward(self, bottoms, params):
        x = bottoms[0]
        lead = tuple(x.shape[:self.ax])
        if _count(tuple(x.shape), self.ax) != self.k:
            raise self.error(f"input has {_count(tuple(x.shape), self.ax)} values per item "
                             f"from axis {self.ax}; the weights expect {self.k}")
        flat = x.reshape(_count(lead), self.k)
        w = params[0]
        b = params[1] if len(params) > 1 else None
        if self.param.inner_product_param.transpose:
            y = flat @ w
            y = y + b.to(y.dtype) if b is not None else y
        else:
            y = torch.nn.functional.linear(flat, w, b)
        if len(lead) == 1:   # already the top's shape: no view (an in-place layer may follow)
            return [y]
        return [y.reshape(lead + (y.shape[1],))]


@register
class BatchNorm(Layer):
    """Normalize per channel. Blobs: running mean sum, running variance sum, and their
    weight (a scale factor). TRAIN (unless use_global_stats) uses batch statistics and updates
    the sums with moving_average_fraction; TEST uses sums / factor."""
    type = "BatchNorm"
    frozen_params = True
    top_reusable = True

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def setup(self, bottoms):
        x = bottoms[0]
        if x.dim() < 2:
            raise self.error("needs a bottom with a channel axis")
        c = x.shape[1]
        for shape in ((c,), (c,), (1,)):
            self.add_param(shape)
        p = self.param.batch_norm_param
        self.use_global = (p.use_global_stats if p.HasField("use_global_stats")
                           else self.phase == caffe_pb2.TEST)

    def forward(self, bottoms, params):
        (x,) = bottoms
        p = self.param.batch_norm_param
        mean_sum, var_sum, factor = params
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        if self.use_global:
            f = factor.detach()[0]
            s = torch.where(f == 0, torch.zeros_like(f), 1.0 / f)
            mean = (mean_sum.detach() * s).view(shape)
            var = (var_sum.detach() * s).view(shape)
            std = torch.sqrt(var + p.eps).to(x.dtype)       # bf16 stays bf16 (fast mode)
            return [(x - mean.to(x.dtype)) / std]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        if x.device.type != "meta":
            m = x.numel() // x.shape[1]
            correction = m / (m - 1) if m > 1 else 1.0
            maf = p.moving_average_fraction
            with torch.no_grad():
                factor.mul_(maf).add_(1.0)
                mean_sum.mul_(maf).add_(mean.detach().view(-1).float())
                var_sum.mul_(maf).add_(correction * var.detach().view(-1).float())
        return [(x - mean) / torch.sqrt(var + p.eps)]


def _scale_shape(layer, x, other_shape, axis, num_axes, what):
    """The shape a Scale/Bias operand must have, and the broadcast view for x."""
    ax = layer.axis(axis, x.dim(), f"{what}.axis")
    if num_axes < -1:
        raise layer.error("num_axes must be -1 or >= 0", f"{what}.num_axes")
    end = x.dim() if num_axes == -1 else ax + num_axes
    if end > x.dim():
        raise layer.error(f"axis {ax} + num_axes {num_axes} exceeds the bottom's "
                          f"{x.dim()} axes", f"{what}.num_axes")
    return ax, tuple(x.shape[ax:end])


def _broadcast(t, x, ax):
    return t.reshape((1,) * ax + tuple(t.shape) + (1,) * (x.dim() - ax - t.dim()))


@register
class Scale(Layer):
    """y = x * s (+ b): s is a learned blob or the second bottom, spanning axes
    [axis, axis + num_axes) of x."""
    type = "Scale"
    bottoms = (1, 2)
    top_reusable = True

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def setup(self, bottoms):
        p = self.param.scale_param
        x = bottoms[0]
        if len(bottoms) == 2:
            ax = self.axis(p.axis, x.dim(), "scale_param.axis")
            s = tuple(bottoms[1].shape)
            if tuple(x.shape[ax:ax + len(s)]) != s:
                raise self.error(f"second bottom {s} does not match the first's axes from "
                                 f"{ax}: {tuple(x.shape)}")
            self.ax, shape = ax, s
        else:
            self.ax, shape = _scale_shape(self, x, None, p.axis, p.num_axes, "scale_param")
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(
                type="constant", value=1.0)
            self.add_param(shape, filler, "scale")
        if p.bias_term:
            self.add_param(shape, p.bias_filler, "bias")

    def scratch_diff(self, bottom_index, top_grad, bottoms, params):
        # Caffe computes the scale's gradient through bottom[0]'s diff (top_diff * x) unless
        # the scale covers every element (then it uses the scale's own diff).
        scale = bottoms[1] if len(bottoms) == 2 else params[0]
        if bottom_index == 0 and scale.numel() != bottoms[0].numel():
            return (top_grad * bottoms[0]).detach()
        return None

    def forward(self, bottoms, params):
        x = bottoms[0]
        if len(bottoms) == 2:
            s, rest = bottoms[1], params
        else:
            s, rest = params[0], params[1:]
        y = x * _broadcast(s.to(x.dtype), x, self.ax)
        if rest:
            y = y + _broadcast(rest[0].to(x.dtype), x, self.ax)
        return [y]


@register
class Bias(Layer):
    type = "Bias"
    bottoms = (1, 2)
    top_reusable = True

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def setup(self, bottoms):
        p = self.param.bias_param
        x = bottoms[0]
        if len(bottoms) == 2:
            self.ax = self.axis(p.axis, x.dim(), "bias_param.axis")
        else:
            self.ax, shape = _scale_shape(self, x, None, p.axis, p.num_axes, "bias_param")
            self.add_param(shape, p.filler, "bias")

    def forward(self, bottoms, params):
        x = bottoms[0]
        b = bottoms[1] if len(bottoms) == 2 else params[0]
        return [x + _broadcast(b.to(x.dtype), x, self.ax)]


@register
class Eltwise(Layer):
    """PROD, SUM (with optional coefficients) or MAX of several same-shaped bottoms; MAX sends
    the gradient to the first bottom holding the maximum, as Caffe does."""
    type = "Eltwise"
    bottoms = (2, None)
    top_reusable = True

    def output_shapes(self, bottom_shapes):
        shapes = {tuple(b) for b in bottom_shapes}
        return [tuple(bottom_shapes[0])] if len(shapes) == 1 else None

    def setup(self, bottoms):
        p = self.param.eltwise_param
        if len(p.coeff) and (p.operation != EP.SUM or len(p.coeff) != len(bottoms)):
            raise self.error("coeff needs operation SUM and one value per bottom", "coeff")
        for b in bottoms[1:]:
            if tuple(b.shape) != tuple(bottoms[0].shape):
                raise self.error(f"bottom shapes differ: {tuple(bottoms[0].shape)} vs "
                                 f"{tuple(b.shape)}")

    def forward(self, bottoms, params):
        p = self.param.eltwise_param
        if p.operation == EP.PROD:
            y = bottoms[0]
            for b in bottoms[1:]:
                y = y * b
        elif p.operation == EP.SUM:
            coeff = list(p.coeff) or [1.0] * len(bottoms)
            y = bottoms[0] * coeff[0] if coeff[0] != 1 else bottoms[0]
            for c, b in zip(coeff[1:], bottoms[1:]):
                y = y + (b * c if c != 1 else b)
            if y is bottoms[0]:
                y = y * 1.0
        else:
            y = bottoms[0]
            for b in bottoms[1:]:
                y = torch.where(b > y, b, y)
        return [y]


def _legacy_axis(layer, field, legacy_field, param):
    return getattr(param, legacy_field) if param.HasField(legacy_field) else getattr(param, field)


@register
class Concat(Layer):
    type = "Concat"
    bottoms = (1, None)

    def output_shapes(self, bottom_shapes):
        ref = list(bottom_shapes[0])
        if len(ref) <= self.ax:
            return None
        ref[self.ax] = sum(b[self.ax] for b in bottom_shapes)
        return [tuple(ref)]

    def setup(self, bottoms):
        p = self.param.concat_param
        self.ax = self.axis(_legacy_axis(self, "axis", "concat_dim", p), bottoms[0].dim(),
                            "concat_param.axis")
        ref = tuple(bottoms[0].shape)
        for b in bottoms[1:]:
            s = tuple(b.shape)
            if len(s) != len(ref) or s[:self.ax] + s[self.ax + 1:] != \
                    ref[:self.ax] + ref[self.ax + 1:]:
                raise self.error(f"bottoms {ref} and {s} differ off the concat axis")

    def forward(self, bottoms, params):
        if len(bottoms) == 1:
            return [bottoms[0].view_as(bottoms[0])]
        return [torch.cat(bottoms, dim=self.ax)]


@register
class Slice(Layer):
    type = "Slice"
    tops = (1, None)

    def setup(self, bottoms):
        p = self.param.slice_param
        x = bottoms[0]
        self.ax = self.axis(_legacy_axis(self, "axis", "slice_dim", p), x.dim(),
                            "slice_param.axis")
        n, size = len(self.param.top), x.shape[self.ax]
        points = list(p.slice_point)
        if points:
            if len(points) != n - 1:
                raise self.error(f"{n} tops need {n - 1} slice points", "slice_point")
            bounds = [0] + points + [size]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.error(f"slice points {points} must increase inside (0, {size})",
                                 "slice_point")
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if size % n:
                raise self.error(f"axis size {size} does not split into {n} equal parts")
            self.sizes = [size // n] * n

    def forward(self, bottoms, params):
        return list(torch.split(bottoms[0], self.sizes, dim=self.ax))


@register
class Split(Layer):
    """Copies of one blob for several consumers (their diffs add up in the bottom)."""
    type = "Split"
    tops = (1, None)

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x.view_as(x) for _ in self.param.top]


@register
class Flatten(Layer):
    type = "Flatten"

    def forward(self, bottoms, params):
        x = bottoms[0]
        p = self.param.flatten_param
        a = self.axis(p.axis, x.dim(), "flatten_param.axis")
        e = self.axis(p.end_axis, x.dim(), "flatten_param.end_axis")
        shape = tuple(x.shape)
        return [x.reshape(shape[:a] + (_count(shape, a, e + 1),) + shape[e + 1:])]


@register
class Reshape(Layer):
    """Caffe's Reshape: dims 0 copy the bottom's, one -1 is inferred; ``axis``/``num_axes`` pick
    the part of the bottom's shape that is replaced."""
    type = "Reshape"

    def _new_shape(self, shape):
        p = self.param.reshape_param
        dims = list(p.shape.dim)
        n = len(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error(f"axis {p.axis} is out of range", "reshape_param.axis")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error("axis + num_axes exceeds the bottom's axes", "reshape_param")
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise self.error(f"dim {i} is 0 but the bottom has no axis {start + i}")
                new.append(shape[start + i])
            else:
                new.append(d)
        if new.count(-1) > 1:
            raise self.error("at most one dim may be -1", "reshape_param.shape")
        out = list(shape[:start]) + new + list(shape[end:])
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            total = math.prod(shape)
            if known == 0 or total % known:
                raise self.error(f"cannot infer -1: {total} values into {tuple(out)}")
            out[out.index(-1)] = total // known
        if math.prod(out) != math.prod(shape):
            raise self.error(f"cannot reshape {tuple(shape)} to {tuple(out)}")
        return tuple(out)

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x.reshape(self._new_shape(tuple(x.shape)))]


@register
class Crop(Layer):
    """Crop the first bottom to the second's shape from ``axis`` on, at ``offset``."""
    type = "Crop"
    bottoms = (2, 2)

    def setup(self, bottoms):
        x, ref = bottoms
        p = self.param.crop_param
        self.ax = self.axis(p.axis, x.dim(), "crop_param.axis")
        n = x.dim() - self.ax
        offs = list(p.offset)
        if len(offs) not in (0, 1, n):
            raise self.error(f"offset needs 0, 1 or {n} values", "offset")
        self.offsets = offs * n if len(offs) == 1 else (offs or [0] * n)
        for i in range(n):
            a = self.ax + i
            if self.offsets[i] + ref.shape[a] > x.shape[a]:
                raise self.error(f"crop on axis {a} runs outside the bottom "
                                 f"({self.offsets[i]} + {ref.shape[a]} > {x.shape[a]})")

    def forward(self, bottoms, params):
        x, ref = bottoms
        index = [slice(None)] * x.dim()
        for i, off in enumerate(self.offsets):
            a = self.ax + i
            index[a] = slice(off, off + ref.shape[a])
        return [x[tuple(index)]]


@register
class Softmax(Layer):
    type = "Softmax"

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        ax = self.axis(self.param.softmax_param.axis, x.dim(), "softmax_param.axis")
        return [torch.softmax(x, dim=ax)]


@register
class ArgMax(Layer):
    """Indices (and with out_max_val, values) of the top_k largest entries. Without ``axis``
    each item is flattened and the top is (N, 1 or 2, top_k); with it, values replace that
    axis's length by top_k."""
    type = "ArgMax"
    no_backward = True

    def setup(self, bottoms):
        p = self.param.argmax_param
        x = bottoms[0]
        if p.HasField("axis"):
            self.ax = self.axis(p.axis, x.dim(), "argmax_param.axis")
            if p.top_k > x.shape[self.ax]:
                raise self.error("top_k exceeds the axis length", "top_k")
        else:
            self.ax = None
            if p.top_k > _count(tuple(x.shape), 1):
                raise self.error("top_k exceeds the item size", "top_k")

    def forward(self, bottoms, params):
        x = bottoms[0]
        p = self.param.argmax_param
        k = p.top_k
        if self.ax is not None:
            vals, idx = torch.topk(x, k, dim=self.ax)
            return [vals if p.out_max_val else idx.to(x.dtype)]
        flat = x.reshape(x.shape[0], -1)
        vals, idx = torch.topk(flat, k, dim=1)
        n = max(x.dim(), 3)
        if p.out_max_val:
            out = torch.stack([idx.to(x.dtype), vals], dim=1)          # N, 2, k
        else:
            out = idx.to(x.dtype).unsqueeze(1)                         # N, 1, k
        return [out.reshape((x.shape[0], out.shape[1], k) + (1,) * (n - 3))]


@register
class Silence(Layer):
    type = "Silence"
    bottoms = (1, None)
    tops = (0, 0)

    def forward(self, bottoms, params):
        return []


@register
class Reduction(Layer):
    type = "Reduction"

    def forward(self, bottoms, params):
        x = bottoms[0]
        p = self.param.reduction_param
        ax = self.axis(p.axis, x.dim(), "reduction_param.axis")
        flat = x.reshape(tuple(x.shape[:ax]) + (-1,))
        op = p.operation
        RP = caffe_pb2.ReductionParameter
        if op == RP.SUM:
            y = flat.sum(-1)
        elif op == RP.ASUM:
            y = flat.abs().sum(-1)
        elif op == RP.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.mean(-1)
        return [y * p.coeff if p.coeff != 1 else y]


@register
class Tile(Layer):
    type = "Tile"

    def forward(self, bottoms, params):
        x = bottoms[0]
        p = self.param.tile_param
        ax = self.axis(p.axis, x.dim(), "tile_param.axis")
        reps = [1] * x.dim()
        reps[ax] = p.tiles
        return [x.repeat(*reps)]


@register
class MVN(Layer):
    type = "MVN"

    def forward(self, bottoms, params):
        x = bottoms[0]
        p = self.param.mvn_param
        dims = tuple(range(1, x.dim())) if p.across_channels else tuple(range(2, x.dim()))
        y = x - x.mean(dim=dims, keepdim=True)
        if p.normalize_variance:
            var = (y * y).mean(dim=dims, keepdim=True)
            y = y / (torch.sqrt(var) + p.eps)
        return [y]
