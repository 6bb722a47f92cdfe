"""Net: a Caffe network built from a prototxt and run with Caffe's semantics on torch.

Construction follows Caffe's Net::Init: the NetParameter is upgraded, filtered by the NetState
and given its Split layers (net_param.py); then each layer is created, its bottoms and tops
wired (in-place tops included), set up (parameters, top shapes, loss weights), and the net
decides which layers and bottoms need backward (loss reachability, ``propagate_down``,
``force_backward``) and shares parameters by ParamSpec name. pycaffe's call forms are read in
pycaffe_args.py; with the "caffe" backend, ``Net(...)`` is real pycaffe's (backend.py).

Forward runs each layer's torch code; backward is torch autograd seeded with the diffs Caffe would
use (the outputs' diffs: loss weights on losses, whatever the user wrote elsewhere; and the diffs
of tops no later layer writes). Each blob's diff after backward is the gradient with respect to
the value its producing layer wrote, which is what Caffe leaves there (in-place chains included);
a diff that Caffe's backward does not write keeps its value; parameter diffs accumulate in their
buffers until cleared, as in Caffe.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch

from . import backend, glog, protoio, state
from . import layers as _layers  # noqa: F401  (registers every layer type)
from .blob import Blob
from .errors import CaffeError
from .layer import Layer, create_layer
from .limits import shape_text
from .net_param import filter_net, insert_splits, load_net_param
from .proto import caffe_pb2
from .pycaffe_args import net_arguments
from .upgrade import upgrade_net

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class Net:
    """A Caffe net. ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)`` or
    ``Net(prototxt, phase, level=0, stages=[...], weights=...)`` as in pycaffe; ``device`` and
    ``fast`` pick the device and fast mode (default: the global mode)."""

    def __new__(cls, network=None, *args, **kwargs):
        if cls is Net and backend.backend() == "caffe":
            return backend.real_net(network, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, network, *args, phase=None, weights=None, level=0, stages=None,
                 device=None, fast=None):
        phase, weights = net_arguments(args, phase, weights)
        self.device = torch.device(device) if device is not None else state.device()
        self.fast = state.fast() if fast is None else bool(fast)
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = self.fast
            torch.backends.cuda.matmul.allow_tf32 = self.fast
        param, self.source = load_net_param(network)
        param.state.phase = phase
        param.state.level = level
        if stages is not None:
            del param.state.stage[:]
            param.state.stage.extend(stages)
        self.phase = phase
        self._build(param)
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------ construction
    def _build(self, param):
        """Caffe's Net::Init: prepare the NetParameter, then for each layer create it, wire its
        bottoms and tops, set it up (parameters, top shapes, loss weights) and note what needs
        backward; then decide backward for the whole net."""
        net = insert_splits(filter_net(param, self.source), self.source)
        self.name = net.name
        self.force_backward = net.force_backward
        self._param = net
        self.layers, self._layer_names = [], []
        self.bottom_ids, self.top_ids = [], []
        self._blobs: list[Blob] = []
        self._blob_names: list[str] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self.loss_weights: dict[int, float] = {}   # blob id -> loss weight
        self.input_ids: list[int] = []
        self.creates_top: list[list[bool]] = []     # False where the top is in-place
        self.param_specs = []                       # per layer: list of (lr_mult, decay_mult)
        self._param_owner: dict[str, tuple] = {}    # shared param name -> (layer, index)
        wiring = _Wiring()
        for li, lp in enumerate(net.layer):
            layer = self._create_layer(lp)
            b_ids, b_need, need_backward = self._wire_bottoms(lp, wiring)
            t_ids = self._wire_tops(lp, layer, wiring)
            self._set_up(lp, layer, b_ids, t_ids, wiring)
            need_backward |= self._set_up_params(li, lp, layer)
            self.bottom_need_backward.append(b_need)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for tid in t_ids:
                    wiring.blob_need_backward[tid] = True
        self._resolve_backward(wiring.blob_need_backward)
        self._output_ids = [wiring.blob_index[n] for n in sorted(wiring.available)]
        self._set_param_grads()
        if self.fast:
            self._to_fast_storage()
        for i in self._output_ids:
            glog.info("net.cpp:244", f"This network produces output {self._blob_names[i]}")
        glog.info("net.cpp:257", "Network initialization done.")

    def _create_layer(self, lp) -> Layer:
        """The layer object for ``lp``, its bottom and top counts checked."""
        if not lp.HasField("phase"):
            lp.phase = self.phase
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise CaffeError(f"propagate_down has {len(lp.propagate_down)} values for "
                             f"{len(lp.bottom)} bottoms", path=self.source,
                             field=f"layer {lp.name!r}")
        layer = create_layer(lp, self.phase, self.device, self.source)
        lo, hi = layer.bottoms
        if len(lp.bottom) < lo or (hi is not None and len(lp.bottom) > hi):
            raise layer.error(f"takes {_count_range(lo, hi)} bottom blob(s), "
                              f"got {len(lp.bottom)}")
        lo, hi = layer.tops
        if len(lp.top) < lo or (hi is not None and len(lp.top) > hi):
            raise layer.error(f"takes {_count_range(lo, hi)} top blob(s), got {len(lp.top)}")
        glog.info("net.cpp:86", f"Creating Layer {lp.name}")
        self.layers.append(layer)
        self._layer_names.append(lp.name)
        return layer

    def _wire_bottoms(self, lp, wiring):
        """Bottom blob ids, whether each needs backward (``propagate_down`` decides where
        given), and whether any of them makes the layer need backward."""
        need_backward = False
        b_ids, b_need = [], []
        for j, name in enumerate(lp.bottom):
            if name not in wiring.available:
                raise CaffeError(f"unknown bottom blob {name!r} (bottom index {j})",
                                 path=self.source, field=f"layer {lp.name!r}")
            bid = wiring.blob_index[name]
            glog.info("net.cpp:408", f"{lp.name} <- {name}")
            b_ids.append(bid)
            wiring.available.discard(name)
            nb = wiring.blob_need_backward[bid]
            if len(lp.propagate_down):
                nb = bool(lp.propagate_down[j])
            b_need.append(nb)
            need_backward |= wiring.blob_need_backward[bid]
        self.bottom_ids.append(b_ids)
        return b_ids, b_need, need_backward

    def _wire_tops(self, lp, layer, wiring) -> list[int]:
        """Top blob ids: a new blob per top, or the bottom's blob for an in-place top (and the
        layer computes in place where it can and its input's writer allows)."""
        t_ids, creates = [], []
        for j, name in enumerate(lp.top):
            if j < len(lp.bottom) and lp.bottom[j] == name:
                glog.info("net.cpp:369", f"{lp.name} -> {name} (in-place)")
                t_ids.append(wiring.blob_index[name])
                creates.append(False)
            elif name in wiring.blob_index:
                raise CaffeError(f"top blob {name!r} is produced by more than one layer",
                                 path=self.source, field=f"layer {lp.name!r}")
            else:
                glog.info("net.cpp:382", f"{lp.name} -> {name}")
                wiring.blob_index[name] = len(self._blobs)
                t_ids.append(len(self._blobs))
                self._blobs.append(Blob(device=self.device))
                self._blob_names.append(name)
                wiring.blob_need_backward.append(False)
                creates.append(True)
                if lp.type == "Input":
                    self.input_ids.append(wiring.blob_index[name])
            wiring.available.add(name)
        self.top_ids.append(t_ids)
        self.creates_top.append(creates)
        if layer.inplace_capable and creates and not any(creates):
            layer.inplace = all(wiring.writer[t].top_reusable for t in t_ids)
        for tid in t_ids:
            wiring.writer[tid] = layer
        return t_ids

    def _set_up(self, lp, layer, b_ids, t_ids, wiring):
        """Layer setup (its parameters), then the tops' shapes and loss weights (a loss
        weight is also the top's initial diff, as in Caffe)."""
        bottoms = [self._blobs[b].shaped for b in b_ids]
        layer.setup(bottoms)
        glog.info("net.cpp:124", f"Setting up {lp.name}")
        shapes = self._top_shapes(layer, bottoms)
        for tid, shape in zip(t_ids, shapes):     # refused before anything is allocated
            layer.check_shape(shape, f"top {self._blob_names[tid]!r}")
            if 0 in tuple(shape)[1:]:   # (Caffe would CHECK-fail in a later layer, or not run)
                raise layer.error(f"top {self._blob_names[tid]!r} would be "
                                  f"{shape_text(shape)}: only its first (batch) axis may be 0")
        for j, (tid, shape) in enumerate(zip(t_ids, shapes)):
            blob = self._blobs[tid]
            if layer.is_source:
                blob.set_tensor(torch.zeros(shape, device=self.device))
            else:
                blob.reshape(shape)
            w = lp.loss_weight[j] if j < len(lp.loss_weight) else (
                1.0 if layer.is_loss and j == 0 else 0.0)
            if w:
                self.loss_weights[tid] = float(w)
                blob.diff_tensor.fill_(w)
            glog.info("net.cpp:131", f"Top shape: {_shape_str(shape)}")
            if w:
                glog.info("net.cpp:134", f"    with loss weight {w:g}")
            wiring.memory += int(np.prod(shape)) if len(shape) else 1
        glog.info("net.cpp:139", f"Memory required for data: {4 * wiring.memory}")

    def _set_up_params(self, li, lp, layer) -> bool:
        """Each parameter's lr/decay multipliers and sharing (by ParamSpec name); returns
        whether a learning rate makes the layer need backward."""
        need_backward = False
        specs = []
        for pi in range(len(layer.blobs)):
            spec = lp.param[pi] if pi < len(lp.param) else caffe_pb2.ParamSpec()
            lr, decay = spec.lr_mult, spec.decay_mult
            if getattr(layer, "frozen_params", False):
                lr, decay = 0.0, 0.0
            need_backward |= spec.lr_mult != 0
            if spec.name:
                owner = self._param_owner.get(spec.name)
                if owner is None:
                    self._param_owner[spec.name] = (li, pi)
                else:
                    self._share_param(layer, pi, spec, owner)
            specs.append((lr, decay))
        self.param_specs.append(specs)
        return need_backward

    def _top_shapes(self, layer, bottoms):
        """Top shapes: a source layer knows them, most layers compute them from the bottoms'
        shapes; others run forward on meta tensors."""
        if layer.is_source:
            return [tuple(s) for s in layer.top_shapes()]
        shapes = layer.output_shapes([tuple(b.shape) for b in bottoms])
        if shapes is not None:
            return [tuple(s) for s in shapes]
        params = [b.tensor for b in layer.blobs]
        try:
            with torch.no_grad():
                tops = layer.forward([torch.empty(b.shape, device="meta") for b in bottoms],
                                     [torch.empty(p.shape, device="meta") for p in params])
        except (NotImplementedError, RuntimeError):
            try:    # an op without a meta kernel: run it on zeros instead
                with torch.no_grad():
                    tops = layer.forward([torch.zeros(b.shape) for b in bottoms],
                                         [p.detach().cpu() for p in params])
            except RuntimeError as e:   # torch refuses these shapes: say so in one line
                shapes = ", ".join("x".join(map(str, b.shape)) for b in bottoms)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise layer.error(f"cannot run on bottoms of shape {shapes}: {reason}") from None
        return [tuple(t.shape) for t in tops]

    def _share_param(self, layer, pi, spec, owner):
        oli, opi = owner
        owner_blob = self.layers[oli].blobs[opi]
        mine = layer.blobs[pi]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if mine.count != owner_blob.count:
                raise layer.error(f"cannot share param {spec.name!r} with layer "
                                  f"{self._layer_names[oli]!r}: {owner_blob.count} values vs "
                                  f"{mine.count}")
            if mine.shape != owner_blob.shape:
                raise layer.error(f"sharing param {spec.name!r} across different shapes "
                                  f"({owner_blob.shape} vs {mine.shape}) is not supported")
        elif mine.shape != owner_blob.shape:
            raise layer.error(f"cannot share param {spec.name!r} with layer "
                              f"{self._layer_names[oli]!r}: shape {owner_blob.shape} vs "
                              f"{mine.shape}")
        layer.blobs[pi] = owner_blob

    def _resolve_backward(self, blob_need_backward):
        """Caffe's second pass: only layers under a loss need backward; then force_backward."""
        under_loss, skip_backp = set(), set()
        for li in range(len(self.layers) - 1, -1, -1):
            names = [self._blob_names[t] for t in self.top_ids[li]]
            contributes = any(t in self.loss_weights or n in under_loss
                              for t, n in zip(self.top_ids[li], names))
            skip = all(n in skip_backp for n in names)
            if self.layer_need_backward[li] and skip:
                self.layer_need_backward[li] = False
                self.bottom_need_backward[li] = [False] * len(self.bottom_ids[li])
            if not contributes:
                self.layer_need_backward[li] = False
            for j, bid in enumerate(self.bottom_ids[li]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[li][j] = False
                if not self.bottom_need_backward[li][j]:
                    skip_backp.add(name)
        self.param_need_backward = [
            [lr != 0 for lr, _ in specs] for specs in self.param_specs_raw()]
        if self.force_backward:
            for li, layer in enumerate(self.layers):
                self.layer_need_backward[li] = True
                for j, bid in enumerate(self.bottom_ids[li]):
                    nb = self.bottom_need_backward[li][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[li][j] = nb
                    blob_need_backward[bid] = blob_need_backward[bid] or nb
                self.param_need_backward[li] = [True] * len(layer.blobs)
        for li, name in enumerate(self._layer_names):
            glog.info("net.cpp:200" if self.layer_need_backward[li] else "net.cpp:202",
                      f"{name} {'needs' if self.layer_need_backward[li] else 'does not need'}"
                      " backward computation.")
        self.blob_need_backward = blob_need_backward
        # the blobs whose diff Caffe's backward writes (bottoms it propagates to); every other
        # diff keeps what it holds, as Caffe leaves it
        self._backward_writes = {
            bid for li, ids in enumerate(self.bottom_ids) if self.layer_need_backward[li]
            for bid, need in zip(ids, self.bottom_need_backward[li]) if need}

    def param_specs_raw(self):
        """Per layer, the (lr_mult, decay_mult) as the prototxt says (before freezing)."""
        out = []
        for li, layer in enumerate(self.layers):
            lp = layer.param
            specs = []
            for pi in range(len(layer.blobs)):
                spec = lp.param[pi] if pi < len(lp.param) else caffe_pb2.ParamSpec()
                specs.append((spec.lr_mult, spec.decay_mult))
            out.append(specs)
        return out

    def _set_param_grads(self):
        for li, layer in enumerate(self.layers):
            frozen = getattr(layer, "frozen_params", False)
            for pi, blob in enumerate(layer.blobs):
                need = self.param_need_backward[li][pi] and not frozen
                t = blob.tensor
                if need and not t.requires_grad:
                    t.requires_grad_(True)

    def _to_fast_storage(self):
        """Fast mode: 4-D parameters in channels_last. In a net that never runs backward, the
        parameters that autocast would cast to bf16 at every forward (convolution and inner
        product weights and biases) are stored in bf16 once; their ``.data`` is then a float32
        copy (writes are copied back, as on a GPU) and the outputs are the same."""
        inference = not any(self.layer_need_backward)
        for layer in self.layers:
            for blob in layer.blobs:
                t = blob.tensor
                with torch.no_grad():
                    if t.dim() == 4:
                        t.data = t.data.contiguous(memory_format=torch.channels_last)
                    if inference and layer.bf16_params and t.dtype == torch.float32:
                        blob.set_tensor(t.detach().to(torch.bfloat16)
                                        .requires_grad_(t.requires_grad))

    # ------------------------------------------------------------ pycaffe surface
    @property
    def blobs(self) -> "collections.OrderedDict[str, Blob]":
        return collections.OrderedDict(zip(self._blob_names, self._blobs))

    @property
    def params(self) -> "collections.OrderedDict[str, list[Blob]]":
        return collections.OrderedDict(
            (name, layer.blobs) for name, layer in zip(self._layer_names, self.layers)
            if layer.blobs)

    @property
    def layer_dict(self):
        return collections.OrderedDict(zip(self._layer_names, self.layers))

    @property
    def inputs(self) -> list[str]:
        return [self._blob_names[i] for i in self.input_ids]

    @property
    def outputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._output_ids]

    @property
    def top_names(self):
        return collections.OrderedDict(
            (n, [self._blob_names[t] for t in ids]) for n, ids in zip(self._layer_names,
                                                                       self.top_ids))

    @property
    def bottom_names(self):
        return collections.OrderedDict(
            (n, [self._blob_names[b] for b in ids]) for n, ids in zip(self._layer_names,
                                                                       self.bottom_ids))

    @property
    def blob_loss_weights(self):
        return collections.OrderedDict(
            (n, self.loss_weights.get(i, 0.0)) for i, n in enumerate(self._blob_names))

    def _layer_index(self, name, what):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise CaffeError(f"no layer named {name!r}", path=self.source, field=what) from None

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set inputs from kwargs, run layers start..end, return {output: data}."""
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise CaffeError(f"no blob named {name!r}", path=self.source, field="forward")
            self.set_input(name, value)
        lo = 0 if start is None else self._layer_index(start, "forward start")
        hi = len(self.layers) - 1 if end is None else self._layer_index(end, "forward end")
        self.forward_range(lo, hi)
        names = list(blobs or [])
        names += [self._blob_names[t] for t in self.top_ids[hi]] if end is not None \
            else self.outputs
        return {n: self.blobs[n].data for n in dict.fromkeys(names)}

    def set_input_arrays(self, data, labels):
        """pycaffe's: give the net's first layer, a MemoryData layer, the arrays it serves
        (data N x C x H x W, labels N; N a multiple of its batch_size)."""
        if not self.layers or self.layers[0].type != "MemoryData":
            raise CaffeError("set_input_arrays needs a MemoryData layer as the net's first layer",
                             path=self.source, field="set_input_arrays")
        self.layers[0].reset(data, labels)

    def set_input(self, name, value):
        """Copy an array into a blob, reshaping the blob (and so the net) when needed."""
        blob = self.blobs[name]
        arr = np.asarray(value, dtype=np.float32)
        if arr.shape != blob.shape:
            blob.reshape(arr.shape)
        blob.data[...] = arr

    def forward_range(self, start, end) -> float:
        """Run layers start..end (indices); returns the loss Caffe's ForwardFromTo returns."""
        record = torch.is_grad_enabled() and any(self.layer_need_backward)
        self._graph_ready = record
        self._hooks_clear()
        for li in range(start, end + 1):   # what this pass recomputes: free the old values first
            if not self.layers[li].is_source:
                for tid, creates in zip(self.top_ids[li], self.creates_top[li]):
                    if creates:
                        self._blobs[tid].release()
        loss = 0.0
        loss_tensors = []
        with state.autocast(self.device, self.fast):
            for li in range(start, end + 1):
                loss_tensors += self._forward_layer(li, record)
        for tid, t in loss_tensors:
            loss += float(self.loss_weights[tid] * t.detach().float().sum())
        return loss

    def _forward_layer(self, li, record):
        layer = self.layers[li]
        need = record and self.layer_need_backward[li] and not layer.no_backward
        bottoms = []
        for j, bid in enumerate(self.bottom_ids[li]):
            t = self._blobs[bid].tensor
            if not need or not self.bottom_need_backward[li][j]:
                t = t.detach()
            elif self.fast and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            bottoms.append(t)
        params = [b.tensor for b in layer.blobs]
        if layer.is_source:
            tops = layer.forward(bottoms, params)   # None: the tops are set from outside
            for j, tid in enumerate(self.top_ids[li]):
                blob = self._blobs[tid]
                if tops is not None:
                    top = tops[j]
                    if blob.shape == tuple(top.shape) and not blob.tensor.requires_grad \
                            and not layer.hands_over_tops:
                        with torch.no_grad():
                            blob.tensor.copy_(top)
                    else:
                        blob.set_tensor(top.detach().to(self.device))
                if record and self.blob_need_backward[tid]:
                    leaf = blob.tensor
                    if not leaf.requires_grad:
                        leaf.requires_grad_(True)
                    self._watch(tid, leaf)
            return []
        if need:
            tops = layer.forward(bottoms, params)
        else:
            with torch.no_grad():
                tops = layer.forward(bottoms, params)
        if len(tops) != len(self.top_ids[li]):
            raise RuntimeError(f"layer {layer.name} returned {len(tops)} tops")
        if need and tops and tops[0].requires_grad and \
                type(layer).scratch_diff is not Layer.scratch_diff:
            self._watch_scratch(li, layer, bottoms, params, tops[0])
        losses = []
        for j, (tid, top) in enumerate(zip(self.top_ids[li], tops)):
            blob = self._blobs[tid]
            if self.creates_top[li][j] and need and top.requires_grad:
                self._watch(tid, top)
            blob.set_tensor(top)
            if tid in self.loss_weights:
                losses.append((tid, top))
        return losses

    # ------------------------------------------------------------ backward
    def _hooks_clear(self):
        for h in getattr(self, "_hook_handles", []):
            h.remove()
        self._hook_handles = []
        self._watched = []
        self._reached = set()

    def _watch(self, tid, tensor):
        """After backward, the blob's diff is the gradient with respect to this tensor."""
        blob = self._blobs[tid]

        def hook(grad, blob=blob):
            self._reached.add(tid)
            blob.take_diff(grad.detach())   # bf16 in fast mode: .diff shows it as float32
        self._hook_handles.append(tensor.register_hook(hook))
        self._watched.append(tid)

    def _watch_scratch(self, li, layer, bottoms, params, top):
        """Reproduce what Caffe's backward leaves in the diffs of bottoms it does not
        propagate to (a layer's scratch space), for layers that say so."""
        targets = [(j, bid) for j, bid in enumerate(self.bottom_ids[li])
                   if not self.bottom_need_backward[li][j] and bid not in self.top_ids[li]]
        if not targets:
            return
        data = [b.detach() for b in bottoms]
        pdata = [p.detach() for p in params]

        def hook(grad):
            for j, bid in targets:
                d = layer.scratch_diff(j, grad.detach(), data, pdata)
                if d is not None:
                    self._blobs[bid].take_diff(d.float())
        self._hook_handles.append(top.register_hook(hook))

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set output diffs from kwargs and backpropagate; returns {input and ``diffs`` blob:
        diff}. Parameter diffs accumulate (clear them with ``clear_param_diffs``)."""
        if end is not None:
            raise CaffeError("backward(end=...) is not supported; backward runs to the inputs",
                             path=self.source, field="backward")
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise CaffeError(f"no blob named {name!r}", path=self.source, field="backward")
            blob = self.blobs[name]
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != blob.shape:
                raise CaffeError(f"diff for {name!r} has shape {arr.shape}, blob is "
                                 f"{blob.shape}", path=self.source, field="backward")
            blob.diff[...] = arr
        if start is None:
            seeds = self._seeds()
        else:
            li = self._layer_index(start, "backward start")
            seeds = [(tid, li) for tid in self.top_ids[li]]
        self.backward_from(seeds)
        names = self.inputs + list(diffs or [])
        return {n: self.blobs[n].diff for n in dict.fromkeys(names)}

    def _seeds(self):
        """Where a whole backward starts, as (blob id, producing layer): Caffe runs every layer
        that needs backward on whatever its tops' diffs hold, so the seeds are the outputs and
        every top no later layer writes a diff into (a Split top an Accuracy reads), where that
        diff was ever written (else it is zeros and adds nothing)."""
        seeds = [(tid, self._producer(tid)) for tid in self._output_ids]
        for li, ids in enumerate(self.top_ids):
            if self.layer_need_backward[li]:
                seeds += [(tid, li) for tid in ids if tid not in self._backward_writes
                          and tid not in self._output_ids and self._blobs[tid].has_diff
                          and self._producer(tid) == li]
        return seeds

    def _producer(self, tid):
        for li in range(len(self.layers) - 1, -1, -1):
            if tid in self.top_ids[li]:
                return li
        return None

    def backward_from(self, seeds):
        """Autograd from (blob id, producing layer) seeds, each with its blob's current diff.
        A net where no layer needs backward has nothing to do (as in Caffe, whose Backward then
        runs no layer and leaves every diff as it is)."""
        if not any(self.layer_need_backward):
            return
        if not getattr(self, "_graph_ready", False):
            raise CaffeError("backward needs a forward first (and one forward per backward)",
                             path=self.source, field="backward")
        tensors, grads = [], []
        for tid, li in seeds:
            if li is None or not self.layer_need_backward[li]:
                continue
            t = self._blobs[tid].tensor
            if t.requires_grad:
                tensors.append(t)
                grads.append(self._blobs[tid].diff_tensor.to(t.dtype))
        params, seen = [], set()
        for layer in self.layers:
            for blob in layer.blobs:
                t = blob.tensor
                if t.requires_grad and t.is_leaf and id(t) not in seen:
                    seen.add(id(t))
                    # parameter diffs accumulate, as in Caffe, into the diff's own buffer
                    # (autograd adds in place); a cleared diff is left out, and autograd's
                    # gradient becomes the diff without an addition
                    t.grad = blob.diff_tensor if blob.has_diff else None
                    params.append((blob, t))
        self._graph_ready = False
        rewritten = [tid for tid in self._watched if tid in self._backward_writes]
        for tid in rewritten:   # diffs no array shows are replaced: drop them now so that old
            if not self._blobs[tid].diff_in_view:   # and new are never held together
                self._blobs[tid].set_diff(None)
        self._reached = set()
        if tensors:
            torch.autograd.backward(tensors, grads)
        for tid in rewritten:   # written by Caffe's backward but not reached from any seed: zero
            if tid not in self._reached:
                self._blobs[tid].clear_diff()
        for blob, t in params:
            if t.grad is not None and t.grad is not blob._d:
                blob.set_diff(t.grad)
        for tid in self.input_ids:   # input leaves: the hook wrote the diff; do not accumulate
            t = self._blobs[tid].tensor
            if t.is_leaf:
                t.grad = None

    @property
    def learnable_params(self) -> list:
        """What a solver updates, in Caffe's order: one LearnableParam per distinct blob (shared
        blobs once, under their owner), with its lr_mult and decay_mult."""
        out, seen = [], {}
        for li, layer in enumerate(self.layers):
            for pi, blob in enumerate(layer.blobs):
                lr, decay = self.param_specs[li][pi]
                key = id(blob)
                if key in seen:
                    continue
                seen[key] = True
                out.append(LearnableParam(blob, lr, decay, self._layer_names[li], pi))
        return out

    def forward_backward(self, start: int = 0) -> float:
        """One forward and backward pass (parameter diffs accumulate); returns the loss.
        ``start``: the first layer to run (a later one when the source layers before it have
        already read this pass's batch)."""
        loss = self.forward_range(start, len(self.layers) - 1)
        if any(self.layer_need_backward):
            self.backward_from(self._seeds())
        return loss

    def clear_param_diffs(self):
        for layer in self.layers:
            for blob in layer.blobs:
                blob.clear_diff()

    # ------------------------------------------------------------ weights
    def copy_from(self, path):
        """Load weights by layer name (Caffe's CopyTrainedLayersFrom): layers missing from the
        net are skipped, a layer missing from the file keeps its values, a shape mismatch is an
        error naming the layer and both shapes."""
        src = protoio.read_binary(path, caffe_pb2.NetParameter)
        upgrade_net(src, str(path))
        if not len(src.layer):
            raise CaffeError("holds no layers: not a .caffemodel", path=path)
        by_name = self.layer_dict
        copied = 0
        for slp in src.layer:
            layer = by_name.get(slp.name)
            if layer is None or not len(slp.blobs):
                if layer is None:
                    glog.info("net.cpp:758", f"Ignoring source layer {slp.name}")
                continue
            if len(slp.blobs) != len(layer.blobs):
                raise CaffeError(f"layer {slp.name!r} has {len(slp.blobs)} blobs in the file "
                                 f"but {len(layer.blobs)} in the net", path=path)
            for i, (sb, blob) in enumerate(zip(slp.blobs, layer.blobs)):
                if not protoio.legacy_shape_matches(blob.shape, sb):
                    raise CaffeError(
                        f"cannot copy param {i} of layer {slp.name!r}: shape mismatch, "
                        f"file has {protoio.blob_shape(sb)}, net expects {blob.shape}",
                        path=path)
                try:
                    arr = protoio.blobproto_to_array(sb).reshape(blob.shape)
                except ValueError as e:     # values short of (or beyond) the shape's count
                    raise CaffeError(f"param {i} of layer {slp.name!r}: {e}",
                                     path=path) from None
                with torch.no_grad():
                    blob.tensor.copy_(torch.from_numpy(arr))
            copied += 1
        return copied

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net with its layers (no blobs), as Caffe's ToProto writes it."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            out.layer.add().CopyFrom(layer.param)
        for lp in out.layer:
            del lp.blobs[:]
        return out

    def save(self, path):
        """Write a .caffemodel (binary NetParameter) that real Caffe loads."""
        blobs = [[b.tensor.detach().float().cpu().numpy() for b in layer.blobs]
                 for layer in self.layers]
        protoio.atomic_write_bytes(path, protoio.encode_net(self.to_proto(), blobs))

    def reshape(self):
        """Recompute every top's shape from the inputs' shapes (after ``blob.reshape``)."""
        for li, layer in enumerate(self.layers):
            if layer.is_source:
                continue
            bottoms = [self._blobs[b].shaped for b in self.bottom_ids[li]]
            for tid, shape in zip(self.top_ids[li], self._top_shapes(layer, bottoms)):
                layer.check_shape(shape, f"top {self._blob_names[tid]!r}")
                self._blobs[tid].reshape(shape)

    def share_with(self, other: "Net"):
        """Use ``other``'s parameter blobs (by layer name), as Caffe's ShareTrainedLayersWith."""
        theirs = other.layer_dict
        for name, layer in zip(self._layer_names, self.layers):
            src = theirs.get(name)
            if src is None or not layer.blobs:
                continue
            if len(src.blobs) != len(layer.blobs):
                raise CaffeError(f"layer {name!r}: {len(src.blobs)} vs {len(layer.blobs)} blobs",
                                 path=self.source)
            for i, (mine, their) in enumerate(zip(layer.blobs, src.blobs)):
                if mine.shape != their.shape:
                    raise CaffeError(f"layer {name!r} param {i}: shape {their.shape} vs "
                                     f"{mine.shape}", path=self.source)
                layer.blobs[i] = their

    def forward_all(self, blobs=None, **kwargs):
        """Run the net over arrays longer than its batch, batch by batch; pycaffe's helper."""
        outs = collections.defaultdict(list)
        names = list(kwargs)
        n = len(next(iter(kwargs.values()))) if kwargs else 0
        batch = self.blobs[names[0]].shape[0] if names else 1
        for i in range(0, n, batch):
            chunk = {k: np.asarray(v[i:i + batch], dtype=np.float32) for k, v in kwargs.items()}
            real = len(next(iter(chunk.values())))
            if real < batch:
                chunk = {k: np.concatenate([v, np.zeros((batch - real,) + v.shape[1:],
                                                        np.float32)]) for k, v in chunk.items()}
            res = self.forward(blobs=blobs, **chunk)
            for k, v in res.items():
                outs[k].extend(np.array(v[:real], copy=True))
        return {k: np.asarray(v) for k, v in outs.items()}


@dataclasses.dataclass
class _Wiring:
    """What building a net keeps track of from one layer to the next."""
    blob_index: dict = dataclasses.field(default_factory=dict)      # blob name -> id
    available: set = dataclasses.field(default_factory=set)         # names not yet consumed
    blob_need_backward: list = dataclasses.field(default_factory=list)
    writer: dict = dataclasses.field(default_factory=dict)          # blob id -> last writer
    memory: int = 0                                                 # values in tops so far


@dataclasses.dataclass
class LearnableParam:
    blob: Blob
    lr_mult: float
    decay_mult: float
    layer: str
    index: int


def _count_range(lo, hi):
    if hi is None:
        return f"at least {lo}"
    return str(lo) if lo == hi else f"{lo} to {hi}"


def _shape_str(shape):
    n = int(np.prod(shape)) if len(shape) else 1
    return f"{' '.join(map(str, shape))} ({n})"
