"""Compiled inference: a TEST net's forward as one graph, compiled by torch inductor.

    from models.caffe import compiled
    out = compiled.forward(net, ["prob", "fc7"], mode="auto", work_images=n,
                           cache_dir=data_dir / "cache" / "inductor", data=batch)
    # {"prob": array, "fc7": array}, also in net.blobs[...]; eager when mode says so
    fwd = compiled.compiled_forward(net, ["fc7"], mode="on")   # the callable itself (or None)

Callers (``runtime.compile``, the cache under ``<data_dir>/cache/inductor``): the Scorer (score,
crop, t-SNE, serve), ``caffe test`` (models/caffe/tool.py: a net's Data layers run eagerly, the
rest compiled) and the face detector (models/faces/detect.py).

How: the net's layers (after its source layers: Input, Data...) become one pure function of the
source tops and the parameters (a small torch.nn.Module whose forward calls each layer's own
``forward``, in the net's order, in-place tops included). torch.export traces it without running
Python bytecode analysis (the layers read their protobuf settings in plain Python), and
torch.compile (inductor) compiles the traced graph with frozen parameters
(``torch._inductor.config.freezing``): weights are folded in as constants and convolutions use
prepacked (oneDNN) weights, which is where the speed over the eager net comes from on a CPU.

Inductor's caches live under ``cache_dir`` (the data dir's ``cache/inductor``): the generated C++
kernels and their compiled shared objects, keyed by their source, and the FX graph cache. A
second process building the same net compiles no kernel (VGG16 224x224: 19-35 s cold, 5-16 s
cached on the shared 2-core CPU, the rest being tracing and lowering). Torch leaves graphs
holding prepacked oneDNN weights out of its FX graph cache ("mkldnn tensors unpickleable"), so
for such nets the kernels are what is reused.

What the caller gets back are the blobs it asked for (and the net's outputs); they are also put
into ``net.blobs`` so that ``net.blobs[name].data`` reads them as after an eager forward. Other
intermediate blobs are not written (they keep whatever an earlier eager forward left); asking
for another blob builds another compiled function. The compiled forward records no autograd
graph: it is for nets that will not run backward (the caller decides; Scorer's are such).

When it runs (``mode``): "off" never; "on" for every net it can compile; "auto" when the work
pays for the compile: images x forward FLOPs per image >= AUTO_MIN_FLOPS (see there), or
AUTO_MIN_FLOPS_FAST for a fast-mode net (bf16: the graph runs under the same autocast as the
eager net and gains less). Nets it cannot compile run eagerly: TRAIN phase (random draws, running
statistics), real pycaffe nets, or a trace or compile that fails (logged once). A net whose
parameters are replaced or written through torch after compiling is compiled again; writes through a parameter's numpy ``.data`` view are not seen:
call ``invalidate(net)`` after those.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import weakref

import numpy as np
import torch

from . import state
from .errors import CaffeError
from .proto import caffe_pb2

log = logging.getLogger("models.caffe.compiled")

MODES = ("auto", "on", "off")

# "auto" compiles when images x FLOPs per image (forward_flops) reaches AUTO_MIN_FLOPS: the work
# at which a cold compile has paid for itself. Measured on the shared 2-core CPU (load 5-7,
# benchmarks/bench_runtime.py and the small selfie net at batch 16), fp32:
#   VGG16 224x224 (30.9 GFLOP/image), batch 2: at load 6-7, compile 35 s cold, 16 s cached,
#     0.98 -> 1.68 img/s: pays after ~80 images cold (2.5e12 FLOPs), ~35 cached (1.1e12); at
#     load 3-4, 19 s cold, 5.4 s cached, 2.35 -> 4.17 img/s: ~100 images cold, ~30 cached;
#   selfie_small 64x64 (0.08 GFLOP/image): 21 s cold, 8 s cached; saves ~1.8 ms per image:
#     pays after ~12000 images cold (1e12 FLOPs), ~4500 cached.
# Compile time grows with the number of layers, not with FLOPs, so one FLOP threshold is a
# compromise: 2e12 is ~65 VGG16 images or ~25000 small-net images.
AUTO_MIN_FLOPS = 2e12
# Fast mode (bf16): VGG16 224x224 batch 2 at load 2.3, 21.0 img/s eager, 23.4 compiled (same
# outputs), compile 21.5 s cold: ~5 ms saved per image, pays after ~4300 images (1.3e14 FLOPs).
AUTO_MIN_FLOPS_FAST = 1.3e14

_failed: "weakref.WeakSet" = weakref.WeakSet()   # nets that did not compile


def forward_flops(net) -> float:
    """FLOPs (2 x multiply-adds) of one image's forward through the net's Convolution,
    Deconvolution and InnerProduct layers (the rest is small next to them), from the blob shapes
    (each divided by its own batch: after a compiled forward only the kept blobs are resized)."""
    total = 0.0
    for li, layer in enumerate(net.layers):
        if layer.type not in ("Convolution", "Deconvolution", "InnerProduct") or not layer.blobs:
            continue
        weights = int(np.prod(layer.blobs[0].shape))
        top = net._blobs[net.top_ids[li][0]].shape
        if layer.type == "InnerProduct":
            axis = layer.param.inner_product_param.axis % max(len(top), 1)
            shape = top[:axis]
        elif layer.type == "Convolution":
            shape = top[:1] + top[2:]
        else:   # a transposed convolution: one weight pass per input position
            bottom = net._blobs[net.bottom_ids[li][0]].shape
            shape = bottom[:1] + bottom[2:]
        if shape and shape[0]:
            total += 2.0 * int(np.prod(shape[1:])) * weights
    return total


def should_compile(net, mode: str, work_images: int | None = None) -> bool:
    """Whether ``mode`` asks for a compiled forward of this net for ``work_images`` images."""
    if mode not in MODES:
        raise ValueError(f"runtime.compile must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not compilable(net):
        return False
    if mode == "on":
        return True
    least = AUTO_MIN_FLOPS_FAST if net.fast else AUTO_MIN_FLOPS
    return work_images is not None and work_images * forward_flops(net) >= least


def compilable(net) -> bool:
    """TEST phase, a net of this runtime (not real pycaffe); fp32 or fast mode."""
    return hasattr(net, "_blobs") and net.phase == caffe_pb2.TEST


def invalidate(net):
    """Drop the compiled functions of ``net`` (after writing its weights in place)."""
    vars(net).pop(_ATTR, None)


_ATTR = "_compiled_forwards"     # on a Net: {(outputs, cache_dir, pad_batch): CompiledForward}


class CompileError(RuntimeError):
    """Tracing or compiling the net failed (the eager net still works)."""


class _Program(torch.nn.Module):
    """The net after its source layers, as one function of the source tops (parameters held
    as frozen buffers; compiled_train's subclass holds them as live parameters)."""

    def __init__(self, net, input_ids, output_ids):
        super().__init__()
        self.input_ids, self.output_ids = list(input_ids), list(output_ids)
        self.device, self.fast = net.device, net.fast
        slots = {}
        self.owners = {}                # parameter name -> its blob (a shared blob is one)
        self.plan = []
        for li, layer in enumerate(net.layers):
            if layer.is_source:
                continue
            names = []
            for blob in layer.blobs:
                name = slots.get(id(blob))
                if name is None:
                    name = slots[id(blob)] = f"p{len(slots)}"
                    self.owners[name] = blob
                    self._hold(name, blob)
                names.append(name)
            self.plan.append((layer, net.bottom_ids[li], net.top_ids[li], names))

    def _hold(self, name, blob):
        self.register_buffer(name, blob.tensor.detach(), persistent=False)

    def _tracing(self):
        """A context whose value is a list of extra outputs gathered while tracing."""
        return contextlib.nullcontext(())

    def _bottoms(self, step, args):
        return args

    def forward(self, *inputs):
        values = dict(zip(self.input_ids, inputs))
        with self._tracing() as extra, state.autocast(self.device, self.fast):
            for step, (layer, bottoms, tops, names) in enumerate(self.plan):   # fast: bf16
                out = layer.forward(self._bottoms(step, [values[b] for b in bottoms]),
                                    [getattr(self, n) for n in names])
                values.update(zip(tops, out))
            return tuple(values[t] for t in self.output_ids) + tuple(extra)


def _param_key(net):
    """What the frozen constants were taken from: each parameter tensor and its version."""
    return tuple((id(b.tensor), b.tensor._version) for layer in net.layers for b in layer.blobs)


@contextlib.contextmanager
def _inductor_settings(cache_dir, freezing=True):
    """Frozen parameters (``freezing``: for inference), and inductor's on-disk caches under
    ``cache_dir`` (when given)."""
    import torch._inductor.config as iconf
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir is not None:
        path = pathlib.Path(cache_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    try:
        with iconf.patch(freezing=freezing, fx_graph_cache=True):
            yield
    finally:
        if cache_dir is not None:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


class CompiledForward:
    """``fwd(**inputs)`` -> {blob: array} for the blobs asked for plus the net's outputs, as
    ``net.forward(blobs=...)`` gives them, and the same values in ``net.blobs``. One compiled
    function per input shape; with ``pad_batch`` (rows independent, as in a deploy net) a batch
    smaller than one already compiled is padded with zeros to it and the padding dropped."""

    def __init__(self, net, outputs=(), cache_dir=None, pad_batch=False):
        self.net = net
        self.cache_dir = cache_dir
        self.pad_batch = pad_batch
        index = {n: i for i, n in enumerate(net._blob_names)}
        missing = [n for n in outputs if n not in index]
        if missing:
            raise KeyError(f"no blob named {missing[0]!r}")
        self.names = list(dict.fromkeys(list(outputs) + net.outputs))
        self.output_ids = [index[n] for n in self.names]
        self.sources = [li for li, layer in enumerate(net.layers) if layer.is_source]
        self.input_ids = [t for li in self.sources for t in net.top_ids[li]]
        self.functions = {}     # input shapes -> compiled function
        self.params = None      # _param_key of the frozen parameters
        self.builds = 0         # how many functions were compiled (each shape, each rebuild)

    def _compile(self, args):
        program = _Program(self.net, self.input_ids, self.output_ids).eval()
        with _inductor_settings(self.cache_dir):
            exported = torch.export.export(program, tuple(args), strict=False)
            fn = torch.compile(exported.module(), fullgraph=True, dynamic=False)
            outs = fn(*args)    # compiles here, inside the settings
        self.builds += 1
        return fn, outs

    def _padded(self, args):
        """(args padded to a compiled batch, real batch) or (args, None)."""
        if not self.pad_batch or not args:
            return args, None
        shapes = [tuple(a.shape) for a in args]
        for key in self.functions:
            if all(s[1:] == k[1:] and s[0] < k[0] for s, k in zip(shapes, key)) and \
                    len({s[0] for s in shapes}) == 1:
                return [torch.cat([a, a.new_zeros((k[0] - a.shape[0],) + tuple(a.shape[1:]))])
                        for a, k in zip(args, key)], shapes[0][0]
        return args, None

    def __call__(self, **inputs) -> dict:
        net = self.net
        for name, value in inputs.items():
            if name not in net.blobs:
                raise CaffeError(f"no blob named {name!r}", path=net.source, field="forward")
            net.set_input(name, value)
        with torch.no_grad():
            for li in self.sources:          # Input keeps what was set; Data reads its records
                net._forward_layer(li, False)
            args = [net._blobs[t].tensor.detach() for t in self.input_ids]
            if _param_key(net) != self.params:   # new or rewritten weights: new constants
                self.functions.clear()
                self.params = _param_key(net)
            args, real = self._padded(args)
            key = tuple(tuple(a.shape) for a in args)
            fn = self.functions.get(key)
            if fn is None:
                try:
                    fn, outs = self._compile(args)
                except Exception as e:   # a layer torch cannot trace, no C++ compiler, ...
                    raise CompileError(f"{type(e).__name__}: {e}") from e
                self.functions[key] = fn
            else:   # (a guard that fails would recompile: with the same settings)
                with _inductor_settings(self.cache_dir):
                    outs = fn(*args)
        result = {}
        for name, tid, t in zip(self.names, self.output_ids, outs):
            blob = net._blobs[tid]
            blob.set_tensor(t[:real] if real is not None else t)
            result[name] = blob.data
        return result


def compiled_forward(net, outputs=(), mode="on", work_images=None, cache_dir=None,
                     pad_batch=False):
    """The CompiledForward of ``net`` for ``outputs`` when ``mode`` (auto, on, off) and the net
    say to compile, else None (run ``net.forward``). Built once per net and outputs, and reused;
    a net it failed to compile before gives None."""
    if not should_compile(net, mode, work_images) or net in _failed:
        return None
    key = (tuple(dict.fromkeys(outputs)), str(cache_dir), bool(pad_batch))
    programs = vars(net).setdefault(_ATTR, {})
    if key not in programs:
        programs[key] = CompiledForward(net, outputs, cache_dir, pad_batch)
    return programs[key]


def forward(net, outputs=(), mode="off", work_images=None, cache_dir=None, pad_batch=False,
            **inputs) -> dict:
    """``net.forward(blobs=outputs, **inputs)``, compiled when ``mode`` says so; a net that
    fails to compile is logged once and runs eagerly from then on."""
    fwd = compiled_forward(net, outputs, mode, work_images, cache_dir, pad_batch)
    if fwd is not None:
        try:
            return fwd(**inputs)
        except CompileError as e:
            log.warning("compiling %s failed (%s); running it eagerly", net.source,
                        str(e).splitlines()[0])
            _failed.add(net)
            invalidate(net)
    return net.forward(blobs=list(outputs), **inputs)
