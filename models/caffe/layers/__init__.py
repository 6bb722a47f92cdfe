"""Every layer type the runtime knows, registered under its Caffe type name on import."""
from . import common, data, input, loss, neuron, vision  # noqa: F401
