"""Caffe's update rules: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam.

Every iteration's update, in Caffe's order (SGDSolver::ApplyUpdate):
  rate = the lr policy's rate at this iteration
  clip: if the L2 norm of all parameter diffs together exceeds clip_gradients, scale them all
  then for each learnable parameter:
    normalize: diff /= iter_size
    regularize: diff += weight_decay * decay_mult * (data (L2) or sign(data) (L1))
    update value: the rule turns diff into the step, with local rate = rate * lr_mult
  data -= diff

History blobs, one per parameter in the net's learnable order (AdaDelta and Adam keep a second
set after the first), are what a .solverstate saves. The arithmetic is float32 with Caffe's
operation order, so trajectories match real Caffe's to float rounding.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
import torch

from . import glog, lr_policy, protoio
from .errors import CaffeError
from .proto import caffe_pb2
from .solver import Solver, read_solver_param

f32 = np.float32


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: h = lr * g + momentum * h; step = h."""

    type = "SGD"
    history_sets = 1

    def pre_solve(self):
        self.history = [torch.zeros_like(lp.blob.tensor, dtype=torch.float32,
                                         memory_format=torch.preserve_format).detach()
                        for _ in range(self.history_sets) for lp in self._params]

    # ---------------------------------------------------------------- the update
    @torch.no_grad()
    def apply_update(self) -> float:
        rate, self.current_step = lr_policy.learning_rate(self.param, self.iter,
                                                          self.current_step)
        if self.param.display and self.iter % self.param.display == 0:
            glog.info("sgd_solver.cpp:112", f"Iteration {self.iter}, lr = {rate:g}")
        self.clip_gradients()
        for i in range(len(self._params)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        for lp in self._params:
            lp.blob.tensor.sub_(lp.blob.diff_tensor)
        return rate

    def clip_gradients(self):
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = torch.zeros((), dtype=torch.float32, device=self.device)
        for lp in self._params:
            d = lp.blob.diff_tensor
            sumsq += torch.dot(d.reshape(-1), d.reshape(-1))
        l2norm = f32(math.sqrt(float(sumsq)))
        if l2norm > clip:
            scale = f32(clip / l2norm)
            glog.info("sgd_solver.cpp:91", f"Gradient clipping: scaling down gradients (L2 norm "
                      f"{float(l2norm):g} > {float(clip):g}) by scale factor {float(scale):g}")
            for lp in self._params:
                lp.blob.diff_tensor.mul_(float(scale))

    def normalize(self, i):
        if self.param.iter_size == 1:
            return
        self._params[i].blob.diff_tensor.mul_(float(f32(1) / f32(self.param.iter_size)))

    def regularize(self, i):
        lp = self._params[i]
        local_decay = f32(self.param.weight_decay) * f32(lp.decay_mult)
        if not local_decay:
            return
        data, diff = lp.blob.tensor, lp.blob.diff_tensor
        if self.param.regularization_type == "L2":
            diff.add_(data, alpha=float(local_decay))
        else:
            diff.add_(torch.sign(data), alpha=float(local_decay))

    def local_rate(self, i, rate) -> float:
        return float(f32(rate) * f32(self._params[i].lr_mult))

    def compute_update_value(self, i, rate):
        momentum = float(f32(self.param.momentum))
        diff, h = self._params[i].blob.diff_tensor, self.history[i]
        h.mul_(momentum).add_(diff, alpha=self.local_rate(i, rate))
        diff.copy_(h)

    # ---------------------------------------------------------------- .solverstate
    def snapshot_solver_state(self, model_filename: str) -> str:
        st = caffe_pb2.SolverState(iter=self.iter, learned_net=model_filename,
                                   current_step=self.current_step)
        data = st.SerializeToString() + b"".join(
            protoio._field(3, protoio.encode_blob(h.detach().cpu().numpy()))
            for h in self.history)
        filename = self.snapshot_filename(".solverstate")
        glog.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file "
                  f"{filename}")
        protoio.atomic_write_bytes(filename, data)
        return filename

    @torch.no_grad()
    def restore_solver_state(self, state_file):
        st = read_solverstate(state_file)
        if len(st.history) != len(self.history):
            raise CaffeError(f"holds {len(st.history)} history blobs; a {self.type} solver on "
                             f"this net needs {len(self.history)} (another solver type or net?)",
                             path=state_file)
        arrays = []
        for k, (blob, h) in enumerate(zip(st.history, self.history)):
            try:
                arr = protoio.blobproto_to_array(blob)
            except ValueError as e:
                raise CaffeError(f"history blob {k}: {e}", path=state_file) from None
            if arr.size != h.numel():
                raise CaffeError(f"history blob {k} has shape {arr.shape}; the net's parameter "
                                 f"has {tuple(h.shape)}", path=state_file)
            arrays.append(arr)
        self.iter = st.iter
        if st.HasField("learned_net") and st.learned_net:
            self.net.copy_from(learned_net_path(st.learned_net, state_file))
        self.current_step = st.current_step
        glog.info("sgd_solver.cpp:318", "SGDSolver: restoring history")
        for h, arr in zip(self.history, arrays):
            h.copy_(torch.from_numpy(arr).reshape(h.shape))


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: step = (1 + momentum) * h_new - momentum * h_old."""

    type = "Nesterov"

    def compute_update_value(self, i, rate):
        momentum = f32(self.param.momentum)
        diff, h = self._params[i].blob.diff_tensor, self.history[i]
        previous = h.clone()
        h.mul_(float(momentum)).add_(diff, alpha=self.local_rate(i, rate))
        previous.mul_(float(-momentum)).add_(h, alpha=float(f32(1) + momentum))
        diff.copy_(previous)


class AdaGradSolver(SGDSolver):
    """AdaGrad: h += g^2; step = lr * g / (sqrt(h) + delta)."""

    type = "AdaGrad"

    def check_update_rule(self):
        if self.param.momentum != 0:
            raise CaffeError("momentum cannot be used with AdaGrad", path=self.source,
                             field="momentum")

    def compute_update_value(self, i, rate):
        diff, h = self._params[i].blob.diff_tensor, self.history[i]
        h.add_(diff * diff)
        update = torch.sqrt(h).add_(float(f32(self.param.delta)))
        diff.copy_(torch.div(diff, update).mul_(self.local_rate(i, rate)))


class RMSPropSolver(SGDSolver):
    """RMSProp: h = rms_decay * h + (1 - rms_decay) * g^2; step = lr * g / (sqrt(h) + delta)."""

    type = "RMSProp"

    def check_update_rule(self):
        if self.param.momentum != 0:
            raise CaffeError("momentum cannot be used with RMSProp", path=self.source,
                             field="momentum")
        if not 0 <= self.param.rms_decay < 1:
            raise CaffeError("rms_decay must lie in [0, 1)", path=self.source, field="rms_decay")

    def compute_update_value(self, i, rate):
        decay = f32(self.param.rms_decay)
        diff, h = self._params[i].blob.diff_tensor, self.history[i]
        h.mul_(float(decay)).add_(diff * diff, alpha=float(f32(1) - decay))
        update = torch.sqrt(h).add_(float(f32(self.param.delta)))
        diff.copy_(torch.div(diff, update).mul_(self.local_rate(i, rate)))


class AdaDeltaSolver(SGDSolver):
    """AdaDelta: h_g = m * h_g + (1 - m) * g^2; step = g * sqrt((h_u + delta) / (h_g + delta));
    h_u = m * h_u + (1 - m) * step^2; then step *= lr. History: all h_g, then all h_u."""

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i, rate):
        momentum = f32(self.param.momentum)
        delta = float(f32(self.param.delta))
        n = len(self._params)
        diff = self._params[i].blob.diff_tensor
        h_grad, h_update = self.history[i], self.history[n + i]
        h_grad.mul_(float(momentum)).add_(diff * diff, alpha=float(f32(1) - momentum))
        ratio = torch.div(h_update + delta, h_grad + delta)
        diff.mul_(torch.sqrt(ratio))
        h_update.mul_(float(momentum)).add_(diff * diff, alpha=float(f32(1) - momentum))
        diff.mul_(self.local_rate(i, rate))


class AdamSolver(SGDSolver):
    """Adam: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    step = lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), t = iter + 1.
    History: all m, then all v."""

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, i, rate):
        beta1, beta2 = f32(self.param.momentum), f32(self.param.momentum2)
        n = len(self._params)
        diff = self._params[i].blob.diff_tensor
        m, v = self.history[i], self.history[n + i]
        t = self.iter + 1
        with np.errstate(all="ignore"):     # C's arithmetic: NaN or inf, never an exception
            b1, b2 = np.float64(beta1), np.float64(beta2)   # (momentum2 > 1, momentum 1, ...)
            correction = f32(np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
        m.mul_(float(beta1)).add_(diff, alpha=float(f32(1) - beta1))
        v.mul_(float(beta2)).add_(diff * diff, alpha=float(f32(1) - beta2))
        update = torch.sqrt(v).add_(float(f32(self.param.delta)))
        torch.div(m, update, out=diff)
        diff.mul_(float(f32(self.local_rate(i, rate)) * correction))


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver)}


def solver_class(param, source="<solver>"):
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise CaffeError(f"unknown solver type {param.type!r} (known: {', '.join(SOLVERS)})",
                         path=source, field="type")
    return cls


def get_solver(solver, **kwargs) -> SGDSolver:
    """The solver its prototxt's ``type`` (or legacy ``solver_type``) names: pycaffe's
    ``caffe.get_solver(path)``. ``solver`` may also be a SolverParameter."""
    from . import backend
    if backend.backend() == "caffe":
        return backend.real().get_solver(str(solver))
    if isinstance(solver, caffe_pb2.SolverParameter):
        return solver_class(solver, kwargs.get("source", "<solver>"))(solver, **kwargs)
    param = read_solver_param(solver)
    kwargs.setdefault("source", str(solver))
    return solver_class(param, str(solver))(param, **kwargs)


def read_solverstate(path) -> caffe_pb2.SolverState:
    """A .solverstate file (Caffe's or ours), or one clear error."""
    st = protoio.read_binary(path, caffe_pb2.SolverState)
    if not st.HasField("iter"):
        raise CaffeError("not a .solverstate (it has no iteration)", path=path)
    return st


def learned_net_path(learned_net: str, state_file) -> str:
    """Where a solverstate's weights are: its learned_net as written (relative to the working
    directory, as Caffe reads it), else the file of that name beside the solverstate (snapshots
    that were moved or copied)."""
    as_written = pathlib.Path(learned_net)
    if as_written.exists():
        return str(as_written)
    beside = pathlib.Path(state_file).parent / as_written.name
    if beside.exists():
        return str(beside)
    raise CaffeError(f"its weights file {learned_net!r} (learned_net) is missing, here and "
                     "beside it", path=state_file)
