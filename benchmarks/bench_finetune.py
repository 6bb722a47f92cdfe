"""VGG16 fine-tuning speed and MFU: the selfie VGG16 train net (prototxt/selfie_vgg16_train_val
.prototxt, its lr_mults) trained by the runtime's SGD solver (momentum 0.9, weight decay 5e-4, as
prototxt/selfie_vgg16_solver.prototxt), fp32 and fast mode (bf16 autocast, channels_last), on a
CUDA GPU when there is one, else on the CPU.

The batch is set once on the device (an Input layer in place of the Data layer): the figures are
the training step's compute (forward, backward, update), not the input pipeline's, which
benchmarks/bench_data.py measures (img/s per decode worker core: the workers a GPU needs).

MFU: the model FLOPs of a training image times img/s, over the device's peak. A training image's
FLOPs: each Convolution and InnerProduct's forward (2 x multiply-adds), plus the same again for
its weight gradient where its parameters learn, plus again for its input gradient where the
layers below need one (conv1_1's input needs none). The peak: the datasheet's dense figure for
known GPUs (fp32 mode runs without TF32, as the runtime keeps Caffe's fp32: the plain fp32
peak; fast mode the bf16 tensor-core peak), or --peak TFLOPS; elsewhere the fastest of a few
4096 x 4096 matrix products measured on the device in the mode's dtype, so that MFU reads "of a
measured GEMM" (on a CPU oneDNN's convolutions can beat torch's GEMM: over 100% is possible).

Each mode runs eagerly and compiled (``Solver(..., compile=True)``: models.caffe.compiled_train,
the forward and backward as torch.compile graphs); the compiled row's first step, which
compiles, is timed apart ("compile s").

    python benchmarks/bench_finetune.py [--device cuda] [--batch 32] [--size 224]
                                        [--iters 20] [--warmup 3] [--modes fast,fp32]
                                        [--no-compiled] [--json FILE]
    python benchmarks/bench_finetune.py --device cpu --batch 2 --size 64 --iters 2   # a check
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models.caffe as caffe  # noqa: E402
from models.caffe.net_param import load_net_param  # noqa: E402
from models.caffe.proto import caffe_pb2  # noqa: E402
from models.caffe.sgd_solvers import SGDSolver  # noqa: E402

# dense peak FLOP/s from the vendors' datasheets: (fp32 without tensor cores, bf16 tensor cores)
PEAKS = {"H200": (66.9e12, 989.4e12), "H100 SXM": (66.9e12, 989.4e12),
         "H100 PCIe": (51.2e12, 756.5e12), "H100": (66.9e12, 989.4e12),
         "A100": (19.5e12, 312e12), "L40S": (91.6e12, 362.05e12), "A10": (31.2e12, 125e12)}


def train_net(batch: int, size: int) -> caffe_pb2.NetParameter:
    """The selfie VGG16 train net with an Input layer (data, label) for its TRAIN Data layer."""
    param, _ = load_net_param(str(ROOT / "prototxt" / "selfie_vgg16_train_val.prototxt"))
    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    del net.layer[:]
    for layer in param.layer:
        if layer.type == "Data":
            if any(rule.phase == caffe_pb2.TEST for rule in layer.include):
                continue
            inputs = net.layer.add(name="data", type="Input", top=["data", "label"])
            inputs.input_param.shape.add(dim=[batch, 3, size, size])
            inputs.input_param.shape.add(dim=[batch])
        elif not any(rule.phase == caffe_pb2.TEST for rule in layer.include):
            net.layer.append(layer)
    return net


def solver_for(net: caffe_pb2.NetParameter) -> caffe_pb2.SolverParameter:
    sp = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.0005,
                                   lr_policy="fixed", max_iter=1_000_000, display=0,
                                   snapshot=0, random_seed=1, type="SGD")
    sp.net_param.CopyFrom(net)
    return sp


def training_flops(net) -> float:
    """Model FLOPs of one training image (see the module's text)."""
    total = 0.0
    for li, layer in enumerate(net.layers):
        if layer.type not in ("Convolution", "InnerProduct") or not layer.blobs:
            continue
        weights = int(np.prod(layer.blobs[0].shape))
        top = net._blobs[net.top_ids[li][0]].shape
        positions = int(np.prod(top[2:])) if layer.type == "Convolution" else 1
        forward = 2.0 * positions * weights
        learns = net.param_need_backward[li][0] if net.param_need_backward[li] else False
        below = any(net.bottom_need_backward[li])
        total += forward * (1 + bool(learns) + bool(below))
    return total


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 4) -> float:
    """FLOP/s of the fastest of ``reps`` n x n matrix products (after one to warm up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def peak_for(device: torch.device, fast: bool, given: float | None) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from)."""
    if given:
        return given * 1e12, "given (--peak)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (fp32, bf16) in PEAKS.items():
            if key in name:
                return (bf16 if fast else fp32), f"datasheet, {name}"
    dtype = torch.bfloat16 if fast else torch.float32
    return measured_peak(device, dtype), f"a measured {str(dtype).split('.')[-1]} GEMM"


def run_mode(args, fast: bool, compiled: bool) -> dict:
    device = torch.device(args.device)
    caffe.set_random_seed(1)
    solver = SGDSolver(solver_for(train_net(args.batch, args.size)), device=device, fast=fast,
                       source="<bench_finetune>", compile=compiled,
                       compile_cache=args.cache_dir)
    net = solver.net
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.normal(0, 50, net.blobs["data"].shape)
    net.blobs["label"].data[...] = rs.randint(0, 2, net.blobs["label"].shape)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    solver.step(1)                  # the compiled row compiles here
    sync()
    first = time.perf_counter() - t
    solver.step(max(0, args.warmup - 1))
    sync()
    t = time.perf_counter()
    solver.step(args.iters)
    sync()
    elapsed = time.perf_counter() - t
    rate = args.iters * args.batch / elapsed
    flops = training_flops(net)
    peak, source = peak_for(device, fast, args.peak)
    loss = float(solver.smoothed_loss)
    ran_compiled = bool(solver._compiled)
    return {"mode": "fast (bf16)" if fast else "fp32",
            "run": "compiled" if ran_compiled else ("eager (compile failed)" if compiled
                                                    else "eager"),
            "compile_s": max(0.0, first - elapsed / args.iters) if ran_compiled else None,
            "img_s": rate, "step_ms": 1e3 * elapsed / args.iters,
            "gflop_per_image": flops / 1e9, "tflops": rate * flops / 1e12,
            "peak_tflops": peak / 1e12, "peak_from": source, "mfu": rate * flops / peak,
            "loss": loss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="fast,fp32")
    ap.add_argument("--peak", type=float, help="the device's peak in TFLOPS for every mode")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="also run each mode compiled (default: yes)")
    ap.add_argument("--cache-dir", help="inductor's cache folder for the compiled runs")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"VGG16 fine-tuning (selfie train net, SGD momentum 0.9), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.iters} steps after {args.warmup}; {where}")
    print(f"{'mode':12} {'run':9} {'img/s':>8} {'ms/step':>8} {'GFLOP/img':>9} {'TFLOP/s':>8} "
          f"{'peak':>8} {'MFU':>6} {'compile s':>9}  peak from", flush=True)
    rows = []
    # each row is printed (and the JSON rewritten) as soon as it is measured: a run stopped at
    # its time limit still leaves the rows it finished
    for mode in args.modes.split(","):
        for compiled in ([False, True] if args.compiled else [False]):
            r = run_mode(args, mode == "fast", compiled)
            rows.append(r)
            compile_s = f"{r['compile_s']:9.1f}" if r["compile_s"] is not None else f"{'-':>9}"
            print(f"{r['mode']:12} {r['run']:9} {r['img_s']:8.2f} {r['step_ms']:8.1f} "
                  f"{r['gflop_per_image']:9.1f} {r['tflops']:8.3f} {r['peak_tflops']:8.1f} "
                  f"{100 * r['mfu']:5.1f}% {compile_s}  {r['peak_from']}", flush=True)
            if args.json:
                pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    eager = {r["mode"]: r for r in rows if r["run"] == "eager"}
    for r in rows:
        if r["run"] == "compiled" and r["mode"] in eager:
            print(f"  {r['mode']}: compiled / eager {r['img_s'] / eager[r['mode']]['img_s']:.2f}x")


if __name__ == "__main__":
    main()
