"""models.caffe: Caffe's file formats and semantics on a torch engine, with pycaffe's surface.

    import models.caffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    prob = net.forward()["prob"]

The names load on first use (PEP 562), so ``import models.caffe.errors`` alone does not import
torch; the first of them registers every layer type.
"""
import importlib

# public name -> the module (under this package) that defines it
_EXPORTS = {
    "Net": "net", "TRAIN": "net", "TEST": "net",
    "set_mode_cpu": "state", "set_mode_gpu": "state", "set_device": "state",
    "set_random_seed": "state", "set_fast": "state", "set_max_blob_bytes": "limits",
    "set_backend": "backend",
    "LAYERS": "layer", "Layer": "layer", "layer_type_list": "layer", "register": "layer",
    "get_solver": "sgd_solvers", "SGDSolver": "sgd_solvers", "NesterovSolver": "sgd_solvers",
    "AdaGradSolver": "sgd_solvers", "RMSPropSolver": "sgd_solvers",
    "AdaDeltaSolver": "sgd_solvers", "AdamSolver": "sgd_solvers",
    "CaffeError": "errors",
}
_SUBMODULES = ("io", "proto", "layers")

__all__ = sorted(_EXPORTS) + ["io", "proto"]


def __getattr__(name):
    if name not in _EXPORTS and name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(".layers", __name__)        # registers every layer type
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
