"""Caffe's tool (``caffe train | test | time``) as functions: ``train``, ``test`` and
``time_model``. The ``deepselfie train|test|time`` commands (deepselfie/cli/caffe.py) call them.

``train`` logs like ``caffe train`` (glog lines that Caffe's log parsers read) to stderr and to
``<snapshot_prefix>_train.log``, and writes ``<snapshot_prefix>_metrics.jsonl`` and
``<snapshot_prefix>_curve.png`` as it goes. Several GPUs (``gpu="0,1"``) run one process per GPU
(batch_size per GPU, gradients averaged, as Caffe); under torchrun each process takes its share.
"""
from __future__ import annotations

import pathlib
import sys

from . import glog
from .errors import CaffeError


def _reporter(report):
    """``report(command, text)`` gives a command's closing line (``train: done at ...``) to
    the caller (the CLI prints it); without one it goes to the log."""
    return report or (lambda command, text: glog.info("caffe.cpp", f"{command}: {text}"))


# ---------------------------------------------------------------- devices

def parse_gpus(spec) -> list[int]:
    """``--gpu``: "" -> [], "0,1" -> [0, 1], "all" -> every visible CUDA device."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, int):
        spec = str(spec)
    elif isinstance(spec, (list, tuple)):
        spec = ",".join(map(str, spec))
    if spec == "all":
        import torch
        return list(range(torch.cuda.device_count())) or [0]   # none: GPU 0, then the warning
    try:
        gpus = [int(x) for x in str(spec).split(",")]
    except ValueError:
        raise CaffeError(f"must be GPU ids like 0 or 0,1, or all; not {spec!r}",
                         field="--gpu") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise CaffeError(f"GPU ids must be distinct and non-negative, not {spec!r}",
                         field="--gpu")
    return gpus


def pick_device(gpus: list[int], default_device: str = "auto"):
    """The device for this process: its GPU when GPUs are asked for and CUDA is there (one
    process per GPU under several processes), the CPU with a warning when CUDA is missing;
    without GPUs, ``default_device`` (auto, cpu, cuda, cuda:N)."""
    import torch

    from models.caffe import glog, parallel, state
    if gpus:
        if not torch.cuda.is_available():
            glog.warning("caffe.cpp:196", f"GPU {','.join(map(str, gpus))} asked for but CUDA "
                                          "is not available: running on the CPU")
            return torch.device("cpu")
        index = gpus[parallel.local_rank() % len(gpus)] if parallel.launched() else gpus[0]
        if index >= torch.cuda.device_count():
            raise CaffeError(f"GPU {index} does not exist ({torch.cuda.device_count()} visible)",
                             field="--gpu")
        return torch.device("cuda", index)
    dev = state.resolve_device(default_device)
    if dev.type == "cuda" and parallel.launched():
        return torch.device("cuda", parallel.local_rank())
    return dev


def _log_device(device, gpus):
    from models.caffe import glog
    if device.type == "cuda":
        import torch
        ids = gpus or [device.index or 0]
        glog.info("caffe.cpp:205", f"Using GPUs {', '.join(map(str, ids))}")
        glog.info("caffe.cpp:210", f"GPU {device.index or 0}: "
                                   f"{torch.cuda.get_device_name(device)}")
    else:
        glog.info("caffe.cpp:197", "Use CPU.")


# ---------------------------------------------------------------- train

def train(solver_path, *, weights=None, snapshot=None, gpu=None, backend="torch", fast=False,
          sigint_effect="stop", sighup_effect="snapshot", level=0, stages=(),
          default_device="auto", metrics=True, curve_interval_s=10.0, relaunch_argv=None,
          report=None, compile=False, compile_cache=None):
    """Train from a solver prototxt as ``caffe train`` does; returns the solver (or, when it ran
    one process per GPU, their exit code). ``report(command, text)`` receives the closing line.
    ``compile``: the train net's forward and backward compiled (models.caffe.compiled_train),
    inductor's caches under ``compile_cache``."""
    from models.caffe import parallel
    from models.caffe.signals import check_effect
    check_effect(sigint_effect, "--sigint_effect")
    check_effect(sighup_effect, "--sighup_effect")
    if snapshot and weights:
        raise CaffeError("give --snapshot to resume training or --weights to fine-tune, not both",
                         field="--snapshot/--weights")
    gpus = parse_gpus(gpu)
    if backend == "caffe":
        return _train_with_pycaffe(solver_path, weights, snapshot, gpus, _reporter(report))
    if backend != "torch":
        raise CaffeError(f"must be torch or caffe, not {backend!r}", field="--backend")

    from models.caffe.sgd_solvers import read_solver_param
    param = read_solver_param(solver_path)
    if not gpus and gpu is None and param.HasField("solver_mode") and param.solver_mode == 1:
        gpus = [param.device_id]            # solver_mode: GPU, as the caffe tool reads it
    if len(gpus) > 1 and not parallel.launched():
        import torch
        if torch.cuda.is_available() and relaunch_argv:
            return parallel.launch(len(gpus), relaunch_argv)
    return _train_torch(solver_path, param, weights, snapshot, gpus, fast, sigint_effect,
                        sighup_effect, level, stages, default_device, metrics, curve_interval_s,
                        _reporter(report), explicit_cpu=param.HasField("solver_mode")
                        and param.solver_mode == 0 and gpu is None,
                        compile=compile, compile_cache=compile_cache)


def _train_torch(solver_path, param, weights, snapshot, gpus, fast, sigint_effect,
                 sighup_effect, level, stages, default_device, metrics, curve_interval_s, report,
                 explicit_cpu, compile=False, compile_cache=None):
    import torch

    from models.caffe import glog, parallel
    from models.caffe.metrics import TrainingMonitor
    from models.caffe.sgd_solvers import solver_class
    from models.caffe.signals import SignalHandler

    root = parallel.rank() == 0
    prefix = param.snapshot_prefix
    log_file = None
    if root:
        glog.stderr()
        log_path = pathlib.Path(f"{prefix}_train.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")
        glog.add_stream(log_file)
    monitor = None
    try:
        device = torch.device("cpu") if explicit_cpu else pick_device(gpus, default_device)
        if len(gpus) > 1 and not parallel.launched() and device.type == "cpu":
            glog.warning("caffe.cpp:196", f"{len(gpus)} GPUs asked for without CUDA: one CPU "
                                          "process trains (batch_size is per GPU in Caffe)")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        parallel.init(device)
        _log_device(device, gpus)
        param.train_state.level = level
        param.train_state.stage.extend(stages)
        if snapshot:
            del param.weights[:]
        elif weights:
            del param.weights[:]
            param.weights.append(weights)
        solver = solver_class(param, solver_path)(param, source=str(solver_path),
                                                  device=device, fast=fast,
                                                  compile=compile,
                                                  compile_cache=compile_cache)
        with SignalHandler(sigint_effect, sighup_effect) as signals:
            solver.set_action_function(signals.requested_action)
            if snapshot:
                glog.info("caffe.cpp:246", f"Resuming from {snapshot}")
                solver.restore(snapshot)
            if root and metrics:
                monitor = TrainingMonitor(f"{prefix}_metrics.jsonl", f"{prefix}_curve.png",
                                          start_iter=solver.iter,
                                          min_interval_s=curve_interval_s)
                solver.add_listener(monitor)
            start = solver.iter
            glog.info("caffe.cpp:251", "Starting Optimization")
            solver.solve()
            glog.info("caffe.cpp:262", "Optimization Done.")
        if root:
            how = "stopped early" if solver.requested_early_exit else "done"
            report("train", f"{how} at iteration {solver.iter} (from {start}); snapshots and "
                            f"log at {prefix}_*")
        return solver
    finally:
        if monitor is not None:
            monitor.close()
        if log_file is not None:
            glog.remove_stream(log_file)
            log_file.close()
        if root:
            glog.remove_stream(sys.stderr)
        parallel.finish()


def _train_with_pycaffe(solver_path, weights, snapshot, gpus, report):
    """The same job on real Caffe (pycaffe), where it is importable."""
    try:
        import caffe  # noqa: F401  (real pycaffe; the PyPI 'caffe' placeholder has no Solver)
        if not hasattr(caffe, "get_solver"):
            raise ImportError
    except ImportError:
        raise CaffeError("real pycaffe is not importable here; use --backend torch",
                         field="--backend") from None
    if not pathlib.Path(solver_path).exists():
        raise CaffeError("file not found", path=solver_path)
    if gpus:
        caffe.set_mode_gpu()
        caffe.set_device(gpus[0])
    else:
        caffe.set_mode_cpu()
    solver = caffe.get_solver(str(solver_path))
    for w in (weights or "").split(","):
        if w:
            solver.net.copy_from(w)
    if snapshot:
        solver.solve(str(snapshot))
    else:
        solver.solve()
    report("train", f"done at iteration {solver.iter} (pycaffe)")
    return solver


# ---------------------------------------------------------------- test and time

def _open_net(model, phase, gpu, fast, level, stages, default_device):
    import torch

    from models.caffe import glog
    from models.caffe.net import Net
    glog.stderr()
    gpus = parse_gpus(gpu)
    device = pick_device(gpus[:1], default_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _log_device(device, gpus[:1])
    return Net(model, phase, level=level, stages=list(stages), device=device, fast=fast)


def test(model, weights, iterations=50, *, gpu=None, fast=False, level=0, stages=(),
         default_device="auto", report=None, compile="off", compile_cache=None) -> dict:
    """Score a net's TEST phase over ``iterations`` batches (``caffe test``); returns each
    output's mean. ``compile`` (runtime.compile: auto, on, off) runs the layers after the source
    layers as one compiled graph (models.caffe.compiled), its caches under ``compile_cache``."""
    import numpy as np
    import torch

    from models.caffe import compiled, glog
    from models.caffe.net import TEST
    from models.caffe.solver import _g, load_weights
    if iterations < 1:
        raise CaffeError("must be at least 1", field="--iterations")
    try:
        net = _open_net(model, TEST, gpu, fast, level, stages, default_device)
        load_weights(net, weights)
        glog.info("caffe.cpp:290", f"Running for {iterations} iterations.")
        totals, loss = {}, 0.0
        batch = net._blobs[0].shape[0] if net._blobs and net._blobs[0].shape else 1
        fwd = compiled.compiled_forward(net, _loss_blobs(net), compile, iterations * batch,
                                        compile_cache)
        with torch.no_grad():
            for i in range(iterations):
                if fwd is not None:
                    try:
                        fwd()
                        loss += _loss(net)
                    except compiled.CompileError as e:   # as the eager net from here on
                        glog.warning("caffe.cpp:290", f"compiling the net failed "
                                     f"({str(e).splitlines()[0]}); running it eagerly")
                        fwd = None
                if fwd is None:
                    loss += net.forward_range(0, len(net.layers) - 1)
                for name in net.outputs:
                    values = np.array(net.blobs[name].data, dtype=np.float32).ravel()
                    for v in values:
                        glog.info("caffe.cpp:313", f"Batch {i}, {name} = {_g(v)}")
                    totals[name] = totals.get(name, 0) + values
        loss /= iterations
        glog.info("caffe.cpp:318", f"Loss: {_g(loss)}")
        weights_of = net.blob_loss_weights
        means = {}
        for name, total in totals.items():
            mean = total / np.float32(iterations)
            w = np.float32(weights_of[name])
            for v in mean:
                extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
                glog.info("caffe.cpp:330", f"{name} = {_g(v)}{extra}")
            means[name] = float(mean[0]) if mean.size == 1 else mean.tolist()
        _reporter(report)("test", f"{iterations} batches: " + ", ".join(
            f"{k} = {_g(v) if isinstance(v, float) else v}" for k, v in means.items()))
        return means
    finally:
        glog.remove_stream(sys.stderr)


def _loss_blobs(net) -> list[str]:
    """The blobs with a loss weight (their weighted sum is the net's loss)."""
    names = net._blob_names
    return [names[tid] for tid, w in net.loss_weights.items() if w]


def _loss(net) -> float:
    """The net's loss from its loss blobs, as ``forward_range`` sums it."""
    return sum(float(w * net._blobs[tid].tensor.detach().float().sum())
               for tid, w in net.loss_weights.items() if w)


def time_model(model, iterations=50, *, gpu=None, fast=False, level=0, stages=(),
               default_device="auto", report=None) -> dict:
    """Per-layer forward/backward times of a net's TRAIN phase (``caffe time``)."""
    from models.caffe import glog
    from models.caffe.net import TRAIN
    from models.caffe.solver import _g
    from models.caffe.timing import time_net
    if iterations < 1:
        raise CaffeError("must be at least 1", field="--iterations")
    try:
        net = _open_net(model, TRAIN, gpu, fast, level, stages, default_device)
        glog.info("caffe.cpp:360", "Performing Forward")
        loss = net.forward_range(0, len(net.layers) - 1)
        glog.info("caffe.cpp:363", f"Initial loss: {_g(loss)}")
        glog.info("caffe.cpp:364", "Performing Backward")
        net.backward()
        result = time_net(net, iterations)
        _reporter(report)("time", f"{iterations} iterations: forward "
                                  f"{result['forward_ms']:.3g} ms, backward "
                                  f"{result['backward_ms']:.3g} ms, forward-backward "
                                  f"{result['forward_backward_ms']:.3g} ms per iteration")
        return result
    finally:
        glog.remove_stream(sys.stderr)
