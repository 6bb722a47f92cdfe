"""VGG16 on the CPU: the Caffe runtime (models.caffe) against the same network written directly
in torch.nn, in exact fp32 mode and in fast mode (bf16 autocast + channels_last).

    nice -n -5 python benchmarks/bench_runtime.py            # 224x224, batch 2, 2 threads

What is measured, per mode:
- forward img/s: the deploy net as a user scores with it (no force_backward, so no graph), and
  torch.nn under torch.no_grad();
- forward+backward img/s: a training step on the deploy net with ``force_backward`` (what
  ``caffe time`` times): clear parameter diffs, forward, backward with a fixed top diff; torch.nn:
  zero_grad, forward with an input that requires grad, backward with the same top diff;
- peak memory: the maximum resident set size of a fresh process that builds one implementation
  and runs forward and forward+backward (one subprocess per implementation and mode);
- compiled (fp32 forward): the same deploy net through models.caffe.compiled (one inductor graph,
  frozen weights) as a third column of the forward timing, and its compile time: a fresh process
  building it with an empty cache folder (cold), then a second fresh process with that folder
  (cached). --no-compiled skips both.

Timings interleave the two implementations pass by pass (alternating who goes first) in one
process, so that load from other processes hits both alike: 3 x rounds forward passes and rounds
forward+backward passes each; the figure is the median pass (the best is printed too). Targets (issue 3): the runtime
>= 0.95x direct torch in each mode, peak memory <= 1.1x; against real Caffe's 2.4 img/s forward and
0.8 img/s forward+backward on this CPU: >= 1.5x / 1.2x in fp32, >= 5x / 3x in fast mode.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROTOTXT = ROOT / "prototxt" / "zoo" / "VGG_ILSVRC_16_layers_deploy.prototxt"
CAFFE_FWD, CAFFE_FWD_BWD = 2.4, 0.8      # real Caffe, this CPU, batch 2, 2 threads (issue 3)
TARGETS = {"fp32": (1.5, 1.2), "fast": (5.0, 3.0)}


# ---------------------------------------------------------------- the two implementations

def torch_vgg16(size=224):
    """VGG16 (configuration D) written directly in torch.nn, as one would by hand."""
    import torch.nn as nn

    layers, c = [], 3
    for n, width in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]:
        for _ in range(n):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(
        *layers, nn.Flatten(),
        nn.Linear(512 * math.ceil(size / 32) ** 2, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 1000), nn.Softmax(dim=1)).eval()


def caffe_net(fast: bool, force_backward: bool, batch: int, size: int):
    import models.caffe as caffe
    from models.caffe import protoio
    from models.caffe.proto import caffe_pb2

    param = protoio.read_prototxt(PROTOTXT, caffe_pb2.NetParameter)
    param.force_backward = force_backward
    del param.input_dim[:]
    param.input_dim.extend([batch, 3, size, size])
    return caffe.Net(param, caffe.TEST, fast=fast)


def fill_weights(net, seed=0):
    """He-style random weights (so activations neither vanish nor blow up), drawn in place so
    that no temporary inflates the peak memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            for i, blob in enumerate(layer.blobs):
                std = (2.0 / (blob.count // blob.shape[0])) ** 0.5 if i == 0 else 0.01
                blob.tensor.normal_(0.0, std, generator=g)


def copy_params(src, dst):
    """One caffe net's parameters into another's (dtypes and layouts may differ)."""
    import torch

    with torch.no_grad():
        for a, b in zip(src.layers, dst.layers):
            for pa, pb in zip(a.blobs, b.blobs):
                pb.tensor.copy_(pa.tensor)


def copy_weights(net, model):
    """The caffe net's weights into the torch.nn model (layer order is the same)."""
    import torch

    mods = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    params = [layer.blobs for layer in net.layers if layer.blobs]
    assert len(mods) == len(params), (len(mods), len(params))
    with torch.no_grad():
        for m, (w, b) in zip(mods, params):
            m.weight.copy_(w.tensor.reshape(m.weight.shape))
            m.bias.copy_(b.tensor)


class CaffeRunner:
    """The runtime: a deploy net for forward, the same with force_backward for training."""

    def __init__(self, fast, batch, size, x, top_diff, tasks=("fwd", "fwd_bwd")):
        self.x, self.top_diff = x, top_diff
        self.train = self.infer = None
        if "fwd_bwd" in tasks:
            self.train = caffe_net(fast, True, batch, size)
            fill_weights(self.train)
        if "fwd" in tasks:
            self.infer = caffe_net(fast, False, batch, size)
            if self.train is not None:
                copy_params(self.train, self.infer)
            else:
                fill_weights(self.infer)

    def forward(self):
        return self.infer.forward(data=self.x)["prob"]

    def forward_backward(self):
        net = self.train
        net.clear_param_diffs()
        net.blobs["data"].data[...] = self.x
        net.forward()
        net.blobs["prob"].diff[...] = self.top_diff
        net.backward()
        return net.blobs["data"].diff


class CompiledRunner:
    """The runtime's deploy net through models.caffe.compiled (inference only)."""

    def __init__(self, source, batch, size, x, cache_dir):
        from models.caffe import compiled

        self.net = caffe_net(False, False, batch, size)
        copy_params(source, self.net)
        self.x = x
        self.fwd = compiled.CompiledForward(self.net, ["prob"], cache_dir)
        t0 = time.perf_counter()
        self.forward()
        self.build_s = time.perf_counter() - t0

    def forward(self):
        return self.fwd(data=self.x)["prob"]


class TorchRunner:
    """torch.nn written by hand. Fast mode: channels_last and bf16 autocast for training; for
    inference the model is also converted to bf16 once (what the runtime's inference nets do)."""

    def __init__(self, fast, x, top_diff, tasks=("fwd", "fwd_bwd"), caffe_source=None):
        import torch

        self.torch, self.fast = torch, fast
        model = torch_vgg16(x.shape[-1])
        if caffe_source is not None:
            copy_weights(caffe_source, model)
        if fast:
            model = model.to(memory_format=torch.channels_last)
        self.train = model if "fwd_bwd" in tasks else None
        self.infer = None
        if "fwd" in tasks:
            self.infer = model
            if fast:
                self.infer = copy.deepcopy(model) if self.train is not None else model
                self.infer = self.infer.to(torch.bfloat16)
        self.x = torch.from_numpy(x)
        self.top_diff = torch.from_numpy(top_diff)

    def _autocast(self):
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.fast)

    def _input(self):
        x = self.x.clone()
        return x.contiguous(memory_format=self.torch.channels_last) if self.fast else x

    def forward(self):
        with self.torch.no_grad(), self._autocast():
            return self.infer(self._input()).float().numpy()

    def forward_backward(self):
        self.train.zero_grad(set_to_none=True)
        x = self._input().requires_grad_(True)
        with self._autocast():
            y = self.train(x)
        y.backward(self.top_diff.to(y.dtype))
        return x.grad.float().numpy()


# ---------------------------------------------------------------- workers (subprocesses)

def setup_torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def inputs(batch, size):
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)  # the softmax stays soft
    top = rng.standard_normal((batch, 1000)).astype(np.float32)
    return x, top


def worker_time(args):
    """Both implementations in one process, interleaved round by round."""
    import numpy as np

    setup_torch(args.threads)
    fast = args.mode == "fast"
    x, top = inputs(args.batch, args.size)
    runners = {"caffe": CaffeRunner(fast, args.batch, args.size, x, top)}
    runners["torch"] = TorchRunner(fast, x, top, caffe_source=runners["caffe"].train)
    if args.compiled and not fast:
        runners["compiled"] = CompiledRunner(runners["caffe"].infer, args.batch, args.size, x,
                                             args.cache_dir)
    import torch
    assert torch.equal(runners["caffe"].infer.params["fc8"][1].tensor,
                       runners["torch"].infer[-2].bias), "the two do not hold the same weights"
    # same network: outputs agree (exactly-ish in fp32; loosely in bf16)
    a, b = runners["caffe"].forward(), runners["torch"].forward()
    agree = float(np.abs(a - b).max() / (np.abs(b).max() + 1e-8))
    ga, gb = runners["caffe"].forward_backward(), runners["torch"].forward_backward()
    agree_grad = float(np.abs(ga - gb).max() / (np.abs(gb).max() + 1e-8))
    agree_compiled = None
    if "compiled" in runners:
        c = runners["compiled"].forward()
        agree_compiled = float(np.abs(c - a).max() / (np.abs(a).max() + 1e-8))
    times = {(impl, what): [] for impl in runners for what in ("fwd", "fwd_bwd")}
    for _ in range(args.warmup):
        for impl, r in runners.items():
            r.forward()
            if impl != "compiled":
                r.forward_backward()
    for what, passes in (("fwd", 3 * args.rounds), ("fwd_bwd", args.rounds)):
        order = [i for i in runners if what == "fwd" or i != "compiled"]
        for k in range(passes):   # one pass each, alternating who goes first
            for impl in (order if k % 2 == 0 else order[::-1]):
                fn = getattr(runners[impl], "forward" if what == "fwd" else "forward_backward")
                t0 = time.perf_counter()
                fn()
                times[impl, what].append(time.perf_counter() - t0)
    out = {"agree_fwd": agree, "agree_grad": agree_grad, "agree_compiled": agree_compiled,
           "build_s": runners["compiled"].build_s if "compiled" in runners else None,
           "load": os.getloadavg()[0], "times": {f"{i}/{w}": v for (i, w), v in times.items()}}
    print(json.dumps(out))


def worker_memory(args):
    """One implementation and one task alone: the process's peak RSS over five passes."""
    setup_torch(args.threads)
    fast = args.mode == "fast"
    x, top = inputs(args.batch, args.size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tasks = (args.task,)
    if args.impl == "caffe":
        r = CaffeRunner(fast, args.batch, args.size, x, top, tasks)
    else:
        r = TorchRunner(fast, x, top, tasks)
    fn = r.forward if args.task == "fwd" else r.forward_backward
    for _ in range(5):   # the peak settles after a few passes (the heap's layout)
        fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": peak, "base_kib": base}))


def worker_compile(args):
    """Build the compiled deploy net once with args.cache_dir; print the seconds it took."""
    from torch._dynamo.utils import counters

    setup_torch(args.threads)
    x, _ = inputs(args.batch, args.size)
    source = caffe_net(False, False, args.batch, args.size)
    fill_weights(source)
    r = CompiledRunner(source, args.batch, args.size, x, args.cache_dir)
    print(json.dumps({"build_s": r.build_s, "load": os.getloadavg()[0],
                      "inductor": dict(counters["inductor"])}))


def run_worker(args, *extra):
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--batch", str(args.batch),
           "--size", str(args.size), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
           *(["--compiled"] if args.compiled else ["--no-compiled"]),
           *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else []), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        sys.exit(f"worker {' '.join(extra)} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", default="fp32,fast")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="time the compiled fp32 forward and its compile (default: yes)")
    ap.add_argument("--cache-dir", help="inductor cache folder for the compiled column "
                    "(default: a fresh temporary folder, so the compile-time figures are cold "
                    "then cached)")
    ap.add_argument("--worker", choices=["time", "memory", "compile"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "time":
        return worker_time(args)
    if args.worker == "memory":
        return worker_memory(args)
    if args.worker == "compile":
        return worker_compile(args)
    if args.compiled and args.cache_dir is None:
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="bench-inductor-")
        args.cache_dir = tmp.name

    print(f"VGG16 {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} rounds, interleaved (median pass; best in brackets); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    missed = []
    if args.compiled and "fp32" in args.modes.split(","):
        builds = [run_worker(args, "--worker", "compile") for _ in range(2)]
        print(f"\n[compile] fp32 VGG16 compiled forward built in {builds[0]['build_s']:.1f} s "
              f"cold (load {builds[0]['load']:.2f}), {builds[1]['build_s']:.1f} s from the "
              f"cache (load {builds[1]['load']:.2f}); cold/cached "
              f"{builds[0]['build_s'] / builds[1]['build_s']:.1f}x")
    for mode in args.modes.split(","):
        t = run_worker(args, "--worker", "time", "--mode", mode)
        print(f"\n[{mode}] runtime and torch.nn outputs differ by {t['agree_fwd']:.1e} (prob), "
              f"{t['agree_grad']:.1e} (input gradient), relative; load average {t['load']:.2f}")
        for what, caffe_ref, target in zip(("fwd", "fwd_bwd"), (CAFFE_FWD, CAFFE_FWD_BWD),
                                           TARGETS[mode]):
            med = {i: statistics.median(t["times"][f"{i}/{what}"]) for i in ("caffe", "torch")}
            best = {i: min(t["times"][f"{i}/{what}"]) for i in ("caffe", "torch")}
            ips = {i: args.batch / med[i] for i in med}
            ratio = med["torch"] / med["caffe"]
            vs_caffe = ips["caffe"] / caffe_ref
            label = "forward" if what == "fwd" else "forward+backward"
            if ratio < 0.95:
                missed.append(f"{mode} {label} runtime/torch")
            if vs_caffe < target:
                missed.append(f"{mode} {label} vs real Caffe")
            print(f"  {label:16s} img/s: runtime {ips['caffe']:5.2f} ({args.batch / best['caffe']:5.2f})"
                  f"  torch.nn {ips['torch']:5.2f} ({args.batch / best['torch']:5.2f})"
                  f"  runtime/torch {ratio:4.2f}x [>=0.95]"
                  f"  runtime/real Caffe {vs_caffe:4.2f}x [>={target}]")
            key = f"compiled/{what}"
            if what == "fwd" and t["times"].get(key):
                med_c = statistics.median(t["times"][key])
                print(f"  {'  compiled':16s} img/s: {args.batch / med_c:5.2f} "
                      f"({args.batch / min(t['times'][key]):5.2f})  compiled/runtime "
                      f"{med['caffe'] / med_c:4.2f}x  compiled/real Caffe "
                      f"{args.batch / med_c / caffe_ref:4.2f}x  (differs from the runtime by "
                      f"{t['agree_compiled']:.1e}, built in {t['build_s']:.1f} s)")
        if args.no_memory:
            continue
        for what in ("fwd", "fwd_bwd"):
            mem = {i: run_worker(args, "--worker", "memory", "--mode", mode, "--impl", i,
                                 "--task", what) for i in ("caffe", "torch")}
            peak = {i: mem[i]["peak_kib"] / 1024 for i in mem}
            ratio = peak["caffe"] / peak["torch"]
            label = "forward" if what == "fwd" else "forward+backward"
            if ratio > 1.1:
                missed.append(f"{mode} {label} peak memory")
            print(f"  {label:16s} peak RSS: runtime {peak['caffe']:5.0f} MiB  torch.nn "
                  f"{peak['torch']:5.0f} MiB  runtime/torch {ratio:4.2f}x [<=1.1]  "
                  f"(both {mem['torch']['base_kib'] / 1024:.0f} MiB after imports)")
    print("\nall targets met" if not missed else "\ntargets missed: " + ", ".join(missed))


if __name__ == "__main__":
    main()
