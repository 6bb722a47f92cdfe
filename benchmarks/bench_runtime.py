"""VGG16 on the CPU: the Caffe runtime (models.caffe) against real BVLC Caffe (pycaffe), and
against the same network written directly in torch.nn.

    flock /tmp/bench.lock python3 benchmarks/bench_runtime.py --rounds 5
    PYTHONPATH=$PWD:/work/caffe-real/python python3 benchmarks/bench_runtime.py   # with real Caffe

Against real Caffe (the issue-16 table), when ``import caffe`` gives real pycaffe (PYTHONPATH, or
--pycaffe PATH, or $DEEPSELFIE_PYCAFFE_PATH as the tests use it): the deploy VGG16
(prototxt/zoo), batch 2, 224x224, random weights drawn once and saved to one .caffemodel that
both load. Each side runs in its own process (real Caffe's and this runtime's caffe_pb2 would
share one protobuf namespace), holding its nets; the parent asks them for one pass at a time,
round by round, alternating who goes first, so that load from other processes hits both alike.
The figure is the median pass (the best in brackets). Rows:
- fp32 forward: the runtime's compiled inference (models.caffe.compiled: one inductor graph,
  frozen weights; what ``runtime.compile`` gives scoring) against Caffe's forward; the runtime's
  eager forward is printed under it;
- fp32 forward+backward: a training step on the deploy net with ``force_backward`` (what
  ``caffe time`` times): clear parameter diffs, forward, top diff, backward, on both;
- fast (bf16) inference forward: the runtime's fast mode (bf16, channels_last), compiled (the
  graph under the same bf16 autocast) and eager, against Caffe's fp32 forward (Caffe has no
  bf16).
Real Caffe's OpenBLAS runs with OPENBLAS_NUM_THREADS = --threads, the runtime with
torch.set_num_threads(--threads). Without real pycaffe its column reads "not available".
The compile time is printed cold (a fresh process, an empty inductor cache folder) and cached
(the timing process, a second process with that folder).

--torch adds the earlier comparison (issue 3) with torch.nn written by hand, in fp32 and fast
mode: forward and forward+backward img/s side by side in one process, and the peak memory of a
fresh process per implementation and task (runtime/torch >= 0.95x in speed, <= 1.1x in memory).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROTOTXT = ROOT / "prototxt" / "zoo" / "VGG_ILSVRC_16_layers_deploy.prototxt"
GOALS = {"fp32_fwd": 1.5, "fp32_fwd_bwd": 1.2, "fast_fwd": 3.0}     # runtime / real Caffe (issue 16)


# ---------------------------------------------------------------- the runtime and torch.nn

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


# ---------------------------------------------------------------- against real Caffe: two servers

def deploy_prototxt(path, batch, size, force_backward):
    """The zoo deploy net with its input shaped (batch, 3, size, size), written to ``path``."""
    text = PROTOTXT.read_text()
    dims = iter([batch, 3, size, size])
    text = re.sub(r"input_dim:\s*\d+", lambda m: f"input_dim: {next(dims)}", text, count=4)
    if force_backward:
        text = "force_backward: true\n" + text
    pathlib.Path(path).write_text(text)
    return str(path)


def forward_backward(net, x, top):
    """One forward and backward of a force_backward net (this runtime's or real pycaffe's: the
    same calls), ``top`` as the gradient of "prob" -> the gradient of "data"."""
    net.clear_param_diffs()
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["prob"].diff[...] = top
    net.backward()
    return net.blobs["data"].diff


class RuntimeSide:
    """This runtime's nets in the server process: an fp32 TEST net (eager, and compiled with
    models.caffe.compiled), the same with force_backward, and a fast (bf16) TEST net."""

    def __init__(self, threads):
        setup_torch(threads)

    def make_weights(self, deploy, model):
        import models.caffe as caffe
        net = caffe.Net(deploy, caffe.TEST)
        fill_weights(net)
        net.save(model)
        return {}

    def load(self, deploy, train, model, inputs, cache_dir, fast=True, compiled=True):
        import numpy as np

        import models.caffe as caffe
        from models.caffe import compiled as compiled_mod
        with np.load(inputs) as z:
            self.x, self.top = z["x"], z["top"]
        self.nets = {"fwd": caffe.Net(deploy, caffe.TEST, weights=model, fast=False),
                     "fwd_bwd": caffe.Net(train, caffe.TEST, weights=model, fast=False)}
        if fast:
            self.nets["fwd_fast"] = caffe.Net(deploy, caffe.TEST, weights=model, fast=True)
        reply = {}
        self.compiled = {}
        if compiled:
            from torch._dynamo.utils import counters
            for task in [t for t in ("fwd", "fwd_fast") if t in self.nets]:
                before = dict(counters["inductor"])
                fwd = compiled_mod.CompiledForward(self.nets[task], ["prob"], cache_dir)
                t0 = time.perf_counter()
                fwd(data=self.x)
                self.compiled[task + "_compiled"] = fwd
                reply[task] = {"build_s": time.perf_counter() - t0, "load": os.getloadavg()[0],
                               "inductor": {k: v - before.get(k, 0)
                                            for k, v in counters["inductor"].items()}}
        return reply

    def float64(self, path):
        """The probabilities and input gradient in float64 (VGG16 in torch.nn with the same
        weights and inputs), saved to ``path``: what both sides' fp32 is measured against."""
        import numpy as np
        import torch

        model = torch_vgg16(self.x.shape[-1])
        copy_weights(self.nets["fwd_bwd"], model)
        model = model.double()
        x = torch.from_numpy(self.x.astype(np.float64)).requires_grad_(True)
        prob = model(x)
        prob.backward(torch.from_numpy(self.top.astype(np.float64)))
        np.savez(path, fwd=prob.detach().numpy(), fwd_bwd=x.grad.numpy())
        return {}

    def run(self, task):
        t0 = time.perf_counter()
        if task in self.compiled:
            out = self.compiled[task](data=self.x)["prob"]
        elif task == "fwd_bwd":
            out = forward_backward(self.nets["fwd_bwd"], self.x, self.top)
        else:
            out = self.nets[task].forward(data=self.x)["prob"]
        return time.perf_counter() - t0, out


class CaffeSide:
    """Real pycaffe's nets in the server process: the TEST net and the same with
    force_backward, on the CPU."""

    def __init__(self, threads):
        import caffe
        if not hasattr(caffe, "Net"):
            raise RuntimeError("`import caffe` is not real pycaffe")
        self.caffe = caffe
        caffe.set_mode_cpu()

    def load(self, deploy, train, model, inputs, **_):
        import numpy as np
        with np.load(inputs) as z:
            self.x, self.top = z["x"], z["top"]
        c = self.caffe
        self.nets = {"fwd": c.Net(deploy, c.TEST, weights=model),
                     "fwd_bwd": c.Net(train, c.TEST, weights=model)}
        return {}

    def run(self, task):
        t0 = time.perf_counter()
        net = self.nets[task]
        if task == "fwd_bwd":
            out = forward_backward(net, self.x, self.top)
        else:
            net.blobs["data"].data[...] = self.x
            out = net.forward()["prob"]
        return time.perf_counter() - t0, out


def worker_serve(args):
    """One side as a server: a JSON command a line on stdin, a JSON reply a line on the
    original stdout (anything the libraries print goes to stderr)."""
    import numpy as np

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    side = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if side is None:
                side = (RuntimeSide if args.side == "runtime" else CaffeSide)(args.threads)
            op = cmd.pop("op")
            if op == "pass":
                seconds, _ = side.run(cmd["task"])
                reply = {"s": seconds}
            elif op == "outputs":      # one pass of each task, its output saved for comparison
                np.savez(cmd["path"], **{t: np.array(side.run(t)[1]) for t in cmd["tasks"]})
                reply = {}
            else:
                reply = getattr(side, op)(**cmd)
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class Server:
    """A side's server process, asked one command at a time."""

    def __init__(self, side, args, tmp, env):
        self.side = side
        self.log = open(pathlib.Path(tmp) / f"{side}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "serve", "--side", side,
             "--threads", str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, cwd=ROOT, env=env)

    def ask(self, op, **kw):
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            sys.exit(f"the {self.side} process ended:\n{self.log.read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            sys.exit(f"the {self.side} process failed on {op}:\n{reply['error']}")
        return reply

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def caffe_env(args):
    """The environment of real Caffe's process: pycaffe importable, quiet glog, OpenBLAS on
    the runtime's thread count (OPENBLAS_CORETYPE left as it is: OpenBLAS picks the CPU's)."""
    env = dict(os.environ)
    extra = args.pycaffe or os.environ.get("DEEPSELFIE_PYCAFFE_PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, str(ROOT), env.get("PYTHONPATH", ""))
                                        if p)
    env.setdefault("GLOG_minloglevel", "2")
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def real_caffe_available(env) -> bool:
    """Whether ``import caffe`` gives real pycaffe (its C++ module) in that environment."""
    probe = "import caffe, caffe._caffe; assert hasattr(caffe, 'Net')"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, cwd="/",
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def relative_diff(a, b):
    import numpy as np
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


def versus_real_caffe(args):
    """The issue-16 table: the runtime and real Caffe, alternating pass by pass."""
    import numpy as np

    env = caffe_env(args)
    have_caffe = real_caffe_available(env)
    tmp_obj = tempfile.TemporaryDirectory(prefix="bench-runtime-")
    tmp = pathlib.Path(tmp_obj.name)
    deploy = deploy_prototxt(tmp / "deploy.prototxt", args.batch, args.size, False)
    train = deploy_prototxt(tmp / "train.prototxt", args.batch, args.size, True)
    model = str(tmp / "vgg16_random.caffemodel")
    x, top = inputs(args.batch, args.size)
    np.savez(tmp / "inputs.npz", x=x, top=top)
    print(f"/proc/loadavg at start: {pathlib.Path('/proc/loadavg').read_text().strip()}")
    if not have_caffe:
        print("real Caffe: not available (`import caffe` does not give real pycaffe; "
              "set PYTHONPATH or --pycaffe)")

    builds = []
    if args.compiled:     # cold: a fresh process with an empty cache folder
        builds.append(run_worker(args, "--worker", "compile"))
    runtime_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    servers = {"runtime": Server("runtime", args, tmp, runtime_env)}
    try:
        rt = servers["runtime"]
        rt.ask("make_weights", deploy=deploy, model=model)
        loaded = rt.ask("load", deploy=deploy, train=train, model=model,
                        inputs=str(tmp / "inputs.npz"), cache_dir=args.cache_dir,
                        compiled=args.compiled)
        if args.compiled:
            builds.append(loaded["fwd"])     # cached: the second process with that folder
            fast_build = loaded["fwd_fast"]   # (the fast graph: its first build here)
        contenders = [("runtime", "fwd"), ("runtime", "fwd_fast"), ("runtime", "fwd_bwd")]
        if args.compiled:
            contenders += [("runtime", "fwd_compiled"), ("runtime", "fwd_fast_compiled")]
        if have_caffe:
            servers["caffe"] = Server("caffe", args, tmp, env)
            servers["caffe"].ask("load", deploy=deploy, train=train, model=model,
                                 inputs=str(tmp / "inputs.npz"))
            contenders += [("caffe", "fwd"), ("caffe", "fwd_bwd")]
        # the same weights and input: outputs agree
        outs = {}
        for side, srv in servers.items():
            tasks = [t for s, t in contenders if s == side]
            srv.ask("outputs", path=str(tmp / f"{side}.npz"), tasks=tasks)
            with np.load(tmp / f"{side}.npz") as z:
                outs.update({(side, t): z[t] for t in tasks})
        rt.ask("float64", path=str(tmp / "float64.npz"))
        times = {c: [] for c in contenders}
        for r in range(args.warmup + args.rounds):
            # alternate who goes first; interleave the sides so neither runs twice in a row
            order = sorted(contenders, key=lambda c: (c[1], c[0] != "runtime"))
            for side, task in (order if r % 2 == 0 else order[::-1]):
                time.sleep(args.gap)   # the last pass's idle threads stop spinning (OpenBLAS's
                s = servers[side].ask("pass", task=task)["s"]     # spin ~0.1 s after a call)
                if r >= args.warmup:
                    times[side, task].append(s)
    finally:
        for srv in servers.values():
            srv.close()
    load_end = pathlib.Path("/proc/loadavg").read_text().strip()

    ips = {c: args.batch / statistics.median(v) for c, v in times.items()}
    best = {c: args.batch / min(v) for c, v in times.items()}
    print(f"\nVGG16 deploy (random weights, one .caffemodel), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.threads} threads each (torch.set_num_threads / "
          f"OPENBLAS_NUM_THREADS), {args.rounds} rounds alternating after {args.warmup} warm-up; "
          f"median pass (best in brackets)\n")
    print("| figure | runtime img/s | real Caffe img/s | ratio | goal |")
    print("|---|---|---|---|---|")
    rows = [("fp32 forward (compiled)", ("runtime", "fwd_compiled"), ("caffe", "fwd"),
             GOALS["fp32_fwd"]),
            ("fp32 forward (eager)", ("runtime", "fwd"), ("caffe", "fwd"),
             None if args.compiled else GOALS["fp32_fwd"]),
            ("fp32 forward+backward", ("runtime", "fwd_bwd"), ("caffe", "fwd_bwd"),
             GOALS["fp32_fwd_bwd"]),
            ("fast (bf16) inference forward (compiled)", ("runtime", "fwd_fast_compiled"),
             ("caffe", "fwd"), GOALS["fast_fwd"]),
            ("fast (bf16) inference forward (eager)", ("runtime", "fwd_fast"), ("caffe", "fwd"),
             None if args.compiled else GOALS["fast_fwd"])]
    missed = []
    for label, ours, theirs, goal in rows:
        if ours not in ips:
            continue
        mine = f"{ips[ours]:.2f} ({best[ours]:.2f})"
        if theirs in ips:
            ratio = ips[ours] / ips[theirs]
            cols = (f"{ips[theirs]:.2f} ({best[theirs]:.2f})", f"{ratio:.2f}x")
            if goal and ratio < goal:
                missed.append(label)
        else:
            cols = ("not available", "-")
        goal_txt = f">= {goal}x" if goal else "-"
        if (ours[0], ours[1] + "_compiled") in ips:
            goal_txt = f"(compiled/eager {ips[ours[0], ours[1] + '_compiled'] / ips[ours]:.2f}x)"
        print(f"| {label} | {mine} | {cols[0]} | {cols[1]} | {goal_txt} |")
    print(f"\n/proc/loadavg at end: {load_end}")
    ref = outs[("runtime", "fwd")]
    notes = []
    if ("runtime", "fwd_compiled") in outs:
        notes.append(f"compiled vs eager {relative_diff(outs[('runtime', 'fwd_compiled')], ref):.1e}")
    notes.append(f"fast vs eager {relative_diff(outs[('runtime', 'fwd_fast')], ref):.1e}")
    if ("runtime", "fwd_fast_compiled") in outs:
        notes.append("compiled fast vs eager fast " + format(relative_diff(
            outs[("runtime", "fwd_fast_compiled")], outs[("runtime", "fwd_fast")]), ".1e"))
    if have_caffe:
        notes.append(f"eager vs real Caffe {relative_diff(ref, outs[('caffe', 'fwd')]):.1e} "
                     f"(prob), input gradient vs real Caffe "
                     f"{relative_diff(outs[('runtime', 'fwd_bwd')], outs[('caffe', 'fwd_bwd')]):.1e}")
    print("outputs, max relative difference: " + "; ".join(notes))
    with np.load(tmp / "float64.npz") as z:     # who of the two is off, where they differ
        print("against float64 (torch.nn VGG16, same weights and inputs): " + "; ".join(
            f"{side} {'prob' if task == 'fwd' else 'input gradient'} "
            f"{relative_diff(outs[(side, task)], z[task]):.1e}"
            for side in servers for task in ("fwd", "fwd_bwd")))
    def fx(build):     # (graphs holding prepacked oneDNN weights bypass it: kernels are reused)
        return {k: v for k, v in build["inductor"].items() if k.startswith("fxgraph")}

    if builds:
        cold = builds[0]["build_s"]
        line = f"compile (fp32 VGG16 forward): {cold:.1f} s cold (load {builds[0]['load']:.2f})"
        if len(builds) > 1:
            cached = builds[1]["build_s"]
            line += (f", {cached:.1f} s cached in a second process (load {builds[1]['load']:.2f}); "
                     f"cold/cached {cold / cached:.1f}x; inductor's FX graph cache: cold "
                     f"{fx(builds[0])}, cached {fx(builds[1])}")
        print(line)
        print(f"compile (fast VGG16 forward, after the fp32 one in that process): "
              f"{fast_build['build_s']:.1f} s (load {fast_build['load']:.2f})")
    if have_caffe:
        print("\nall goals met" if not missed else "\ngoals missed: " + ", ".join(missed))
    tmp_obj.cleanup()


# ---------------------------------------------------------------- report

def versus_torch(args):
    """The issue-3 comparison with torch.nn written by hand (--torch)."""
    missed = []
    for mode in args.modes.split(","):
        t = run_worker(args, "--worker", "time", "--mode", mode)
        print(f"\n[{mode}] runtime vs torch.nn: outputs differ by {t['agree_fwd']:.1e} (prob), "
              f"{t['agree_grad']:.1e} (input gradient), relative; load average {t['load']:.2f}")
        for what in ("fwd", "fwd_bwd"):
            med = {i: statistics.median(t["times"][f"{i}/{what}"]) for i in ("caffe", "torch")}
            best = {i: min(t["times"][f"{i}/{what}"]) for i in ("caffe", "torch")}
            ips = {i: args.batch / med[i] for i in med}
            ratio = med["torch"] / med["caffe"]
            label = "forward" if what == "fwd" else "forward+backward"
            if ratio < 0.95:
                missed.append(f"{mode} {label} runtime/torch")
            print(f"  {label:16s} img/s: runtime {ips['caffe']:5.2f} ({args.batch / best['caffe']:5.2f})"
                  f"  torch.nn {ips['torch']:5.2f} ({args.batch / best['torch']:5.2f})"
                  f"  runtime/torch {ratio:4.2f}x [>=0.95]")
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
    print("\nruntime vs torch.nn: all targets met" if not missed
          else "\nruntime vs torch.nn: targets missed: " + ", ".join(missed))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gap", type=float, default=0.2,
                    help="seconds between two passes against real Caffe (idle threads settle)")
    ap.add_argument("--pycaffe", help="folder of real pycaffe (put in front of PYTHONPATH for "
                    "real Caffe's process; default: $DEEPSELFIE_PYCAFFE_PATH, else as is)")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="time the compiled fp32 forward and its compile (default: yes)")
    ap.add_argument("--cache-dir", help="inductor cache folder for the compiled forward "
                    "(default: a fresh temporary folder, so the compile times are cold then "
                    "cached)")
    ap.add_argument("--torch", action="store_true",
                    help="also the comparison with torch.nn written by hand (issue 3)")
    ap.add_argument("--modes", default="fp32,fast", help="with --torch: the modes")
    ap.add_argument("--no-memory", action="store_true",
                    help="with --torch: skip the peak-memory processes")
    ap.add_argument("--worker", choices=["time", "memory", "compile", "serve"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workers = {"time": worker_time, "memory": worker_memory, "compile": worker_compile,
               "serve": worker_serve}
    if args.worker:
        return workers[args.worker](args)
    tmp = None
    if args.compiled and args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-inductor-")
        args.cache_dir = tmp.name
    versus_real_caffe(args)
    if args.torch:
        versus_torch(args)


if __name__ == "__main__":
    main()
