"""Per-layer forward and backward times of a net, as ``caffe time`` reports them.

Each layer runs on its own: its bottoms are detached copies of what the layer before produced, so
its forward builds only its own autograd graph, and its backward (``torch.autograd.grad`` from
its tops to its bottoms and parameters) is timed alone, in reverse layer order. On CUDA the
device is synchronized around every timed call.
"""
from __future__ import annotations

import time

import torch

from . import glog, state


def time_net(net, iterations: int) -> dict:
    """Run ``iterations`` forward/backward passes layer by layer; log Caffe's benchmark lines and
    return {"layers": [(name, forward ms, backward ms)], "forward_ms", "backward_ms",
    "forward_backward_ms", "total_ms"} (averages per iteration, except total)."""
    sync = torch.cuda.synchronize if net.device.type == "cuda" else (lambda: None)
    n = len(net.layers)
    names = list(net.layer_dict)
    forward_s, backward_s = [0.0] * n, [0.0] * n
    total_forward = total_backward = 0.0
    glog.info("caffe.cpp:352", "*** Benchmark begins ***")
    glog.info("caffe.cpp:353", f"Testing for {iterations} iterations.")
    total_start = time.perf_counter()
    for it in range(iterations):
        iter_start = time.perf_counter()
        graphs = _forward_layers(net, forward_s, sync)
        total_forward += time.perf_counter() - iter_start
        backward_start = time.perf_counter()
        _backward_layers(graphs, backward_s, sync)
        total_backward += time.perf_counter() - backward_start
        glog.info("caffe.cpp:381", f"Iteration: {it + 1} forward-backward time: "
                  f"{_ms(time.perf_counter() - iter_start)} ms.")
    total = time.perf_counter() - total_start
    k = max(iterations, 1)
    glog.info("caffe.cpp:384", "Average time per layer: ")
    layers = []
    for name, f, b in zip(names, forward_s, backward_s):
        glog.info("caffe.cpp:387", f"{name:>10}\tforward: {_ms(f / k)} ms.")
        glog.info("caffe.cpp:390", f"{name:>10}\tbackward: {_ms(b / k)} ms.")
        layers.append((name, 1000 * f / k, 1000 * b / k))
    glog.info("caffe.cpp:395", f"Average Forward pass: {_ms(total_forward / k)} ms.")
    glog.info("caffe.cpp:397", f"Average Backward pass: {_ms(total_backward / k)} ms.")
    glog.info("caffe.cpp:399", f"Average Forward-Backward: {_ms(total / k)} ms.")
    glog.info("caffe.cpp:401", f"Total Time: {_ms(total)} ms.")
    glog.info("caffe.cpp:402", "*** Benchmark ends ***")
    return {"layers": layers, "forward_ms": 1000 * total_forward / k,
            "backward_ms": 1000 * total_backward / k, "forward_backward_ms": 1000 * total / k,
            "total_ms": 1000 * total}


def _ms(seconds: float) -> str:
    return format(1000 * seconds, "g")


def _forward_layers(net, forward_s, sync):
    values = {}                       # blob id -> the tensor its latest producer wrote
    graphs = []
    for li, layer in enumerate(net.layers):
        grad = net.layer_need_backward[li] and not layer.no_backward
        bottoms = []
        for j, bid in enumerate(net.bottom_ids[li]):
            t = values.get(bid)
            t = (net._blobs[bid].tensor if t is None else t).detach()
            if grad and net.bottom_need_backward[li][j] and t.is_floating_point():
                t.requires_grad_(True)
            bottoms.append(t)
        params = [b.tensor for b in layer.blobs]
        sync()
        start = time.perf_counter()
        with torch.set_grad_enabled(grad), state.autocast(net.device, net.fast):
            tops = layer.forward(bottoms, params)
        sync()
        forward_s[li] += time.perf_counter() - start
        if tops is None:              # Input: its blobs hold what was set from outside
            tops = [net._blobs[t].tensor for t in net.top_ids[li]]
        for tid, top in zip(net.top_ids[li], tops):
            values[tid] = top
        graphs.append((li, tops, bottoms, params) if grad else None)
    return graphs


def _backward_layers(graphs, backward_s, sync):
    for entry in reversed(graphs):
        if entry is None:
            continue
        li, tops, bottoms, params = entry
        outs = [t for t in tops if t.requires_grad]
        ins = [t for t in bottoms + params if t.requires_grad]
        if not outs or not ins:
            continue
        grads = [torch.ones_like(t) for t in outs]
        sync()
        start = time.perf_counter()
        torch.autograd.grad(outs, ins, grads, allow_unused=True)
        sync()
        backward_s[li] += time.perf_counter() - start
