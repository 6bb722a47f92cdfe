"""Spatial layers: Convolution, Deconvolution, Pooling (MAX, AVE, STOCHASTIC, global) and LRN."""
import math

import torch
import torch.nn.functional as F

from ..layer import Layer, register
from ..proto import caffe_pb2

PP = caffe_pb2.PoolingParameter

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _per_axis(layer, repeated, h, w, has_hw, n, default, name):
    """Caffe's kernel/stride/pad/dilation: one value for all axes, one per axis, or _h/_w."""
    if has_hw:
        if n != 2:
            raise layer.error(f"{name}_h/{name}_w only for 2-D convolution", name)
        return (h, w)
    values = list(repeated)
    if not values:
        if default is None:
            raise layer.error(f"{name} is required", name)
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise layer.error(f"{name} has {len(values)} values for {n} spatial axes", name)
    return tuple(values)


class _ConvBase(Layer):
    top_reusable = True
    bf16_params = True

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != 2 + len(self.kernel) or shape[1] != self.channels:
            return None   # let the forward on meta tensors say what is wrong
        spatial = tuple(self._out_size(*a) for a in zip(shape[2:], self.kernel, self.stride,
                                                       self.pad, self.dilation))
        if min(spatial, default=1) <= 0:
            raise self.error(f"a bottom of shape {'x'.join(map(str, shape))} gives an output "
                             f"of {'x'.join(map(str, spatial))} pixels (kernel {self.kernel}, "
                             f"stride {self.stride}, pad {self.pad}, dilation "
                             f"{self.dilation}): it must have at least one")
        return [(shape[0], self.param.convolution_param.num_output) + spatial]

    def _geometry(self, x):
        p = self.param.convolution_param
        self.channel_axis = self.axis(p.axis, x.dim(), "convolution_param.axis")
        n = x.dim() - self.channel_axis - 1
        if n not in _CONV:
            raise self.error(f"{n}-D convolution is not supported (1 to 3 spatial axes)")
        if self.channel_axis != 1:
            raise self.error("only axis 1 (channels second) is supported", "axis")
        self.kernel = _per_axis(self, p.kernel_size, p.kernel_h, p.kernel_w,
                                p.HasField("kernel_h") or p.HasField("kernel_w"), n, None,
                                "kernel_size")
        self.stride = _per_axis(self, p.stride, p.stride_h, p.stride_w,
                                p.HasField("stride_h") or p.HasField("stride_w"), n, 1, "stride")
        self.pad = _per_axis(self, p.pad, p.pad_h, p.pad_w,
                             p.HasField("pad_h") or p.HasField("pad_w"), n, 0, "pad")
        self.dilation = _per_axis(self, p.dilation, 0, 0, False, n, 1, "dilation")
        if any(k <= 0 for k in self.kernel):
            raise self.error("kernel size must be positive", "kernel_size")
        if any(s <= 0 for s in self.stride):
            raise self.error("stride must be positive", "stride")
        self.group = p.group
        if self.group <= 0:
            raise self.error("group must be positive", "group")
        self.channels = x.shape[1]
        if p.num_output == 0:
            raise self.error("num_output must be positive", "num_output")
        if self.channels % self.group or p.num_output % self.group:
            raise self.error(f"group {self.group} must divide the {self.channels} input "
                             f"channels and num_output {p.num_output}", "group")
        return p, n


@register
class Convolution(_ConvBase):
    type = "Convolution"

    def setup(self, bottoms):
        p, n = self._geometry(bottoms[0])
        self.add_param((p.num_output, self.channels // self.group) + self.kernel,
                       p.weight_filler, "weights")
        if p.bias_term:
            self.add_param((p.num_output,), p.bias_filler, "bias")
        self.conv = _CONV[n]

    @staticmethod
    def _out_size(size, kernel, stride, pad, dilation):
        return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1

    def forward(self, bottoms, params):
        w = params[0]
        b = params[1] if len(params) > 1 else None
        return [self.conv(bottoms[0], w, b, self.stride, self.pad, self.dilation, self.group)]


@register
class Deconvolution(_ConvBase):
    """The transpose of Convolution: weights are (channels, num_output / group, kernel...)."""
    type = "Deconvolution"

    def setup(self, bottoms):
        p, n = self._geometry(bottoms[0])
        self.add_param((self.channels, p.num_output // self.group) + self.kernel,
                       p.weight_filler, "weights")
        if p.bias_term:
            self.add_param((p.num_output,), p.bias_filler, "bias")
        self.deconv = _DECONV[n]

    @staticmethod
    def _out_size(size, kernel, stride, pad, dilation):
        return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad

    def forward(self, bottoms, params):
        w = params[0]
        b = params[1] if len(params) > 1 else None
        return [self.deconv(bottoms[0], w, b, self.stride, self.pad, 0, self.group,
                            self.dilation)]


def pooled_size(size, kernel, stride, pad, ceil):
    """Caffe's rule: ceil (or floor) division, then the last window must start inside the
    input plus its leading pad."""
    if ceil:
        out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    else:
        out = (size + 2 * pad - kernel) // stride + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register
class Pooling(Layer):
    type = "Pooling"
    tops = (1, 2)

    def setup(self, bottoms):
        p = self.param.pooling_param
        x = bottoms[0]
        if x.dim() != 4:
            raise self.error(f"needs a 4-D bottom, got {x.dim()} axes")
        if len(self.param.top) > 1 and p.pool != PP.MAX:
            raise self.error("a second top (the argmax mask) needs pool: MAX")
        self.global_pool = p.global_pooling
        if self.global_pool:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("global_pooling takes no kernel size", "kernel_size")
        else:
            if p.HasField("kernel_size") == (p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("give kernel_size or kernel_h and kernel_w", "kernel_size")
            self.kernel = ((p.kernel_h, p.kernel_w) if p.HasField("kernel_h")
                           else (p.kernel_size, p.kernel_size))
            if min(self.kernel) <= 0:
                raise self.error("kernel size must be positive", "kernel_size")
        has_hw = p.HasField("pad_h") or p.HasField("pad_w")
        self.pad = (p.pad_h, p.pad_w) if has_hw else (p.pad, p.pad)
        has_hw = p.HasField("stride_h") or p.HasField("stride_w")
        self.stride = (p.stride_h, p.stride_w) if has_hw else (p.stride, p.stride)
        if self.global_pool and (any(self.pad) or self.stride != (1, 1)):
            raise self.error("global_pooling needs pad 0 and stride 1")
        if min(self.stride) <= 0:
            raise self.error("stride must be positive", "stride")
        if not self.global_pool and any(pd >= k for pd, k in zip(self.pad, self.kernel)):
            raise self.error("pad must be smaller than the kernel", "pad")
        self.ceil = p.round_mode == PP.CEIL
        self.method = p.pool

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            return None
        kernel, out = self._geometry(shape[2:])
        if min(out) <= 0:
            raise self.error(f"a bottom of shape {'x'.join(map(str, shape))} gives an output "
                             f"of {'x'.join(map(str, out))} (kernel {kernel}, stride "
                             f"{self.stride}, pad {self.pad}): it must have at least one")
        return [shape[:2] + out] * len(self.param.top)

    def _geometry(self, hw):
        h, w = hw
        kernel = (h, w) if self.global_pool else self.kernel
        out = tuple(pooled_size(s, k, st, pd, self.ceil)
                    for s, k, st, pd in zip((h, w), kernel, self.stride, self.pad))
        return kernel, out

    def forward(self, bottoms, params):
        (x,) = bottoms
        kernel, out = self._geometry(x.shape[2:])
        if self.method == PP.MAX:
            return self._max(x, kernel, out)
        if self.method == PP.AVE:
            return [self._ave(x, kernel, out)]
        return [self._stochastic(x, kernel, out)]

    def _pad_to(self, x, kernel, out, value):
        """Pad so that ``out`` windows fit exactly (Caffe clips windows; torch needs room)."""
        need = [(o - 1) * s + k for o, s, k in zip(out, self.stride, kernel)]
        extra = [max(0, n - (size + p)) for n, size, p in zip(need, x.shape[2:], self.pad)]
        return F.pad(x, (self.pad[1], extra[1], self.pad[0], extra[0]), value=value)

    def _max(self, x, kernel, out):
        if all(2 * p <= k for p, k in zip(self.pad, kernel)):
            y, idx = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil,
                                  return_indices=True)
        else:
            y, idx = F.max_pool2d(self._pad_to(x, kernel, out, float("-inf")), kernel,
                                  self.stride, return_indices=True)
            idx = None  # indices refer to the padded input
        y = y[:, :, :out[0], :out[1]]
        if len(self.param.top) > 1:
            if idx is None:
                raise self.error("the argmax top needs pad <= kernel / 2")
            return [y, idx[:, :, :out[0], :out[1]].to(y.dtype)]
        return [y]

    def _ave(self, x, kernel, out):
        if self.global_pool:
            return x.mean(dim=(2, 3), keepdim=True)
        if all(2 * p <= k for p, k in zip(self.pad, kernel)):
            y = F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil,
                             count_include_pad=True)
            return y[:, :, :out[0], :out[1]]
        # Caffe divides by the window clipped to input + pad on both sides
        summed = F.avg_pool2d(self._pad_to(x, kernel, out, 0.0), kernel, self.stride,
                              divisor_override=1)[:, :, :out[0], :out[1]]
        return summed / self._ave_divisor(x.shape[2:], kernel, out, summed)

    def _ave_divisor(self, size, kernel, out, like):
        sizes = []
        for axis in range(2):
            start = torch.arange(out[axis]) * self.stride[axis] - self.pad[axis]
            end = torch.clamp(start + kernel[axis], max=size[axis] + self.pad[axis])
            sizes.append((end - start).to(like.dtype))
        return (sizes[0][:, None] * sizes[1][None, :]).to(like.device)

    def _stochastic(self, x, kernel, out):
        """TRAIN samples one value per window with probability proportional to it; TEST takes
        the activation-weighted average (the inputs must be non-negative, as after a ReLU)."""
        xp = self._pad_to(x, kernel, out, 0.0)
        n, c = x.shape[:2]
        cols = F.unfold(xp, kernel, stride=self.stride)          # n, c*k, L
        cols = cols.view(n, c, kernel[0] * kernel[1], -1)[..., :out[0] * out[1]]
        total = cols.sum(dim=2)
        if self.phase == caffe_pb2.TRAIN and x.device.type != "meta":
            probs = (cols / total.clamp_min(1e-30).unsqueeze(2)).permute(0, 1, 3, 2)
            flat = probs.reshape(-1, probs.shape[-1])
            safe = torch.where(flat.sum(1, keepdim=True) > 0, flat, torch.ones_like(flat))
            pick = torch.multinomial(safe.detach().float(), 1)
            vals = cols.permute(0, 1, 3, 2).reshape(-1, probs.shape[-1]).gather(1, pick)
            y = vals.view(n, c, out[0], out[1])
        else:
            y = ((cols * cols).sum(dim=2) / total.clamp_min(1e-30)).view(n, c, *out)
        return y


@register
class LRN(Layer):
    """Local response normalization. ACROSS_CHANNELS: x / (k + alpha/n * sum of squares over
    n neighbouring channels)^beta. WITHIN_CHANNEL: x / (1 + alpha * average of squares over an
    n x n window, padded as Caffe's AVE pooling divides)^beta."""
    type = "LRN"
    top_reusable = True

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def setup(self, bottoms):
        p = self.param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error("local_size must be odd", "lrn_param.local_size")
        if bottoms[0].dim() != 4:
            raise self.error(f"needs a 4-D bottom, got {bottoms[0].dim()} axes")

    def forward(self, bottoms, params):
        (x,) = bottoms
        if x.numel() == 0:          # an empty blob (an axis of 0): nothing to normalize
            return [x * 1.0]
        p = self.param.lrn_param
        n = p.local_size
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            sq = (x * x).unsqueeze(1)                                   # N,1,C,H,W
            pad = (n - 1) // 2
            sq = F.pad(sq, (0, 0, 0, 0, pad, pad))
            summed = F.avg_pool3d(sq, (n, 1, 1), stride=1, divisor_override=1).squeeze(1)
            scale = p.k + (p.alpha / n) * summed
        else:
            pad = (n - 1) // 2
            avg = F.avg_pool2d(x * x, n, stride=1, padding=pad, ceil_mode=True,
                               count_include_pad=True)
            avg = avg[:, :, :x.shape[2], :x.shape[3]]
            scale = 1.0 + p.alpha * avg
        return [x * torch.pow(scale, -p.beta)]
