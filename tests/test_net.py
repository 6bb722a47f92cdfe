"""Net semantics beyond the golden cases: NetState rules, backward bookkeeping, pycaffe surface."""
import numpy as np
import pytest
import torch

import models.caffe as caffe
from models.caffe.errors import CaffeError


def net_from(tmp_path, text, phase=caffe.TEST, **kw):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return caffe.Net(str(p), phase, **kw)


RULES = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "TanH" bottom: "x" top: "a" include { phase: TEST } }
layer { name: "deep" type: "Sigmoid" bottom: "x" top: "s" include { min_level: 2 } }
layer { name: "staged" type: "AbsVal" bottom: "x" top: "st" include { stage: "deploy" } }
layer { name: "not_staged" type: "AbsVal" bottom: "x" top: "ns" exclude { stage: "deploy" } }
"""


def test_include_exclude_by_phase_level_and_stage(tmp_path):
    names = lambda net: [l.name for l in net.layers if l.type != "Split"]  # noqa: E731
    test = net_from(tmp_path, RULES, caffe.TEST)
    assert names(test) == ["in", "test_only", "not_staged"]
    train = net_from(tmp_path, RULES, caffe.TRAIN, level=2, stages=["deploy"])
    assert names(train) == ["in", "train_only", "deep", "staged"]


BRANCHES = """
force_backward: false
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "x" top: "f" param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss_a" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "la" }
layer { name: "loss_b" type: "EuclideanLoss" bottom: "f" bottom: "y" top: "lb" loss_weight: 0.5 propagate_down: true propagate_down: false }
layer { name: "side" type: "Sigmoid" bottom: "h" top: "side" }
"""


def test_backward_bookkeeping_matches_caffe(tmp_path):
    net = net_from(tmp_path, BRANCHES)
    flags = dict(zip(net._layer_names, net.layer_need_backward))
    assert flags["ip"] and flags["loss_a"]
    assert not flags["frozen"]          # no trainable params and its input needs no backward
    assert not flags["loss_b"]          # nothing below it learns
    assert not flags["side"]            # does not reach a loss
    assert net.blob_loss_weights["la"] == 1.0 and net.blob_loss_weights["lb"] == 0.5
    rs = np.random.RandomState(0)
    x, y = rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    net.forward(x=x, y=y)
    net.backward()
    h = net.blobs["h_ip_0_split_0"].data
    w = net.params["ip"][0].data
    expect_h = (h - y) / 4.0   # EuclideanLoss gradient / batch, loss weight 1
    np.testing.assert_allclose(net.blobs["h_ip_0_split_0"].diff, expect_h, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].diff, expect_h.T @ x, rtol=1e-4, atol=1e-5)
    assert not net.params["frozen"][0].diff.any()
    assert not net.blobs["x"].diff.any()   # inputs get no diff without force_backward
    assert not net.blobs["f"].diff.any()
    assert w.shape == (3, 3)


def test_param_diffs_accumulate_until_cleared(tmp_path):
    net = net_from(tmp_path, BRANCHES)
    rs = np.random.RandomState(1)
    x, y = rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    net.forward(x=x, y=y)
    net.backward()
    once = net.params["ip"][0].diff.copy()
    net.forward(x=x, y=y)
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * once, rtol=1e-5)
    net.clear_param_diffs()
    assert not net.params["ip"][0].diff.any()


def test_cleared_param_diff_is_one_buffer(tmp_path):
    """Caffe's .diff is one buffer: an array taken before clear_param_diffs sees the zeros,
    then what the next backward accumulates."""
    net = net_from(tmp_path, BRANCHES)
    rs = np.random.RandomState(2)
    x, y = rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    net.forward(x=x, y=y)
    net.backward()
    view = net.params["ip"][0].diff
    once = view.copy()
    assert once.any()
    net.clear_param_diffs()
    assert not view.any()
    net.forward(x=x, y=y)
    net.backward()
    np.testing.assert_allclose(view, once, rtol=1e-6)


def test_blob_diff_is_one_buffer_across_backwards(tmp_path):
    """On the CPU, a blob's .diff taken after one backward shows the next backward's values,
    as Caffe's one diff buffer does."""
    net = net_from(tmp_path, BRANCHES)
    rs = np.random.RandomState(5)
    x, y = rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    net.forward(x=x, y=y)
    net.backward()
    view = net.blobs["h"].diff
    first = view.copy()
    net.forward(x=x, y=2 * y)
    net.backward()
    assert not np.allclose(view, first)
    np.testing.assert_array_equal(view, net.blobs["h"].diff)


def test_diffs_backward_does_not_write_keep_their_values(tmp_path):
    """Caffe's backward writes only the bottoms it propagates to, and runs each layer on what
    its tops' diffs hold: a diff the user wrote where no layer propagates (the label y, the
    Split top the Sigmoid reads, the Sigmoid's top) is still there after backward, and the
    Split adds the one on its top into h, as Caffe's SplitLayer::Backward does."""
    net = net_from(tmp_path, BRANCHES)
    rs = np.random.RandomState(3)
    x, y = rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    net.forward(x=x, y=y)
    net.blobs["y"].diff[...] = 7.0
    net.blobs["side"].diff[...] = 5.0
    net.blobs["h_ip_0_split_1"].diff[...] = 3.0
    net.backward()
    assert (net.blobs["y"].diff == 7.0).all()
    assert (net.blobs["side"].diff == 5.0).all()
    assert (net.blobs["h_ip_0_split_1"].diff == 3.0).all()
    h = net.blobs["h"].data
    np.testing.assert_allclose(net.blobs["h"].diff, (h - y) / 4 + 3.0, rtol=1e-5, atol=1e-6)


def test_backward_of_a_net_that_needs_none_is_a_no_op(tmp_path):
    """As in Caffe (golden nets/argmax): nothing needs backward, so backward leaves every diff
    as it is, even before any forward."""
    net = net_from(tmp_path, """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "am" type: "ArgMax" bottom: "x" top: "am" }
""")
    assert not any(net.layer_need_backward)
    net.blobs["am"].diff[...] = 2.0
    assert set(net.backward()) == {"x"}
    net.forward(x=np.arange(10, dtype=np.float32).reshape(2, 5))
    out = net.backward()
    assert not out["x"].any()
    assert (net.blobs["am"].diff == 2.0).all()


def test_inplace_relu_dropout_chain_leaves_masked_gradient(tmp_path):
    """VGG16's fc6 -> relu6 -> drop6 (in place, TEST) -> fc7: fc6's diff is what Caffe leaves
    there, the gradient through the ReLU mask (4-D bottom, as pool5 is)."""
    net = net_from(tmp_path, """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 2 dim: 2 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "x" top: "fc6" inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
""")
    rs = np.random.RandomState(4)
    x = rs.randn(3, 2, 2, 2).astype(np.float32)
    w6, b6 = (p.data.copy() for p in net.params["fc6"])
    w7 = net.params["fc7"][0].data.copy()
    top = rs.randn(3, 4).astype(np.float32)
    net.forward(x=x)
    net.backward(fc7=top)
    pre = x.reshape(3, -1) @ w6.T + b6
    expect = (top @ w7) * (pre > 0)
    assert expect.any() and not expect.all()
    np.testing.assert_allclose(net.blobs["fc6"].data, np.maximum(pre, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.blobs["fc6"].diff, expect, rtol=1e-4, atol=1e-5)


def test_backward_without_forward_is_a_clear_error(tmp_path):
    net = net_from(tmp_path, BRANCHES)
    with pytest.raises(CaffeError, match="needs a forward"):
        net.backward()


DROPOUT = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1000 dim: 10 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.3 } }
"""


def test_dropout_scales_at_train_time_and_passes_at_test(tmp_path):
    caffe.set_random_seed(5)
    x = np.ones((1000, 10), np.float32)
    train = net_from(tmp_path, DROPOUT, caffe.TRAIN)
    out = train.forward(x=x)["x"]
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    test = net_from(tmp_path, DROPOUT, caffe.TEST)
    np.testing.assert_array_equal(test.forward(x=x)["x"], x)
    off = net_from(tmp_path, DROPOUT.replace("0.3", "0"), caffe.TRAIN)
    np.testing.assert_array_equal(off.forward(x=x)["x"], x)


SHARED = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" }
  inner_product_param { num_output: 4 } }
"""


def test_params_shared_by_name(tmp_path):
    net = net_from(tmp_path, SHARED)
    assert net.params["a"][0] is net.params["b"][0]
    assert len(net.learnable_params) == 2
    x = np.random.RandomState(2).randn(2, 4).astype(np.float32)
    w = net.params["a"][0].data
    out = net.forward(x=x)["b"]
    np.testing.assert_allclose(out, (x @ w.T) @ w.T, rtol=1e-5, atol=1e-6)


def test_reshape_and_pycaffe_surface(tmp_path):
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 2 kernel_size: 3 stride: 2 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    """
    net = net_from(tmp_path, text)
    assert net.inputs == ["data"] and net.outputs == ["pool"]
    assert net.blobs["conv"].data.shape == (1, 2, 3, 3)
    assert net.blobs["pool"].shape == (1, 2, 2, 2)   # ceil rounding: (3 - 2) / 2 -> 1 + 1
    net.blobs["data"].reshape(4, 3, 16, 16)
    net.reshape()
    assert net.blobs["conv"].data.shape == (4, 2, 7, 7)
    assert net.blobs["pool"].num == 4 and net.blobs["pool"].height == 4
    net.blobs["data"].data[...] = 1.0
    out = net.forward()
    assert out["pool"].shape == (4, 2, 4, 4)
    assert list(net.top_names["conv"]) == ["conv"] and net.bottom_names["pool"] == ["conv"]
    assert [l.type for l in net.layers] == ["Input", "Convolution", "Pooling"]


def test_forward_start_end_and_blobs(tmp_path):
    net = net_from(tmp_path, SHARED)
    x = np.random.RandomState(3).randn(2, 4).astype(np.float32)
    out = net.forward(end="a", x=x)
    assert set(out) == {"a"}
    net.blobs["a"].data[...] = 0
    out = net.forward(start="b")
    np.testing.assert_allclose(out["b"], np.broadcast_to(net.params["b"][1].data, (2, 4)))


def test_fillers_follow_caffe_definitions():
    from models.caffe.filler import fill
    from models.caffe.proto import caffe_pb2 as pb
    torch.manual_seed(0)
    t = fill((400, 50), pb.FillerParameter(type="xavier"))
    assert t.abs().max() <= np.sqrt(3 / 50) + 1e-6
    t = fill((400, 50), pb.FillerParameter(type="msra", variance_norm=pb.FillerParameter.FAN_OUT))
    assert abs(t.std().item() - np.sqrt(2 / 400)) < 0.01
    t = fill((20, 30), pb.FillerParameter(type="positive_unitball"))
    np.testing.assert_allclose(t.sum(1).numpy(), 1.0, rtol=1e-5)
    t = fill((1, 1, 4, 4), pb.FillerParameter(type="bilinear"))
    np.testing.assert_allclose(t[0, 0, 0].numpy(), [0.0625, 0.1875, 0.1875, 0.0625])
    t = fill((10, 1000), pb.FillerParameter(type="gaussian", std=1, sparse=2))  # p = 2 / 10
    assert 0.15 < (t != 0).float().mean().item() < 0.25
    with pytest.raises(CaffeError, match="unknown filler"):
        fill((2,), pb.FillerParameter(type="nope"))


def test_transformer_matches_pycaffe_conventions():
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    img = np.random.RandomState(0).rand(4, 4, 3).astype(np.float32)
    x = t.preprocess("data", img)
    np.testing.assert_allclose(x[0], img[:, :, 2] * 255 - 10, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), img, rtol=1e-5, atol=1e-5)
    crops = caffe.io.oversample([np.zeros((6, 8, 3), np.float32)], (4, 4))
    assert crops.shape == (10, 4, 4, 3)


def test_datum_round_trip():
    arr = (np.arange(2 * 3 * 4) % 256).astype(np.uint8).reshape(2, 3, 4)
    d = caffe.io.array_to_datum(arr, label=7)
    assert d.label == 7 and (d.channels, d.height, d.width) == (2, 3, 4)
    np.testing.assert_array_equal(caffe.io.datum_to_array(d), arr)
    f = caffe.io.array_to_datum(arr.astype(np.float32) / 3)
    np.testing.assert_allclose(caffe.io.datum_to_array(f), arr / 3, rtol=1e-6)
    import io

    from PIL import Image
    rgb = (np.arange(5 * 4 * 3) * 7 % 256).astype(np.uint8).reshape(5, 4, 3)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    e = caffe.proto.caffe_pb2.Datum(data=png.getvalue(), encoded=True, label=1)
    np.testing.assert_array_equal(caffe.io.datum_to_array(e), rgb[:, :, ::-1].transpose(2, 0, 1))
