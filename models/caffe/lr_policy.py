"""Caffe's learning-rate policies: the rate a solver uses at an iteration.

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ (number of stepvalues passed; one more per call at most)
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))

``step`` and ``multistep`` keep their position in ``current_step``, which a .solverstate saves.
Caffe computes in float32; the rate is rounded to float32 here too.
"""
from __future__ import annotations

import math

import numpy as np

from . import glog
from .errors import CaffeError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

f32 = np.float32


def check(param, source="<solver>") -> None:
    """Refuse a policy Caffe would stop on (it checks lazily, at the first step; we check first)."""
    policy = param.lr_policy
    if policy not in POLICIES:
        raise CaffeError(f"unknown learning rate policy {policy!r} (known: {', '.join(POLICIES)})",
                         path=source, field="lr_policy")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise CaffeError(f"lr_policy {policy!r} needs stepsize > 0", path=source, field="stepsize")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise CaffeError(f"lr_policy {policy!r} needs gamma >= 0", path=source, field="gamma")
    if policy == "poly" and param.max_iter <= 0:
        raise CaffeError("lr_policy 'poly' needs max_iter > 0", path=source, field="max_iter")


def _pow(a, b) -> float:
    try:
        return math.pow(a, b)
    except ValueError:        # a negative base to a fractional power: C's pow gives NaN
        return math.nan
    except OverflowError:
        return math.inf


def _exp(x) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def learning_rate(param, it: int, current_step: int) -> tuple[float, int]:
    """(rate, new current_step) at iteration ``it`` for SolverParameter ``param``."""
    policy = param.lr_policy
    base_lr, gamma, power = f32(param.base_lr), f32(param.gamma), f32(param.power)
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = it // param.stepsize
        rate = base_lr * f32(_pow(gamma, current_step))
    elif policy == "exp":
        rate = base_lr * f32(_pow(gamma, it))
    elif policy == "inv":
        rate = base_lr * f32(_pow(f32(1) + gamma * f32(it), -power))
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            glog.info("sgd_solver.cpp:54",
                      f"MultiStep Status: Iteration {it}, step = {current_step}")
        rate = base_lr * f32(_pow(gamma, current_step))
    elif policy == "poly":
        rate = base_lr * f32(_pow(f32(1) - f32(it) / f32(param.max_iter), power))
    elif policy == "sigmoid":
        rate = base_lr * (f32(1) / (f32(1) + f32(_exp(-gamma * (f32(it) -
                                                                     f32(param.stepsize))))))
    else:
        raise CaffeError(f"unknown learning rate policy {policy!r}", field="lr_policy")
    return float(f32(rate)), current_step
