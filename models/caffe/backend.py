"""The second backend: real BVLC Caffe's pycaffe, behind this module's API.

``caffe.set_backend("caffe")`` (or ``runtime.backend: caffe`` in config.yaml) makes
``models.caffe.Net`` and ``models.caffe.get_solver`` build real pycaffe objects, which have the
same surface (blobs, params, forward, backward, save, step, solve, snapshot, restore); the global
switches (set_mode_*, set_device, set_random_seed) reach both. The default is "torch", this
project's engine. Real pycaffe is the top-level ``caffe`` module, where it is importable.
"""
from __future__ import annotations

import importlib
import pathlib

from .errors import CaffeError

BACKENDS = ("torch", "caffe")
_backend = "torch"


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise CaffeError(f"must be one of {', '.join(BACKENDS)}", path="backend", field=str(name))
    if name == "caffe":
        real()                      # fail now, with a clear message, if it is not there
    _backend = name


def backend() -> str:
    return _backend


def available() -> bool:
    try:
        real()
        return True
    except CaffeError:
        return False


def real():
    """The real pycaffe module, or one clear error."""
    try:
        mod = importlib.import_module("caffe")
    except ImportError as e:
        raise CaffeError(f"real pycaffe is not importable ({e}); build BVLC Caffe's python "
                         "module or use the torch backend", path="backend caffe") from None
    if not hasattr(mod, "Net") or not hasattr(mod, "get_solver"):
        raise CaffeError("the importable `caffe` module is not real pycaffe (PyPI's 'caffe' "
                         "is an empty placeholder); use the torch backend",
                         path="backend caffe")
    return mod


def real_net(network, *args, phase=None, weights=None, level=0, stages=None, device=None,
             fast=None):
    """The same net built by real pycaffe (``Net``'s arguments; ``device`` and ``fast`` are
    this runtime's and do not apply). Real pycaffe reads nets from files only."""
    from .pycaffe_args import net_arguments
    from .proto import caffe_pb2
    phase, weights = net_arguments(args, phase, weights)
    if isinstance(network, caffe_pb2.NetParameter):
        raise CaffeError("the caffe backend builds nets from files only", path="<net>")
    if not pathlib.Path(network).is_file():
        raise CaffeError("file not found", path=network)
    kw = {"level": level}
    if stages is not None:
        kw["stages"] = list(stages)
    if weights is not None:
        kw["weights"] = str(weights)
    return real().Net(str(network), phase, **kw)
