"""The model-zoo deploy nets in prototxt/zoo/ and the runtime's fast mode.

Each zoo net builds with the published architecture (parameter counts, layer names and shapes,
so that the published .caffemodel files load by name), runs forward on the CPU with filled
weights, and round-trips its weights through a .caffemodel. Fast mode (bf16 autocast +
channels_last) stays close to fp32, trains, and keeps every blob float32 to the user.
"""
import math

import numpy as np
import pytest
import torch

import models.caffe as caffe
from conftest import ROOT
from models.caffe import protoio
from models.caffe.proto import caffe_pb2

ZOO = ROOT / "prototxt" / "zoo"
FILES = {
    "vgg16": "VGG_ILSVRC_16_layers_deploy.prototxt",
    "caffenet": "bvlc_reference_caffenet_deploy.prototxt",
    "googlenet": "bvlc_googlenet_deploy.prototxt",
    "resnet50": "ResNet-50-deploy.prototxt",
}
SLOW = {"vgg16"}   # 138M parameters: its weight round trip and fast-mode check are marked slow


def zoo_param(name, batch=1, force_backward=False):
    """The zoo prototxt with its batch size set (V1 ``input_dim`` or an Input layer)."""
    param = protoio.read_prototxt(ZOO / FILES[name], caffe_pb2.NetParameter)
    if len(param.input_dim):
        param.input_dim[0] = batch
    else:
        assert param.layer[0].type == "Input"
        param.layer[0].input_param.shape[0].dim[0] = batch
    param.force_backward = force_backward
    return param


def zoo_net(name, batch=1, fast=None, force_backward=False):
    return caffe.Net(zoo_param(name, batch, force_backward), caffe.TEST, fast=fast)


def fill(net, seed=0):
    """Random weights that keep activations in range: He-scaled filters, BatchNorm running
    sums of mean ~0 / variance ~1 (scale factor 1), Scale around 0.5."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g)

    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            shape = blob.shape
            if layer.type == "BatchNorm":
                v = [randn(shape) * 0.1, torch.rand(shape, generator=g) + 0.5,
                     torch.ones(shape)][i]
            elif layer.type == "Scale":
                v = 0.5 + 0.1 * randn(shape) if i == 0 else 0.1 * randn(shape)
            elif i == 0:
                v = randn(shape) * math.sqrt(2.0 / (blob.count // shape[0]))
            else:
                v = randn(shape) * 0.01
            blob.data[...] = v.numpy()


def image(net, seed=1):
    return np.random.default_rng(seed).standard_normal(net.blobs["data"].shape).astype(np.float32)


def param_count(net, skip=("BatchNorm",)):
    return sum(b.count for layer in net.layers if layer.type not in skip for b in layer.blobs)


# ---------------------------------------------------------------- architecture facts

def test_vgg16_is_the_published_v1_file():
    text = (ZOO / FILES["vgg16"]).read_text()
    assert "layers {" in text and "type: CONVOLUTION" in text and "input_dim: 224" in text
    assert "layer {" not in text
    net = zoo_net("vgg16")
    convs = [f"conv{s}_{i}" for s, n in enumerate([2, 2, 3, 3, 3], 1) for i in range(1, n + 1)]
    assert list(net.params) == convs + ["fc6", "fc7", "fc8"]
    assert param_count(net) == 138_357_544
    assert net.params["conv1_1"][0].shape == (64, 3, 3, 3)
    assert net.params["fc6"][0].shape == (4096, 512 * 7 * 7)
    assert [l.type for l in net.layers].count("Dropout") == 2      # drop6, drop7 as published
    assert net.blobs["pool5"].shape == (1, 512, 7, 7)
    assert net.inputs == ["data"] and net.outputs == ["prob"]


def test_caffenet_architecture():
    net = zoo_net("caffenet")
    assert list(net.params) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                                "fc8"]
    assert param_count(net) == 60_965_224
    assert net.params["conv2"][0].shape == (256, 48, 5, 5)           # group 2
    assert net.blobs["conv1"].shape == (1, 96, 55, 55)
    assert net.blobs["norm2"].shape == (1, 256, 13, 13)               # pool, then LRN
    assert net.blobs["pool5"].shape == (1, 256, 6, 6)


def test_googlenet_architecture():
    net = zoo_net("googlenet")
    widths = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
              "5a": 832, "5b": 1024}
    sizes = {"3": 28, "4": 14, "5": 7}
    for block, width in widths.items():
        size = sizes[block[0]]
        assert net.blobs[f"inception_{block}/output"].shape == (1, width, size, size)
    assert net.params["inception_3a/5x5"][0].shape == (32, 16, 5, 5)
    assert net.params["loss3/classifier"][0].shape == (1000, 1024)
    assert net.blobs["pool5/7x7_s1"].shape == (1, 1024, 1, 1)
    assert not any(name.startswith(("loss1", "loss2")) for name in net.params)   # deploy


def test_resnet50_architecture():
    net = zoo_net("resnet50")
    assert param_count(net) == 25_557_032     # convolutions, Scale (gamma, beta) and fc1000
    bn = [l for l in net.layers if l.type == "BatchNorm"]
    assert len(bn) == 53 and all(len(l.blobs) == 3 for l in bn)
    assert not any(l.param.convolution_param.bias_term for l in net.layers
                   if l.type == "Convolution")
    for name, shape in [("res2c", (1, 256, 56, 56)), ("res3d", (1, 512, 28, 28)),
                        ("res4f", (1, 1024, 14, 14)), ("res5c", (1, 2048, 7, 7))]:
        assert net.blobs[name].shape == shape
    assert net.params["res3a_branch2a"][0].shape == (128, 256, 1, 1)
    assert net.layer_dict["res3a_branch2a"].stride == (2, 2)        # MSRA: stride on the 1x1
    assert net.params["bn_conv1"][0].shape == (64,)
    assert net.params["scale_conv1"][1].shape == (64,)


# ---------------------------------------------------------------- forward, weights

@pytest.mark.parametrize("name", list(FILES))
def test_forward_with_filled_weights(name):
    net = zoo_net(name)
    fill(net)
    prob = net.forward(data=image(net))["prob"]
    assert prob.shape == (1, 1000)
    assert np.all(np.isfinite(prob))
    assert prob.sum() == pytest.approx(1.0, abs=1e-4)
    assert prob.std() > 0   # it depends on the image: not a constant
    # in-place ReLUs leave the rectified values in the producer's blob, as in Caffe
    relu = next(l for l in net.layers if l.type == "ReLU")
    assert net.bottom_names[relu.name] == net.top_names[relu.name]
    assert net.blobs[net.top_names[relu.name][0]].data.min() >= 0


def test_building_allocates_parameters_only():
    net = zoo_net("caffenet", batch=4)
    assert all(blob.shaped.is_meta for name, blob in net.blobs.items() if name != "data")
    assert net.blobs["conv1"].data.shape == (4, 96, 55, 55)    # reading gives zeros
    assert not net.blobs["conv1"].data.any()
    fill(net)
    net.forward(data=image(net))
    assert not any(blob.shaped.is_meta for blob in net.blobs.values())
    assert net.blobs["fc7"].data.any()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in FILES])
def test_weights_round_trip(name, tmp_path):
    net = zoo_net(name)
    fill(net, seed=3)
    x = image(net)
    expected = net.forward(data=x)["prob"].copy()
    path = tmp_path / "weights.caffemodel"
    net.save(path)
    other = zoo_net(name)
    copied = other.copy_from(path)
    assert copied == len(net.params)
    for layer, blobs in net.params.items():
        for a, b in zip(blobs, other.params[layer]):
            np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(other.forward(data=x)["prob"], expected)
    # the file is a plain NetParameter with the layers' names, as Caffe writes it
    saved = protoio.read_binary(path, caffe_pb2.NetParameter)
    assert [lp.name for lp in saved.layer if len(lp.blobs)] == list(net.params)


# ---------------------------------------------------------------- fast mode

def copy_params(src, dst):
    for layer, blobs in src.params.items():
        for a, b in zip(blobs, dst.params[layer]):
            b.data[...] = a.data


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in FILES])
def test_fast_mode_is_close_to_fp32(name):
    exact = zoo_net(name)
    fill(exact)
    fast = zoo_net(name, fast=True)
    copy_params(exact, fast)       # writes through fast mode's channels_last parameters
    x = image(exact)
    p32 = exact.forward(data=x)["prob"].copy()
    p16 = fast.forward(data=x)["prob"]
    assert p16.dtype == np.float32
    logits = list(exact.blobs)[-2]
    a, b = fast.blobs[logits].data, exact.blobs[logits].data
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()     # bf16: loose
    assert np.abs(p16 - p32).max() <= 0.02
    # the runtime really ran in bf16 and channels_last
    assert any(b.tensor.dtype == torch.bfloat16 for b in fast.blobs.values())
    conv = next(l for l in fast.layers if l.type == "Convolution")
    assert conv.blobs[0].tensor.is_contiguous(memory_format=torch.channels_last)


def test_fast_inference_net_loads_and_saves_a_caffemodel(tmp_path):
    exact = zoo_net("googlenet")
    fill(exact, seed=4)
    path = tmp_path / "googlenet.caffemodel"
    exact.save(path)
    fast = caffe.Net(str(ZOO / FILES["googlenet"]), str(path), caffe.TEST, fast=True)
    fast.blobs["data"].reshape(1, 3, 224, 224)
    fast.reshape()
    x = image(exact)
    p32 = exact.forward(data=x)["prob"].copy()
    assert np.abs(fast.forward(data=x)["prob"] - p32).max() <= 0.02
    # what it saves is its bf16 weights as float32: within bf16 rounding of the originals
    fast.save(tmp_path / "again.caffemodel")
    again = zoo_net("googlenet")
    again.copy_from(tmp_path / "again.caffemodel")
    w, w0 = again.params["inception_4a/3x3"][0].data, exact.params["inception_4a/3x3"][0].data
    assert np.allclose(w, w0, rtol=1 / 128, atol=1e-30) and not np.array_equal(w, w0)


def test_fast_mode_blobs_read_and_write_as_float32():
    net = zoo_net("caffenet", fast=True)
    fill(net)
    ref = zoo_net("caffenet")
    copy_params(net, ref)
    for blob in list(net.blobs.values()) + [b for bs in net.params.values() for b in bs]:
        assert blob.data.dtype == np.float32
    net.forward(data=image(net))
    for name, blob in net.blobs.items():
        assert blob.data.dtype == np.float32, name
        assert blob.data.shape == blob.shape
    # a write into an intermediate blob is what the rest of the net computes from
    pool5 = np.random.default_rng(5).random(net.blobs["pool5"].shape).astype(np.float32)
    net.blobs["pool5"].data[...] = pool5
    assert np.allclose(net.blobs["pool5"].data, pool5, rtol=1 / 128, atol=0)   # bf16 storage
    out = net.forward(start="fc6")["prob"].copy()
    ref.blobs["pool5"].data[...] = pool5
    expected = ref.forward(start="fc6")["prob"]
    assert np.abs(out - expected).max() <= 0.02
    # parameters: an inference net in fast mode keeps convolution and inner product
    # parameters in bf16, shown as float32; a write changes the output
    fc8 = net.params["fc8"][1]
    assert fc8.tensor.dtype == torch.bfloat16 and fc8.data.dtype == np.float32
    fc8.data[...] = 0
    fc8.data[7] = 50.0
    assert net.forward(start="fc6")["prob"][0].argmax() == 7
    assert fc8.data[7] == 50.0 and fc8.data.sum() == 50.0


TRAIN_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 3 dim: 16 dim: 16 } shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
                            weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def train_net(tmp_path, fast):
    path = tmp_path / "train.prototxt"
    path.write_text(TRAIN_NET)
    return caffe.Net(str(path), caffe.TRAIN, fast=fast)


def test_fast_mode_trains(tmp_path):
    caffe.set_random_seed(0)
    exact = train_net(tmp_path, fast=False)
    fast = train_net(tmp_path, fast=True)
    copy_params(exact, fast)
    rng = np.random.default_rng(0)
    label = np.arange(8) % 4
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    x += label[:, None, None, None]     # learnable: the class shifts the image
    for net in (exact, fast):
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = label
        net.clear_param_diffs()
        net.forward()
        net.backward()
    assert fast.blobs["loss"].data == pytest.approx(float(exact.blobs["loss"].data), rel=0.02)
    for layer in ("conv1", "fc"):
        for a, b in zip(fast.params[layer], exact.params[layer]):
            assert a.diff.dtype == np.float32
            assert np.linalg.norm(a.diff - b.diff) <= 0.1 * np.linalg.norm(b.diff)   # bf16
    assert fast.blobs["conv1"].diff.dtype == np.float32
    # plain SGD through the pycaffe surface lowers the loss in fast mode
    first = float(fast.blobs["loss"].data)
    for _ in range(20):
        for blobs in fast.params.values():
            for blob in blobs:
                blob.data[...] -= 0.05 * blob.diff
        fast.clear_param_diffs()
        fast.forward()
        fast.backward()
    assert float(fast.blobs["loss"].data) < 0.5 * first


def test_set_fast_is_the_default_for_new_nets():
    try:
        caffe.set_fast(True)
        assert zoo_net("caffenet").fast
        assert not zoo_net("caffenet", fast=False).fast
    finally:
        caffe.set_fast(False)
    assert not zoo_net("caffenet").fast


def test_cleared_param_diffs_read_as_zeros_and_do_not_accumulate(tmp_path):
    net = train_net(tmp_path, fast=False)
    net.blobs["data"].data[...] = 1.0
    net.blobs["label"].data[...] = 0
    net.forward()
    net.backward()
    once = net.params["fc"][0].diff.copy()
    assert np.abs(once).max() > 0
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["fc"][0].diff, 2 * once, rtol=1e-5)  # accumulates
    net.clear_param_diffs()
    assert not net.params["fc"][0].diff.any()
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["fc"][0].diff, once, rtol=1e-5)
