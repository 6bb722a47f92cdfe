"""Losses and metrics: SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss,
MultinomialLogisticLoss, HingeLoss, Accuracy.

Normalization follows Caffe's LossParameter: FULL (all positions), VALID (non-ignored positions),
BATCH_SIZE (outer count) or NONE, never below 1; ``normalize: false`` is the legacy BATCH_SIZE.
"""
import contextlib
import math
import threading

import torch

from ..layer import Layer, register
from ..proto import caffe_pb2

LP = caffe_pb2.LossParameter
FLT_MIN = 1.17549435e-38


_tracing = threading.local()


@contextlib.contextmanager
def label_flags():
    """While a compiled training step's graph is traced (models.caffe.compiled_train): a list
    that collects, per label check, the tensor "some label is out of range", which the graph
    returns so that the step can say which layer's labels are bad."""
    _tracing.flags = []
    try:
        yield _tracing.flags
    finally:
        _tracing.flags = None


def check_labels(layer, labels, valid, classes: int) -> None:
    """A one-line error naming ``layer`` when a label that is not ignored is no class index
    0..classes-1 (Caffe only DCHECKs this: a release build reads out of bounds). While a graph
    is traced the labels are symbols: an inference graph does not check (a compiled net runs
    in TEST phase, where labels are rarely fed); a training graph returns the check's outcome
    (``label_flags``)."""
    bad = valid & ((labels < 0) | (labels >= classes))
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        flags = getattr(_tracing, "flags", None)
        if flags is not None:
            flags.append(bad.any())
        return
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise layer.error(f"label {value} is out of range for {classes} classes (0.."
                          f"{classes - 1}): check the labels in the data")


class LossLayer(Layer):
    bottoms = (2, 2)
    tops = (1, 1)
    is_loss = True
    label_bottoms = (1,)

    def output_shapes(self, bottom_shapes):
        return [()] + [tuple(bottom_shapes[0])] * (len(self.param.top) - 1)

    def normalization(self, default=LP.VALID):
        lp = self.param.loss_param
        if lp.HasField("normalization"):
            return lp.normalization
        if lp.HasField("normalize"):
            return LP.VALID if lp.normalize else LP.BATCH_SIZE
        return default

    @staticmethod
    def normalizer(mode, outer, inner, valid):
        """Caffe's get_normalizer (a tensor when it counts valid labels), at least 1."""
        if mode == LP.FULL:
            return float(max(1, outer * inner))
        if mode == LP.VALID:
            return valid.clamp_min(1.0) if valid is not None else float(max(1, outer * inner))
        if mode == LP.BATCH_SIZE:
            return float(max(1, outer))
        return 1.0

    def ignore_label(self):
        lp = self.param.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None


class _SoftmaxLoss(torch.autograd.Function):
    """Caffe's SoftmaxWithLoss: loss = -sum log(max(p[label], FLT_MIN)) / normalizer, and the
    gradient (p - onehot) / normalizer at non-ignored positions, whatever the clamp did."""

    @staticmethod
    def forward(ctx, x3, labels, valid, normalizer):
        prob = torch.softmax(x3.float(), dim=1)                      # outer, C, inner
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        picked = prob.gather(1, safe.unsqueeze(1)).squeeze(1)        # outer, inner
        logp = torch.log(picked.clamp_min(FLT_MIN))
        valid = valid.to(prob.dtype)
        loss = -(logp * valid).sum() / normalizer
        ctx.save_for_backward(prob, safe, valid, torch.as_tensor(normalizer))
        return loss.to(x3.dtype)

    @staticmethod
    def backward(ctx, grad):
        prob, safe, valid, normalizer = ctx.saved_tensors
        g = prob.clone()
        g.scatter_add_(1, safe.unsqueeze(1), -torch.ones_like(prob[:, :1]))
        g = g * valid.unsqueeze(1) * (grad / normalizer)
        return g, None, None, None


@register
class SoftmaxWithLoss(LossLayer):
    type = "SoftmaxWithLoss"
    tops = (1, 2)

    def setup(self, bottoms):
        x, label = bottoms
        self.ax = self.axis(self.param.softmax_param.axis, x.dim(), "softmax_param.axis")
        outer, inner = math.prod(x.shape[:self.ax]), math.prod(x.shape[self.ax + 1:])
        if label.numel() != outer * inner:
            raise self.error(f"label count {label.numel()} must equal outer x inner = "
                             f"{outer} x {inner} of the scores {tuple(x.shape)}")

    def forward(self, bottoms, params):
        x, label = bottoms
        outer, c = math.prod(x.shape[:self.ax]), x.shape[self.ax]
        x3 = x.reshape(outer, c, -1)
        labels = label.detach().reshape(outer, -1).long()
        ignore = self.ignore_label()
        valid = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=bool)
        check_labels(self, labels, valid, c)
        mode = self.normalization()
        count = valid.sum().float() if (mode == LP.VALID and ignore is not None) else None
        norm = self.normalizer(mode, outer, x3.shape[2], count)
        norm_t = norm if torch.is_tensor(norm) else torch.tensor(norm, device=x.device)
        loss = _SoftmaxLoss.apply(x3, labels, valid, norm_t)
        tops = [loss]
        if len(self.param.top) > 1:
            tops.append(torch.softmax(x.detach(), dim=self.ax))
        return tops


@register
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / (2 N), N the first axis."""
    type = "EuclideanLoss"
    label_bottoms = ()

    def setup(self, bottoms):
        a, b = bottoms
        if a.numel() != b.numel():
            raise self.error(f"bottoms differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")

    def forward(self, bottoms, params):
        a, b = bottoms
        d = a - b.reshape(a.shape)
        return [(d * d).sum() / (2.0 * a.shape[0])]


@register
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1]; default normalization
    BATCH_SIZE, as Caffe's."""
    type = "SigmoidCrossEntropyLoss"

    def setup(self, bottoms):
        x, t = bottoms
        if x.numel() != t.numel():
            raise self.error(f"bottoms differ in size: {tuple(x.shape)} vs {tuple(t.shape)}")

    def forward(self, bottoms, params):
        x, t = bottoms
        t = t.reshape(x.shape)
        pos = (x >= 0).to(x.dtype)
        term = x * (t - pos) - torch.log1p(torch.exp(x - 2 * x * pos))
        ignore = self.ignore_label()
        outer = x.shape[0]
        inner = x.numel() // max(outer, 1)
        if ignore is not None:
            valid = (t != ignore).to(x.dtype)
            term = term * valid
            count = valid.sum()
        else:
            count = None
        norm = self.normalizer(self.normalization(LP.BATCH_SIZE), outer, inner, count)
        return [-term.sum() / norm]


@register
class MultinomialLogisticLoss(LossLayer):
    """-sum log(max(p[label], 1e-20)) / N over probabilities (not scores)."""
    type = "MultinomialLogisticLoss"

    def forward(self, bottoms, params):
        p, label = bottoms
        n = p.shape[0]
        labels = label.detach().reshape(n, 1).long()
        check_labels(self, labels, torch.ones_like(labels, dtype=torch.bool), p.numel() // n)
        picked = p.reshape(n, -1).gather(1, labels)
        return [-torch.log(picked.clamp_min(1e-20)).sum() / n]


@register
class HingeLoss(LossLayer):
    """One-vs-all hinge: sum over classes of max(0, 1 - y x) (L1) or its square (L2), / N."""
    type = "HingeLoss"

    def forward(self, bottoms, params):
        x, label = bottoms
        n = x.shape[0]
        x2 = x.reshape(n, -1)
        sign = -torch.ones_like(x2)
        labels = label.detach().reshape(n, 1).long()
        check_labels(self, labels, torch.ones_like(labels, dtype=torch.bool), x2.shape[1])
        sign.scatter_(1, labels, 1.0)
        margin = torch.relu(1 - sign * x2)
        if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = margin * margin
        return [margin.sum() / n]


@register
class Accuracy(Layer):
    """Fraction of non-ignored positions whose true class is among the top_k scores (fewer
    than top_k classes score strictly higher); a second top gives it per class."""
    type = "Accuracy"
    bottoms = (2, 2)
    tops = (1, 2)
    no_backward = True
    label_bottoms = (1,)

    def output_shapes(self, bottom_shapes):
        return [()] + [(bottom_shapes[0][self.ax],)] * (len(self.param.top) - 1)

    def setup(self, bottoms):
        x, label = bottoms
        p = self.param.accuracy_param
        self.ax = self.axis(p.axis, x.dim(), "accuracy_param.axis")
        outer, inner = math.prod(x.shape[:self.ax]), math.prod(x.shape[self.ax + 1:])
        if label.numel() != outer * inner:
            raise self.error(f"label count {label.numel()} must equal {outer} x {inner}")
        if p.top_k > x.shape[self.ax]:
            raise self.error("top_k exceeds the number of classes", "top_k")

    def forward(self, bottoms, params):
        x, label = bottoms
        p = self.param.accuracy_param
        outer, c = math.prod(x.shape[:self.ax]), x.shape[self.ax]
        x3 = x.reshape(outer, c, -1)
        labels = label.reshape(outer, -1).long()
        valid = labels != p.ignore_label if p.HasField("ignore_label") else \
            torch.ones_like(labels, dtype=torch.bool)
        check_labels(self, labels, valid, c)
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        true_score = x3.gather(1, safe.unsqueeze(1))
        better = (x3 > true_score).sum(dim=1)
        correct = (better < p.top_k) & valid
        count = valid.sum()
        acc = torch.where(count > 0, correct.sum().float() / count.clamp_min(1).float(),
                          torch.zeros((), device=x.device))
        tops = [acc.to(x.dtype)]
        if len(self.param.top) > 1:
            onehot = torch.nn.functional.one_hot(safe, c).to(torch.float32)   # outer,inner,C
            per_count = (onehot * valid.unsqueeze(-1)).sum(dim=(0, 1))
            per_correct = (onehot * correct.unsqueeze(-1)).sum(dim=(0, 1))
            tops.append((per_correct / per_count.clamp_min(1)).to(x.dtype))
        return tops
