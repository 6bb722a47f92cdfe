"""Hostile prototxts: a blob larger than max_blob_bytes (runtime.max_blob_bytes in config.yaml)
is refused before anything is allocated, with one line naming the prototxt, the layer and the
shape; never a raw allocation error or gigabytes of memory."""
import subprocess
import sys

import numpy as np
import pytest

import models.caffe as caffe
from conftest import ROOT
from models.caffe import limits
from models.caffe.errors import CaffeError

HUGE_CUBE = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 100000 dim: 100000 dim: 100000 } } }
"""
BIG_IMAGE = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20000 dim: 20000 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""
HUGE_WEIGHTS = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 100000 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 1000000 } }
"""
HUGE_TOP = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param { num_output: 64 kernel_size: 4 stride: 4000 } }
"""
NEGATIVE = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: -3 } } }
"""
SMALL = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""


@pytest.fixture(autouse=True)
def default_limit():
    caffe.set_max_blob_bytes(limits.DEFAULT_MAX_BLOB_BYTES)
    yield
    caffe.set_max_blob_bytes(limits.DEFAULT_MAX_BLOB_BYTES)


def _refused(tmp_path, text):
    path = tmp_path / "hostile.prototxt"
    path.write_text(text)
    with pytest.raises(CaffeError) as e:
        caffe.Net(str(path), caffe.TEST)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: layer ")
    return message


@pytest.mark.parametrize("text, layer, shape", [
    (HUGE_CUBE, "'input' (Input): top 'data'", "100000 x 100000 x 100000"),
    (BIG_IMAGE, "'input' (Input): top 'data'", "1 x 3 x 20000 x 20000"),
    (HUGE_WEIGHTS, "'fc' (InnerProduct): weights", "1000000 x 100000"),
    (HUGE_TOP, "'up' (Deconvolution): top 'up'", "1 x 64 x 28004 x 28004"),
    (NEGATIVE, "'input' (Input): top 'data'", "2 x -3"),
], ids=["input_100000_cubed", "input_1x3x20000x20000", "inner_product_weights",
        "deconvolution_top", "negative_axis"])
def test_hostile_shapes_are_one_line_naming_prototxt_layer_and_shape(tmp_path, text, layer,
                                                                      shape):
    message = _refused(tmp_path, text)
    assert f"layer {layer}: shape {shape} " in message
    assert "max_blob_bytes" in message or "negative" in message


def test_the_limit_is_settable_and_checked_on_reshape(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(SMALL)
    net = caffe.Net(str(path), caffe.TEST)            # 2 x 3 x 4 x 4 floats: 384 bytes
    caffe.set_max_blob_bytes(383)
    with pytest.raises(CaffeError, match="'input' \\(Input\\): top 'data': shape 2 x 3 x 4 x 4"):
        caffe.Net(str(path), caffe.TEST)
    caffe.set_max_blob_bytes(10_000)
    with pytest.raises(CaffeError, match="shape 100 x 3 x 4 x 4 needs 19200 bytes"):
        net.blobs["data"].reshape(100, 3, 4, 4)
    net.blobs["data"].reshape(4, 3, 4, 4)
    net.reshape()
    out = net.forward(data=-np.ones((4, 3, 4, 4), np.float32))["out"]
    assert out.shape == (4, 3, 4, 4) and not out.any()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(CaffeError, match="max_blob_bytes"):
            caffe.set_max_blob_bytes(bad)


def test_refusal_allocates_nothing_big(tmp_path):
    """Building the 4.5 GiB input net ends in the error with the process's peak memory far
    below the blob's size (a child process, so the peak is this build's alone)."""
    path = tmp_path / "big.prototxt"
    path.write_text(BIG_IMAGE)
    code = (
        "import resource, sys, models.caffe as caffe\n"
        f"try:\n    caffe.Net({str(path)!r}, caffe.TEST)\n"
        "except caffe.CaffeError as e:\n    print('refused:', e)\n"
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "1 x 3 x 20000 x 20000" in r.stdout
    peak_kib = int(r.stdout.split("peak_kib")[1])
    assert peak_kib < 1_500_000, peak_kib     # torch alone is a few hundred MB; the blob 4.5 GB


def test_cli_takes_the_limit_from_config_and_prints_one_line(cli, tmp_path):
    (tmp_path / "small.prototxt").write_text(SMALL)
    (tmp_path / "big.prototxt").write_text(BIG_IMAGE)
    r = cli("time", "-model", "big.prototxt", "-iterations", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.strip().splitlines() if "error" in l]
    assert len(lines) == 1 and "big.prototxt: layer 'input' (Input)" in lines[0]
    assert "1 x 3 x 20000 x 20000" in lines[0] and "Traceback" not in r.stderr
    r = cli("time", "-model", "small.prototxt", "-iterations", "1", "--set",
            "runtime.max_blob_bytes=100", cwd=tmp_path)
    assert r.returncode == 2 and "limit of 100 bytes" in r.stderr, r.stderr[-2000:]
    r = cli("time", "-model", "small.prototxt", "-iterations", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
