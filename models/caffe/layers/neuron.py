"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, ELU, Power, Exp, Log, AbsVal, BNLL, Dropout,
Threshold, Clip, Swish. Each keeps its bottom's shape; gradients are the plain derivatives, which
is what Caffe computes."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import rng, state
from ..layer import Layer, register
from ..proto import caffe_pb2


class Neuron(Layer):
    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register
class ReLU(Neuron):
    """max(x, 0) + negative_slope * min(x, 0); in place when the net says so (see Layer)."""
    type = "ReLU"
    inplace_capable = True

    def forward(self, bottoms, params):
        (x,) = bottoms
        slope = self.param.relu_param.negative_slope
        # not on a leaf the net differentiates (run alone), nor on a differentiated view:
        # autograd drops the hook the net put on a view (to read its diff) once it changes
        inplace = self.inplace and not (x.requires_grad and (x.is_leaf or x._base is not None))
        if slope:   # torch's in-place leaky_relu has no backward for slopes below 0
            return [F.leaky_relu(x, slope, inplace=inplace and slope > 0)]
        return [F.relu_(x) if inplace else F.relu(x)]


@register
class PReLU(Neuron):
    type = "PReLU"

    def setup(self, bottoms):
        p = self.param.prelu_param
        x = bottoms[0]
        if x.dim() < 2 and not p.channel_shared:
            raise self.error("needs a bottom with a channel axis (or channel_shared)")
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(
            type="constant", value=0.25)
        self.add_param(() if p.channel_shared else (x.shape[1],), filler)   # Caffe: 0-axis

    def forward(self, bottoms, params):
        (x,), (a,) = bottoms, params
        return [F.prelu(x, a.reshape(-1))]


@register
class Sigmoid(Neuron):
    type = "Sigmoid"

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register
class TanH(Neuron):
    type = "TanH"

    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register
class ELU(Neuron):
    type = "ELU"

    def forward(self, bottoms, params):
        return [F.elu(bottoms[0], alpha=self.param.elu_param.alpha)]


@register
class Power(Neuron):
    type = "Power"

    def forward(self, bottoms, params):
        p = self.param.power_param
        x = bottoms[0] * p.scale + p.shift if (p.scale != 1 or p.shift != 0) else bottoms[0]
        if p.power == 1:
            return [x if x is not bottoms[0] else x * 1.0]
        if p.power == 0:
            return [torch.ones_like(x)]
        return [torch.pow(x, p.power)]


def _check_base(layer, base):
    """Caffe's ExpLayer / LogLayer check: base -1 (e) or a positive number."""
    if not (base == -1 or base > 0):
        raise layer.error(f"base must be positive or -1 (e), got {base}", "base")


@register
class Exp(Neuron):
    type = "Exp"

    def setup(self, bottoms):
        _check_base(self, self.param.exp_param.base)

    def forward(self, bottoms, params):
        p = self.param.exp_param
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        inner = log_base * p.scale
        try:
            outer = 1.0 if p.shift == 0 else (math.exp(p.shift) if p.base == -1
                                              else p.base ** p.shift)
        except OverflowError:   # Caffe's float pow gives inf, and so do the outputs
            outer = math.inf
        y = torch.exp(bottoms[0] * inner)
        return [y * outer if outer != 1 else y]


@register
class Log(Neuron):
    type = "Log"

    def setup(self, bottoms):
        _check_base(self, self.param.log_param.base)

    def forward(self, bottoms, params):
        p = self.param.log_param
        base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        x = bottoms[0]
        if p.scale != 1 or p.shift != 0:
            x = x * p.scale + p.shift
        y = torch.log(x)
        return [y * base_scale if base_scale != 1 else y]


@register
class AbsVal(Neuron):
    type = "AbsVal"

    def forward(self, bottoms, params):
        return [torch.abs(bottoms[0])]


@register
class BNLL(Neuron):
    type = "BNLL"

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [F.relu(x) + torch.log1p(torch.exp(-torch.abs(x)))]


@register
class Dropout(Neuron):
    """TRAIN: keep each value with probability 1 - ratio and scale it by 1 / (1 - ratio);
    TEST: pass through. Ratio 0 is off. After ``caffe.set_random_seed`` the mask is Caffe's own
    (its global generator, drawn at forward); fast mode and unseeded runs use torch's."""
    type = "Dropout"

    def setup(self, bottoms):
        ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= ratio <= 1:     # Caffe: caffe_rng_bernoulli CHECKs 0 <= 1 - ratio <= 1
            raise self.error(f"must be between 0 and 1, got {ratio}", "dropout_ratio")

    def forward(self, bottoms, params):
        (x,) = bottoms
        ratio = self.param.dropout_param.dropout_ratio
        if self.phase != caffe_pb2.TRAIN or ratio == 0:
            return [x.view_as(x)]
        if x.device.type == "meta":
            return [x * 1.0]
        if rng.seeded() and not state.fast():
            # Caffe's mask: caffe_rng_bernoulli(count, 1. - threshold_) in double, one word per
            # value from the global generator; the scale is a float32 1 / (1 - threshold_)
            threshold = float(np.float32(ratio))
            keep = rng.engine().bernoulli(x.numel(), 1.0 - threshold, np.float64)
            mask = torch.from_numpy(keep.astype(np.float32)).view(x.shape).to(x.device)
            scale = float(np.float32(1.0 / (1.0 - threshold)))
            return [x * mask.to(x.dtype) * scale]
        # unseeded (Caffe's stream is not reproducible) or fast mode: torch's generator
        mask = torch.bernoulli(torch.full_like(x, 1.0 - ratio, dtype=torch.float32))
        return [x * mask.to(x.dtype) * (1.0 / (1.0 - ratio))]


@register
class Threshold(Neuron):
    type = "Threshold"
    no_backward = True

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [(x > self.param.threshold_param.threshold).to(x.dtype)]


@register
class Clip(Neuron):
    type = "Clip"

    def forward(self, bottoms, params):
        p = self.param.clip_param
        return [torch.clamp(bottoms[0], p.min, p.max)]


@register
class Swish(Neuron):
    type = "Swish"

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x * torch.sigmoid(self.param.swish_param.beta * x)]
