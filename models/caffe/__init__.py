"""models.caffe: Caffe's file formats and semantics on a torch engine, with pycaffe's surface.

    import models.caffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    prob = net.forward()["prob"]
"""
from . import layers as _layers  # noqa: F401  (registers every layer type)
from . import io, proto  # noqa: F401
from .backend import set_backend  # noqa: F401
from .layer import LAYERS, Layer, layer_type_list, register  # noqa: F401
from .net import TEST, TRAIN, Net  # noqa: F401
from .sgd_solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                          NesterovSolver, RMSPropSolver, SGDSolver, get_solver)
from .state import (set_device, set_fast, set_mode_cpu, set_mode_gpu,  # noqa: F401
                    set_random_seed)

__all__ = ["Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "set_fast", "set_backend", "io", "proto", "layer_type_list", "register", "Layer",
           "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver"]
