"""Caffe's global switches, as pycaffe exposes them: CPU/GPU mode, device, random seed, and this
runtime's fast mode (bf16 autocast + channels_last). Nets pick their device when built."""
from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import torch

_mode = "cpu"
_device_id = 0
_fast = False
_warned_no_cuda = False


def _also_real(name, *args):
    """Forward a global switch to real pycaffe when that backend is on."""
    from . import backend
    if backend.backend() == "caffe":
        getattr(backend.real(), name)(*args)


def set_mode_cpu():
    global _mode
    _mode = "cpu"
    _also_real("set_mode_cpu")


def set_mode_gpu():
    global _mode
    _mode = "gpu"
    _also_real("set_mode_gpu")


def set_device(device_id: int):
    global _device_id
    _device_id = int(device_id)
    _also_real("set_device", int(device_id))


def set_fast(enabled: bool = True):
    """Fast mode: bf16 autocast and channels_last. Not bit-exact with Caffe."""
    global _fast
    _fast = bool(enabled)


def fast() -> bool:
    return _fast


def set_random_seed(seed: int):
    """Seed every generator the runtime draws from (fillers, dropout, data shuffling)."""
    from . import rng
    seed = int(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)
    rng.seed(seed)
    _also_real("set_random_seed", seed)


def device() -> torch.device:
    """The device new nets go on: CUDA in GPU mode when available, else the CPU (with a warning
    once, as asking for a GPU that is not there is not an error)."""
    global _warned_no_cuda
    if _mode == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda", _device_id)
        if not _warned_no_cuda:
            warnings.warn("GPU mode asked for but CUDA is not available: running on the CPU",
                          RuntimeWarning, stacklevel=2)
            _warned_no_cuda = True
    return torch.device("cpu")


def resolve_device(spec: str | None) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device (falling back to the CPU with a warning)."""
    if spec in (None, "", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {spec} asked for but CUDA is not available: running on the CPU",
                      RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    return dev


def autocast(dev: torch.device, enabled: bool):
    """bf16 autocast on dev when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
