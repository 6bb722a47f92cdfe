"""Solver: train a net from a solver prototxt the way Caffe's Solver does.

The training loop (Caffe's Solver::Step) for each iteration:
  clear the parameter diffs; test first when ``iter % test_interval == 0``; run ``iter_size``
  forward/backward passes (diffs accumulate) and average their loss; smooth the loss over the
  last ``average_loss`` iterations; display it every ``display`` iterations; (several processes:
  average the diffs); apply the update (the update rule, in sgd_solvers.py); ``iter += 1``;
  snapshot every ``snapshot`` iterations or when a signal asks; stop when a signal asks.
``solve()`` steps to ``max_iter``, snapshots at the end (``snapshot_after_train``) and shows the
final loss and test outputs.

Snapshots are ``<snapshot_prefix>_iter_<N>.caffemodel`` (the weights) and ``.solverstate`` (the
iteration, the weights' file name, the lr policy's step and the update rule's history blobs), both
binary protobuf as Caffe writes them; ``restore(path)`` continues the same trajectory.

Paths in the solver file (net, snapshot_prefix, weights) are relative to the working directory,
as in Caffe. Log lines go through glog (silent unless a stream is set, as in pycaffe); listeners
added with ``add_listener`` get every display, test and snapshot as a dict (the CLI writes them
to a JSON-lines file and a training-curve PNG).
"""
from __future__ import annotations

import logging
import pathlib
import time

import numpy as np
import torch
from google.protobuf import text_format

from . import compiled, glog, lr_policy, parallel, protoio, state
from .errors import CaffeError
from .net import TEST, TRAIN, Net
from .net_param import load_net_param
from .proto import caffe_pb2
from .upgrade import upgrade_solver

log = logging.getLogger("models.caffe.solver")

f32 = np.float32


def read_solver_param(path) -> caffe_pb2.SolverParameter:
    """A solver prototxt, upgraded as Caffe reads it: the old ``solver_type`` enum becomes
    ``type``; a missing ``snapshot_prefix`` becomes the solver file's path without extension and
    one naming a directory gets the file's stem appended."""
    param = protoio.read_prototxt(path, caffe_pb2.SolverParameter)
    upgrade_solver(param, str(path))
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(pathlib.Path(path).with_suffix(""))
        glog.info("upgrade_proto.cpp:1113",
                  f"snapshot_prefix was not specified and is set to {param.snapshot_prefix}")
    elif pathlib.Path(param.snapshot_prefix).is_dir():
        param.snapshot_prefix = str(pathlib.Path(param.snapshot_prefix) / pathlib.Path(path).stem)
        glog.info("upgrade_proto.cpp:1117",
                  f"snapshot_prefix is a directory and is replaced to {param.snapshot_prefix}")
    return param


def _g(value) -> str:
    """A number as C++'s ostream prints a float (6 significant digits)."""
    return format(float(value), "g")


def _num(value) -> float:
    """A float32 as the shortest float that reads back as it (0.01, not 0.009999999776)."""
    return float(str(f32(value)))


class Solver:
    """The training loop shared by every update rule. Build one of the subclasses in
    sgd_solvers.py (``SGDSolver(path)``, ...) or ``get_solver(path)``; ``device`` and ``fast``
    default to the global mode (``caffe.set_mode_gpu()``, ``caffe.set_fast()``). With
    ``compile=True`` the train net's forward and backward run as a compiled graph
    (models.caffe.compiled_train; inductor's caches under ``compile_cache``), eagerly where it
    cannot compile."""

    type = ""

    def __init__(self, solver, *, device=None, fast=None, source=None, compile=False,
                 compile_cache=None):
        if isinstance(solver, caffe_pb2.SolverParameter):
            param = caffe_pb2.SolverParameter()
            param.CopyFrom(solver)
            self.source = source or "<solver>"
            upgrade_solver(param, self.source)
        else:
            self.source = str(solver)
            param = read_solver_param(solver)
        self.param = param
        self.device = torch.device(device) if device is not None else state.device()
        self.fast = state.fast() if fast is None else bool(fast)
        self.rank = parallel.rank()
        self.root = self.rank == 0
        glog.info("solver.cpp:45", "Initializing solver from parameters: \n"
                  + text_format.MessageToString(param).rstrip("\n"))
        self._check_param()
        self.iter = 0
        self.current_step = 0
        if param.random_seed >= 0:
            state.set_random_seed(param.random_seed + self.rank)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets() if self.root else []
        self._check_snapshot_writable()
        glog.info("solver.cpp:57", "Solver scaffolding done.")
        self.smoothed_loss = 0.0
        self.losses: list = []
        self.requested_early_exit = False
        self._action_function = None
        self._callbacks: list = []
        self._listeners: list = []
        self._params = self.net.learnable_params
        # compile: the train net's forward and backward as compiled graphs
        # (models.caffe.compiled_train); None until the first step builds it, False when eager
        self._compiled = None if compile else False
        self.compile_cache = compile_cache
        parallel.broadcast_params([p.blob for p in self._params])
        self.pre_solve()

    # ------------------------------------------------------------ set-up
    def _check_param(self):
        p, src = self.param, self.source
        if p.average_loss < 1:
            raise CaffeError("average_loss must be at least 1", path=src, field="average_loss")
        if p.iter_size < 1:
            raise CaffeError("iter_size must be at least 1", path=src, field="iter_size")
        if p.regularization_type not in ("L1", "L2"):
            raise CaffeError(f"unknown regularization type {p.regularization_type!r} (L1 or L2)",
                             path=src, field="regularization_type")
        if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            raise CaffeError("HDF5 snapshots are not supported; use snapshot_format: BINARYPROTO",
                             path=src, field="snapshot_format")
        if p.snapshot < 0 or p.display < 0 or p.test_interval < 0:
            raise CaffeError("snapshot, display and test_interval cannot be negative", path=src)
        lr_policy.check(p, src)
        self.check_update_rule()

    def check_update_rule(self):
        """Subclasses refuse settings their rule cannot use."""

    def _make_net(self, net_source, phase, extra_state):
        """Build a net from a file path or a NetParameter, with Caffe's NetState merge: the
        phase, then the net's own ``state``, then the solver's train_state/test_state."""
        param, _ = load_net_param(net_source)
        network = param if isinstance(net_source, caffe_pb2.NetParameter) else net_source
        merged = caffe_pb2.NetState(phase=phase)
        merged.MergeFrom(param.state)
        if extra_state is not None:
            merged.MergeFrom(extra_state)
        return Net(network, merged.phase, level=merged.level, stages=list(merged.stage),
                   device=self.device, fast=self.fast)

    def _init_train_net(self) -> Net:
        p = self.param
        fields = ("net", "net_param", "train_net", "train_net_param")
        given = [f for f in fields if p.HasField(f)]
        if not given:
            raise CaffeError("no train net: set one of " + ", ".join(fields), path=self.source)
        if len(given) > 1:
            raise CaffeError("more than one train net: use only one of " + ", ".join(given),
                             path=self.source)
        which = given[0]
        if which.endswith("_param"):
            glog.info("solver.cpp:92", f"Creating training net specified in {which}.")
            source = getattr(p, which)
        else:
            source = getattr(p, which)
            glog.info("solver.cpp:102" if which == "net" else "solver.cpp:96",
                      f"Creating training net from {'net' if which == 'net' else 'train_net'} "
                      f"file: {source}")
        net = self._make_net(source, TRAIN,
                             p.train_state if p.HasField("train_state") else None)
        for weights in p.weights:
            load_weights(net, weights)
        return net

    def _init_test_nets(self) -> list:
        p, src = self.param, self.source
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        if len(generic) > 1:
            raise CaffeError("both net and net_param are set; use one", path=src)
        n_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < n_specific:
            raise CaffeError("test_iter must be given for each test net", path=src,
                             field="test_iter")
        if not generic and len(p.test_iter) != n_specific:
            raise CaffeError(f"{n_specific} test nets but {len(p.test_iter)} test_iter values",
                             path=src, field="test_iter")
        n_generic = len(p.test_iter) - n_specific
        total = n_specific + n_generic
        if len(p.test_state) and len(p.test_state) != total:
            raise CaffeError(f"test_state must be given once per test net ({total})", path=src,
                             field="test_state")
        if total and p.test_interval <= 0:
            raise CaffeError("test nets need test_interval > 0", path=src, field="test_interval")
        sources = [(net_param, "test_net_param") for net_param in p.test_net_param]
        sources += [(path, f"test_net file: {path}") for path in p.test_net]
        for _ in range(n_generic):
            if p.HasField("net_param"):
                sources.append((p.net_param, "net_param"))
            else:
                sources.append((p.net, f"net file: {p.net}"))
        nets = []
        for i, (net_source, what) in enumerate(sources):
            glog.info("solver.cpp:190", f"Creating test net (#{i}) specified by {what}")
            extra = p.test_state[i] if len(p.test_state) else None
            net = self._make_net(net_source, TEST, extra)
            for weights in p.weights:
                load_weights(net, weights)
            nets.append(net)
        return nets

    def _check_snapshot_writable(self):
        p = self.param
        if not (self.root and p.snapshot):
            return
        if not p.snapshot_prefix:
            raise CaffeError("snapshot is set but snapshot_prefix is not", path=self.source,
                             field="snapshot_prefix")
        probe = pathlib.Path(self.snapshot_filename(".tempfile"))
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CaffeError(f"cannot write snapshots there ({e.strerror})", path=self.source,
                             field=f"snapshot_prefix {p.snapshot_prefix!r}") from None

    def pre_solve(self):
        """Subclasses create their history blobs."""

    # ------------------------------------------------------------ pycaffe surface
    def set_action_function(self, fn):
        """``fn()`` -> "none" | "stop" | "snapshot", asked between iterations (the caffe tool
        connects SIGINT/SIGHUP here)."""
        self._action_function = fn

    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's callbacks: ``on_start()`` before each iteration's passes,
        ``on_gradients_ready()`` before its update."""
        self._callbacks.append((on_start, on_gradients_ready))

    def add_listener(self, fn):
        """``fn(record)`` gets every display ("train"), test and snapshot as a dict."""
        self._listeners.append(fn)

    def share_weights(self, net: Net):
        net.share_with(self.net)

    def _emit(self, record):
        for fn in self._listeners:
            fn(record)

    # ------------------------------------------------------------ training loop
    def step(self, iters: int):
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self.losses = []
        self.smoothed_loss = f32(0)
        self._timer = time.perf_counter()
        self._iters_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (
                    self.iter > 0 or p.test_initialization):
                if self.root:
                    self.test_all()
                if parallel.active():
                    self.requested_early_exit = bool(parallel.agree_max(
                        [int(self.requested_early_exit)], self._collective_device())[0])
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = bool(p.display) and self.iter % p.display == 0
            loss = f32(0)
            for _ in range(p.iter_size):
                loss += f32(self._forward_backward())
            loss /= f32(p.iter_size)
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            record = self._display() if display else None
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            parallel.average_diffs([lp.blob for lp in self._params])
            rate = self.apply_update()
            if record is not None:
                record["lr"] = _num(rate)
                self._emit(record)
            self.iter += 1
            snapshot_now, stop_now = self._requested_actions()
            if (p.snapshot and self.iter % p.snapshot == 0) or snapshot_now:
                self.snapshot()
            if stop_now:
                self.requested_early_exit = True
                break

    def _forward_backward(self) -> float:
        if any(self.net.layer_need_backward):
            step = self._compiled_step()
            if step is not None:
                try:
                    return step()
                except compiled.CompileError as e:
                    log.warning("compiling the train net %s failed (%s); training eagerly",
                                self.net.source, str(e).splitlines()[0])
                    self._compiled = False
                    return self._eager_on_loaded_batch()
            return self.net.forward_backward()
        with torch.no_grad():          # nothing to learn (every lr_mult 0): Caffe just forwards
            return self.net.forward_range(0, len(self.net.layers) - 1)

    def _eager_on_loaded_batch(self) -> float:
        """The eager pass on the batch the failed compiled step's source layers already read
        (a Data layer's records are not skipped)."""
        net = self.net
        first = next((i for i, layer in enumerate(net.layers) if not layer.is_source), None)
        if first is None or any(layer.is_source for layer in net.layers[first:]):
            return net.forward_backward()
        return net.forward_backward(start=first)

    def _compiled_step(self):
        if self._compiled is None:
            from .compiled_train import CompiledTrainStep
            try:
                self._compiled = CompiledTrainStep(self.net, self.compile_cache)
            except compiled.CompileError as e:
                log.warning("not compiling the train net %s (%s); training eagerly",
                            self.net.source, e)
                self._compiled = False
        return self._compiled or None

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Caffe's Solver::Solve), optionally resuming a .solverstate."""
        p = self.param
        glog.info("solver.cpp:289", f"Solving {self.net.name}")
        glog.info("solver.cpp:290", f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if resume_file:
            glog.info("solver.cpp:294", f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            glog.info("solver.cpp:315", "Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = f32(self.net.forward_range(0, len(self.net.layers) - 1))
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            glog.info("solver.cpp:327", f"Iteration {self.iter}, loss = {_g(self.smoothed_loss)}")
            self._emit({"event": "train", "iter": self.iter, "loss": _num(self.smoothed_loss),
                        "final": True, "time": time.time()})
        if p.test_interval and self.iter % p.test_interval == 0 and self.root:
            self.test_all()
        glog.info("solver.cpp:332", "Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = f32((self.smoothed_loss * f32(size - 1) + loss) / f32(size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = f32(self.smoothed_loss
                                     + (loss - self.losses[idx]) / f32(average_loss))
            self.losses[idx] = loss

    def _display(self) -> dict:
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iters_last) / (lapse if lapse else 1.0)
        glog.info("solver.cpp:239", f"Iteration {self.iter} ({_g(per_s)} iter/s, {_g(lapse)}s/"
                  f"{self.param.display} iters), loss = {_g(self.smoothed_loss)}")
        self._timer = now
        self._iters_last = self.iter
        outputs, weights = self._log_outputs(self.net, "solver.cpp:258", "Train net output")
        return {"event": "train", "iter": self.iter, "loss": _num(self.smoothed_loss),
                "outputs": outputs, "loss_weights": weights, "iter_per_s": per_s,
                "time": time.time()}

    def _log_outputs(self, net, where, label, values=None):
        """Log each element of each output blob as Caffe numbers them (#0, #1, ...); returns
        ({name: value or list}, {name: loss weight} for losses)."""
        outputs, weights, k = {}, {}, 0
        loss_weights = net.blob_loss_weights
        for name in net.outputs:
            data = values[name] if values is not None else net.blobs[name].data
            flat = np.asarray(data, dtype=np.float32).ravel()
            w = f32(loss_weights[name])
            for v in flat:
                extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
                glog.info(where, f"    {label} #{k}: {name} = {_g(v)}{extra}")
                k += 1
            outputs[name] = _num(flat[0]) if flat.size == 1 else [_num(v) for v in flat]
            if w:
                weights[name] = _num(w)
        return outputs, weights

    def _requested_actions(self) -> tuple[bool, bool]:
        """(snapshot, stop) asked for by the action function; agreed by all processes."""
        action = self._action_function() if self._action_function else "none"
        flags = [int(action == "snapshot"), int(action == "stop")]
        if parallel.active():
            flags = parallel.agree_max(flags, self._collective_device())
        return bool(flags[0]), bool(flags[1])

    def _collective_device(self):
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ------------------------------------------------------------ testing
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0):
        """Run test net ``test_net_id`` for its test_iter batches on the current weights and log
        each output averaged over the batches (Caffe's Solver::Test)."""
        p = self.param
        glog.info("solver.cpp:347", f"Iteration {self.iter}, Testing net (#{test_net_id})")
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        n = p.test_iter[test_net_id]
        scores, loss = None, f32(0)
        with torch.no_grad():
            for i in range(n):
                action = self._local_action()
                while action != "none":
                    if action == "snapshot":
                        self.snapshot()
                    elif action == "stop":
                        self.requested_early_exit = True
                    action = self._local_action()
                if self.requested_early_exit:
                    break
                iter_loss = net.forward_range(0, len(net.layers) - 1)
                if p.test_compute_loss:
                    loss += f32(iter_loss)
                result = {name: np.array(net.blobs[name].data, dtype=np.float32, copy=True)
                          for name in net.outputs}
                if scores is None:
                    scores = result
                else:
                    for name in scores:
                        scores[name] += result[name]
        if self.requested_early_exit:
            glog.info("solver.cpp:396", "Test interrupted.")
            return None
        record = {"event": "test", "iter": self.iter, "net": test_net_id, "time": time.time()}
        if p.test_compute_loss:
            loss /= f32(n)
            glog.info("solver.cpp:401", f"Test loss: {_g(loss)}")
            record["loss"] = _num(loss)
        if scores is None:
            return None
        means = {name: v / f32(n) for name, v in scores.items()}
        outputs, weights = self._log_outputs(net, "solver.cpp:414", "Test net output",
                                             values=means)
        record.update(outputs=outputs, loss_weights=weights)
        self._emit(record)
        return outputs

    def _local_action(self):
        return self._action_function() if self._action_function else "none"

    # ------------------------------------------------------------ update (sgd_solvers.py)
    def apply_update(self) -> float:
        """Update the weights from their diffs; returns the learning rate used."""
        raise NotImplementedError

    # ------------------------------------------------------------ snapshots
    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (first process only)."""
        if not self.root:
            return None
        model = self.snapshot_filename(".caffemodel")
        glog.info("solver.cpp:464", f"Snapshotting to binary proto file {model}")
        if self.param.snapshot_diff:
            glog.warning("solver.cpp:464", "snapshot_diff is not supported: writing data only")
        self.net.save(model)
        solverstate = self.snapshot_solver_state(model)
        self._emit({"event": "snapshot", "iter": self.iter, "caffemodel": model,
                    "solverstate": solverstate, "time": time.time()})
        return model

    def snapshot_solver_state(self, model_filename: str) -> str:
        raise NotImplementedError

    def restore(self, state_file):
        """Continue from a .solverstate: its iteration, weights (its learned_net) and history."""
        if str(state_file).endswith(".h5"):
            raise CaffeError("HDF5 solver states are not supported (only .solverstate)",
                             path=state_file)
        self.restore_solver_state(state_file)

    def restore_solver_state(self, state_file):
        raise NotImplementedError


def load_weights(net: Net, weights: str):
    """Load a comma-separated list of .caffemodel files into ``net`` (by layer name)."""
    for path in [w for w in str(weights).split(",") if w]:
        glog.info("solver.cpp:74", f"Finetuning from {path}")
        net.copy_from(path)
