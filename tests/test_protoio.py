"""Caffe's files: the schema, prototxt errors, binary files, blobs, V1 upgrade, weights."""
import numpy as np
import pytest

import models.caffe as caffe
from models.caffe import datum, protoio
from models.caffe.errors import CaffeError
from models.caffe.proto import build, caffe_pb2
from models.caffe.upgrade import upgrade_net, upgrade_solver

SMALL = """
name: "small"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.prototxt"
    p.write_text(SMALL)
    return p


def test_checked_in_caffe_pb2_is_fresh():
    assert build.main(["--check"]) == 0


def test_schema_numbers_are_caffes():
    f = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert f["convolution_param"].number == 106 and f["blobs"].number == 7
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    assert caffe_pb2.Datum.DESCRIPTOR.fields_by_name["encoded"].number == 7
    assert caffe_pb2.SolverState.DESCRIPTOR.fields_by_name["history"].number == 3
    assert caffe_pb2.V1LayerParameter.INNER_PRODUCT == 14
    assert caffe.proto.caffe_pb2 is caffe_pb2


def test_bad_prototxt_names_file_line_column_and_field(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  typo_field: 3\n}\n')
    with pytest.raises(CaffeError) as e:
        caffe.Net(str(p), caffe.TEST)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4:3:") and "typo_field" in msg
    assert "\n" not in msg


def test_missing_and_binary_files_are_one_line_errors(tmp_path, small):
    with pytest.raises(CaffeError, match="file not found"):
        caffe.Net(str(tmp_path / "none.prototxt"), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(small), caffe.TEST).save(weights)
    with pytest.raises(CaffeError, match="not a text prototxt"):
        caffe.Net(str(weights), caffe.TEST)


def test_truncated_and_foreign_binaries_are_clear_errors(tmp_path, small):
    net = caffe.Net(str(small), caffe.TEST)
    w = tmp_path / "w.caffemodel"
    net.save(w)
    data = w.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeError, match="truncated or foreign"):
        net.copy_from(str(cut))
    jpg = tmp_path / "photo.caffemodel"
    jpg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40)
    with pytest.raises(CaffeError) as e:
        net.copy_from(str(jpg))
    assert str(jpg) in str(e.value)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeError, match="empty file"):
        net.copy_from(str(empty))


def test_unknown_layer_type_names_layer_and_type(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                 'layer { name: "weird" type: "Frobnicate" bottom: "x" top: "y" }\n')
    with pytest.raises(CaffeError, match=r"layer 'weird'.*unknown layer type 'Frobnicate'"):
        caffe.Net(str(p), caffe.TEST)


def test_unknown_bottom_is_named(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }\n')
    with pytest.raises(CaffeError, match="unknown bottom blob 'nope'"):
        caffe.Net(str(p), caffe.TEST)


def test_save_and_copy_from_round_trip(tmp_path, small):
    caffe.set_random_seed(1)
    a = caffe.Net(str(small), caffe.TEST)
    w = tmp_path / "w.caffemodel"
    a.save(str(w))
    parsed = protoio.read_binary(w, caffe_pb2.NetParameter)
    assert [l.name for l in parsed.layer] == ["input", "conv", "relu", "fc", "prob"]
    assert list(parsed.layer[1].blobs[0].shape.dim) == [4, 3, 3, 3]
    b = caffe.Net(str(small), str(w), caffe.TEST)
    x = np.random.RandomState(0).randn(2, 3, 8, 8).astype(np.float32)
    pa = a.forward(data=x)["prob"].copy()
    pb = b.forward(data=x)["prob"]
    np.testing.assert_array_equal(pa, pb)
    for name in a.params:
        for i in range(len(a.params[name])):
            np.testing.assert_array_equal(a.params[name][i].data, b.params[name][i].data)


def test_copy_from_skips_missing_layers_and_names_shape_mismatch(tmp_path, small):
    net = caffe.Net(str(small), caffe.TEST)
    w = tmp_path / "w.caffemodel"
    net.save(w)
    # a net with fc renamed (skipped) and conv widened (mismatch)
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(SMALL.replace('name: "fc"', 'name: "fc_new"'))
    other = caffe.Net(str(renamed), caffe.TEST)
    before = other.params["fc_new"][0].data.copy()
    other.copy_from(str(w))
    np.testing.assert_array_equal(other.params["fc_new"][0].data, before)
    np.testing.assert_array_equal(other.params["conv"][0].data, net.params["conv"][0].data)
    wide = tmp_path / "wide.prototxt"
    wide.write_text(SMALL.replace("num_output: 4", "num_output: 6"))
    with pytest.raises(CaffeError) as e:
        caffe.Net(str(wide), str(w), caffe.TEST)
    msg = str(e.value)
    assert "'conv'" in msg and "(4, 3, 3, 3)" in msg and "(6, 3, 3, 3)" in msg



def test_weights_with_missing_values_name_the_layer(tmp_path, small):
    """A .caffemodel whose blob has its shape but fewer values (cut by hand or by a faulty
    writer): one CaffeError naming the file, the layer and the counts."""
    from models.caffe.proto import caffe_pb2
    w = tmp_path / "w.caffemodel"
    caffe.Net(str(small), caffe.TEST).save(w)
    param = caffe_pb2.NetParameter()
    param.ParseFromString(w.read_bytes())
    conv = next(layer for layer in param.layer if layer.name == "conv")
    del conv.blobs[0].data[:3]
    w.write_bytes(param.SerializeToString())
    with pytest.raises(CaffeError) as e:
        caffe.Net(str(small), str(w), caffe.TEST)
    assert str(e.value) == (f"{w}: param 0 of layer 'conv': blob holds 105 values but its "
                            "shape (4, 3, 3, 3) needs 108")


V1_NET = """
name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6
layers { name: "data_layer" type: DATA top: "d" top: "l"
  data_param { source: "db" batch_size: 2 scale: 0.5 mean_file: "m.binaryproto" crop_size: 4 mirror: true }
  include { phase: TRAIN } }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv" top: "fc" param: "shared"
  inner_product_param { num_output: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "l" top: "loss" loss_weight: 2 }
"""


def test_v1_upgrade_matches_caffes_rules():
    net = protoio.parse_text(V1_NET, caffe_pb2.NetParameter())
    upgrade_net(net)
    assert not len(net.layers) and not len(net.input) and not len(net.input_dim)
    types = [(l.name, l.type) for l in net.layer]
    assert types == [("input", "Input"), ("data_layer", "Data"), ("conv", "Convolution"),
                     ("fc", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 6, 6]
    data = net.layer[1]
    assert data.transform_param.scale == 0.5 and data.transform_param.crop_size == 4
    assert data.transform_param.mirror and data.transform_param.mean_file == "m.binaryproto"
    assert not data.data_param.HasField("scale") and data.data_param.batch_size == 2
    assert data.include[0].phase == caffe_pb2.TRAIN
    conv = net.layer[2]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert net.layer[3].param[0].name == "shared"
    assert list(net.layer[4].loss_weight) == [2]


def test_v1_weights_with_legacy_4d_blobs_load(tmp_path, small):
    """A V1 .caffemodel (layers, enum types, num/channels/height/width blobs, 4-D inner-product
    weights) loads into a V2 net by layer name."""
    ref = caffe.Net(str(small), caffe.TEST)
    v1 = caffe_pb2.NetParameter(name="old")
    kinds = {"Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
             "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT}
    for name, layer in ref.layer_dict.items():
        if not layer.blobs:
            continue
        l = v1.layers.add(name=name, type=kinds[layer.type])
        for b in layer.blobs:
            arr = np.random.RandomState(len(name)).randn(*b.shape).astype(np.float32)
            l.blobs.add().CopyFrom(protoio.array_to_blobproto(arr, legacy=True))
    w = tmp_path / "v1.caffemodel"
    w.write_bytes(v1.SerializeToString())
    assert v1.layers[1].blobs[0].num == 1 and v1.layers[1].blobs[0].height == 5
    ref.copy_from(str(w))
    expect = np.random.RandomState(2).randn(5, 4 * 6 * 6).astype(np.float32)
    np.testing.assert_array_equal(ref.params["fc"][0].data, expect)


def test_blobproto_round_trip_and_fast_encoder_agree():
    arr = np.random.RandomState(3).randn(2, 3, 4).astype(np.float32)
    slow = protoio.array_to_blobproto(arr)
    fast = caffe_pb2.BlobProto.FromString(protoio.encode_blob(arr))
    assert fast == slow
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(fast), arr)
    legacy = protoio.array_to_blobproto(arr, legacy=True)
    assert (legacy.num, legacy.channels, legacy.height, legacy.width) == (1, 2, 3, 4)
    np.testing.assert_array_equal(protoio.blobproto_to_array(legacy), arr.reshape(1, 2, 3, 4))


def test_scalar_blobs_are_written_without_a_shape_as_caffe_does():
    blob = caffe_pb2.BlobProto.FromString(protoio.encode_blob(np.float32(0.25)))
    assert not blob.HasField("shape") and list(blob.data) == [0.25]
    assert protoio.blob_shape(blob) == ()


def test_mean_binaryproto_reads_as_array(tmp_path, golden):
    mean = protoio.read_blobproto(golden / "data" / "raw_meanfile_crop" / "mean.binaryproto")
    expected = np.load(golden / "data" / "raw_meanfile_crop" / "expected.npz")["mean"]
    np.testing.assert_allclose(mean.reshape(expected.shape), expected, atol=1e-4)


def test_mean_image_round_trip_as_compute_image_mean_writes_it(tmp_path, golden):
    case = golden / "data" / "raw_meanfile_crop"
    mean = protoio.read_mean_image(case / "mean.binaryproto")
    assert mean.ndim == 3 and mean.dtype == np.float32
    assert protoio.mean_image_bytes(mean) == (case / "mean.binaryproto").read_bytes()
    flat = tmp_path / "flat.binaryproto"
    protoio.write_binary(flat, protoio.array_to_blobproto(np.zeros((2, 6), np.float32)))
    with pytest.raises(CaffeError, match=r"flat.binaryproto: holds a \(2, 6\) blob"):
        protoio.read_mean_image(flat)


def test_datum_codec_raw_encoded_and_corrupt():
    raw = datum.decode_datum(datum.encode_datum(bytes(range(24)), 3, shape=(2, 3, 4)))
    assert (raw.channels, raw.height, raw.width, raw.label, raw.encoded) == (2, 3, 4, 3, False)
    assert raw.HasField("encoded") and raw.data == bytes(range(24))
    enc = datum.decode_datum(datum.encode_datum(b"\xff\xd8jpeg", 1, encoded=True))
    assert enc.encoded and not enc.HasField("channels") and enc.data == b"\xff\xd8jpeg"
    with pytest.raises(ValueError, match="not a Datum"):
        datum.decode_datum(b"\x0a\xff\xff\xff")


def test_solver_type_upgrade():
    sp = protoio.parse_text("solver_type: NESTEROV base_lr: 0.1", caffe_pb2.SolverParameter())
    upgrade_solver(sp)
    assert sp.type == "Nesterov" and not sp.HasField("solver_type")
    both = protoio.parse_text('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter())
    with pytest.raises(CaffeError, match="both solver_type"):
        upgrade_solver(both)
