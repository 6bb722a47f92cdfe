"""Bring old Caffe nets and solvers up to today's format, as Caffe's upgrade_proto does on load.

- V1 nets (``layers { type: CONVOLUTION ... }``, ``blobs_lr``, ``weight_decay``) become V2
  ``layer { type: "Convolution" param { lr_mult decay_mult } }``; the same for V1 weight files.
- Transformation fields in old Data/ImageData/WindowData params move into ``transform_param``.
- Net-level ``input`` + ``input_shape``/``input_dim`` become an Input layer named "input" first.
- BatchNorm layers that declare three ParamSpecs get lr_mult and decay_mult 0.
- Solvers: the ``solver_type`` enum becomes the ``type`` string.
"""
from __future__ import annotations

from .errors import CaffeError
from .proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V1 enum value -> V2 type string
V1_TYPE_NAMES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V1 layers whose own params carry the transform fields, and which param holds them
_TRANSFORM_HOLDERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                      V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_LAYER_FIELDS = {f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return bool(len(net.layers) or len(net.input) or any(
        lp.type == "BatchNorm" and len(lp.param) == 3 for lp in net.layer))


def upgrade_net(net: caffe_pb2.NetParameter, source="<net>") -> caffe_pb2.NetParameter:
    """Upgrade ``net`` in place (and return it)."""
    if len(net.layers):
        if len(net.layer):
            raise CaffeError("has both `layer` (V2) and `layers` (V1) fields; use one format",
                             path=source)
        _upgrade_v1_transform(net)
        _upgrade_v1_layers(net, source)
    if len(net.input):
        _upgrade_input(net, source)
    for lp in net.layer:
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            for spec in lp.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return net


def _upgrade_v1_transform(net):
    for v1 in net.layers:
        holder_name = _TRANSFORM_HOLDERS.get(v1.type)
        if holder_name is None or not v1.HasField(holder_name):
            continue
        holder = getattr(v1, holder_name)
        for name in _TRANSFORM_FIELDS:
            if holder.HasField(name):
                setattr(v1.transform_param, name, getattr(holder, name))
                holder.ClearField(name)


def _upgrade_v1_layers(net, source):
    v1_layers = list(net.layers)
    net.ClearField("layers")
    for i, v1 in enumerate(v1_layers):
        if v1.HasField("layer"):
            raise CaffeError(f"layer {i} uses the pre-V1 (V0) format, which is not supported; "
                             "upgrade it with Caffe's upgrade_net_proto_text", path=source)
        lp = net.layer.add()
        lp.bottom.extend(v1.bottom)
        lp.top.extend(v1.top)
        if v1.HasField("name"):
            lp.name = v1.name
        for rule in v1.include:
            lp.include.add().CopyFrom(rule)
        for rule in v1.exclude:
            lp.exclude.add().CopyFrom(rule)
        if v1.HasField("type"):
            lp.type = V1_TYPE_NAMES[v1.type]
        for blob in v1.blobs:
            lp.blobs.add().CopyFrom(blob)

        def spec(k):
            while len(lp.param) <= k:
                lp.param.add()
            return lp.param[k]

        for k, name in enumerate(v1.param):
            spec(k).name = name
        for k, mode in enumerate(v1.blob_share_mode):
            spec(k).share_mode = mode  # STRICT/PERMISSIVE have the same numbers
        for k, lr in enumerate(v1.blobs_lr):
            spec(k).lr_mult = lr
        for k, decay in enumerate(v1.weight_decay):
            spec(k).decay_mult = decay
        lp.loss_weight.extend(v1.loss_weight)
        for field, value in v1.ListFields():
            if field.name.endswith("_param") and field.name in _LAYER_FIELDS:
                getattr(lp, field.name).CopyFrom(value)


def _upgrade_input(net, source):
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) != len(net.input):
            raise CaffeError(f"{len(net.input)} inputs but {len(net.input_shape)} input_shape",
                             path=source, field="input_shape")
        if not has_shape and len(net.input_dim) != 4 * len(net.input):
            raise CaffeError(f"{len(net.input)} inputs need {4 * len(net.input)} input_dim "
                             f"values, found {len(net.input_dim)}", path=source, field="input_dim")
        layers = list(net.layer)
        net.ClearField("layer")
        lp = net.layer.add(name="input", type="Input")
        for i, name in enumerate(net.input):
            lp.top.append(name)
            shape = lp.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        for old in layers:
            net.layer.add().CopyFrom(old)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta",
                     5: "Adam"}


def upgrade_solver(sp: caffe_pb2.SolverParameter, source="<solver>"):
    """``solver_type: NESTEROV`` -> ``type: "Nesterov"`` (both at once is an error)."""
    if sp.HasField("solver_type"):
        if sp.HasField("type"):
            raise CaffeError("sets both solver_type (old enum) and type; keep only type",
                             path=source, field="solver_type")
        sp.type = SOLVER_TYPE_NAMES[sp.solver_type]
        sp.ClearField("solver_type")
    return sp
