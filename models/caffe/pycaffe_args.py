"""pycaffe's ways of calling ``Net``, read in one place for both backends:
``Net(network, phase)``, ``Net(network, weights, phase)``, or keywords ``phase=`` and
``weights=`` (with ``level=`` and ``stages=`` for the NetState)."""
from __future__ import annotations

from .proto import caffe_pb2


def net_arguments(args: tuple, phase=None, weights=None) -> tuple:
    """The positional arguments after ``network`` and the keywords -> (phase, weights)."""
    if len(args) == 1:
        phase = args[0]
    elif len(args) == 2:
        weights, phase = args
    elif len(args) > 2:
        raise TypeError("Net(network, [weights,] phase)")
    if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise TypeError("Net needs a phase: caffe.TRAIN or caffe.TEST")
    return phase, weights
