"""Compiled training steps: a TRAIN net's forward and backward as one compiled graph (torch.export
of the layers, torch.compile with inductor; the backward through AOTAutograd), for a solver built
with ``compile=True``.

    solver = caffe.SGDSolver("solver.prototxt", compile=True)   # eager when it cannot compile

As for compiled inference (models.caffe.compiled), the net's layers after its sources (Input,
Data...) become one function of the source tops that calls each layer's own ``forward``, and
torch.export traces it without Python bytecode analysis (the layers read their protobuf settings
in plain Python). Unlike inference, the parameters are not frozen: they are the module's
parameters, sharing their storage with the blobs' tensors, so the solver's in-place updates are
what the next step computes with. Where Caffe would not propagate (``propagate_down: false``, a
bottom no learning layer lies under) the bottom is detached, as in the eager net, so the
parameter diffs are Caffe's. The graph also returns, per label check of a loss or accuracy layer,
whether a label was out of range; a step that sees one runs the forward eagerly, which raises
the layer's one-line error.

A step: the source layers run eagerly (a Data layer reads its records), then the compiled graph,
then the backward of the weighted loss sum (what seeding each loss top with its loss weight
gives). Parameter diffs accumulate into the blobs' diffs as the eager net's do (iter_size); the
outputs are written to ``net.blobs`` (the solver logs them). Intermediate blobs' data and diffs
are not written: read them after an eager ``net.forward_backward()``. One graph per input shape;
a parameter tensor that is replaced (not written in place) rebuilds it.

Not compiled (``CompileError``; the solver says so once and trains eagerly): a net with a layer
that draws Caffe's random numbers in every pass (Dropout), or whose trace or compile fails.
"""
from __future__ import annotations

import torch

from . import state
from .compiled import CompileError, _inductor_settings, _Program
from .errors import CaffeError
from .layers import loss as loss_layers

RANDOM_LAYERS = ("Dropout",)    # their masks come from Caffe's generator, drawn in Python


class _TrainProgram(_Program):
    """The net after its sources: source tops -> (loss tops, outputs, label flags), with the
    parameters live (``owners``: parameter name -> its blob) and bottoms that Caffe does not
    propagate to detached."""

    def __init__(self, net, input_ids, output_ids):
        super().__init__(net, input_ids, output_ids)
        self.keep = [[bool(need) for need in net.bottom_need_backward[li]]
                     for li, layer in enumerate(net.layers) if not layer.is_source]

    def _hold(self, name, blob):
        t = blob.tensor
        self.register_parameter(name, torch.nn.Parameter(t.detach(),
                                                         requires_grad=t.requires_grad))

    def _tracing(self):
        return loss_layers.label_flags()

    def _bottoms(self, step, args):
        return [a if k else a.detach() for a, k in zip(args, self.keep[step])]


class CompiledTrainStep:
    """``step()`` -> the loss, as ``net.forward_backward()`` returns it, with the same
    parameter diffs (within float tolerance); the graph is built on the first call."""

    def __init__(self, net, cache_dir=None):
        random = [layer.name for layer in net.layers if layer.type in RANDOM_LAYERS]
        if random:
            raise CompileError(f"layer {random[0]!r} draws Caffe's random numbers in every pass")
        self.net, self.cache_dir = net, cache_dir
        self.sources = [li for li, layer in enumerate(net.layers) if layer.is_source]
        self.input_ids = [t for li in self.sources for t in net.top_ids[li]]
        self.loss_ids = list(net.loss_weights)
        self.output_ids = list(dict.fromkeys(self.loss_ids + list(net._output_ids)))
        self.functions = {}             # input shapes -> (compiled graph, its parameters)
        self.storage = None             # the parameters' storage when the graphs were built
        self.builds = 0

    def _storage(self):
        return [(id(b.tensor), b.tensor.data_ptr()) for layer in self.net.layers
                for b in layer.blobs]

    def _build(self, args):
        program = _TrainProgram(self.net, self.input_ids, self.output_ids)
        try:
            with _inductor_settings(self.cache_dir, freezing=False):
                exported = torch.export.export(program, tuple(args), strict=False)
            module = exported.module()
            fn = torch.compile(module, dynamic=False)
        except Exception as e:          # a layer torch cannot trace, ...
            raise CompileError(f"{type(e).__name__}: {e}") from e
        params = [(program.owners[name], p) for name, p in module.named_parameters()
                  if name in program.owners]
        self.builds += 1
        return fn, params, False

    def __call__(self) -> float:
        net = self.net
        with torch.no_grad():
            for li in self.sources:     # Input keeps what was set; Data reads its records
                net._forward_layer(li, False)
        args = [net._blobs[t].tensor.detach() for t in self.input_ids]
        storage = self._storage()
        if storage != self.storage:     # parameters replaced: new graphs
            self.functions.clear()
            self.storage = storage
        key = tuple(tuple(a.shape) for a in args)
        if key not in self.functions:
            self.functions[key] = self._build(args)
        fn, params, ran = self.functions[key]
        for blob, p in params:          # diffs accumulate into the blobs' own buffers
            p.grad = blob.diff_tensor if blob.has_diff else None
        try:
            with _inductor_settings(self.cache_dir, freezing=False):
                outs = fn(*args)
        except Exception as e:
            if not ran:                 # compiling failed (no C++ compiler, ...)
                raise CompileError(f"{type(e).__name__}: {e}") from e
            self._explain(e)
        self.functions[key] = (fn, params, True)
        n = len(self.output_ids)
        if any(bool(flag) for flag in outs[n:]):
            self._explain(CaffeError("a label is out of range", path=net.source))
        outs = dict(zip(self.output_ids, outs[:n]))
        loss, total = 0.0, None
        for tid in self.loss_ids:
            w, top = net.loss_weights[tid], outs[tid].float()
            loss += float(w * top.detach().sum())
            total = top.sum() * w if total is None else total + top.sum() * w
        if total is not None and total.requires_grad:
            total.backward()
        for blob, p in params:
            if p.grad is not None and p.grad is not blob._d:
                blob.set_diff(p.grad)
            p.grad = None
        for tid, out in outs.items():
            net._blobs[tid].set_tensor(out.detach())
        return loss

    def _explain(self, error):
        """The eager forward's error for this batch (a bad label names its layer), else
        ``error``."""
        net = self.net
        with torch.no_grad(), state.autocast(net.device, net.fast):
            for li, layer in enumerate(net.layers):     # on the batch the sources gave
                if not layer.is_source:
                    net._forward_layer(li, False)
        raise error
