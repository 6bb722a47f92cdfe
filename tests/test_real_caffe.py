"""The runtime side by side with real BVLC Caffe (pycaffe and the ``caffe`` command).

Marked ``pycaffe``: skipped unless ``import caffe`` gives real Caffe, e.g. with
``DEEPSELFIE_PYCAFFE_PATH=/work/caffe-real/python`` (see tests/conftest.py).

- a .caffemodel written by the runtime (``Net.save``) loads in real Caffe with the same parameters,
  and both compute the same blobs: every golden net, the small selfie net, VGG16;
- a .caffemodel written by real Caffe loads in the runtime, same blobs;
- ``caffe time`` runs VGG16 (what the benchmarks compare against).
Tolerance as for the golden cases: max|a - b| / (max|b| + 1e-8) <= 1e-5 for forward values.
"""
import json
import re
import subprocess

import numpy as np
import pytest

import models.caffe as runtime
import real_caffe
from conftest import GOLDEN, ROOT
from golden import rel_err

pytestmark = pytest.mark.pycaffe

FORWARD_TOL = 1e-5
NET_CASES = sorted(p.name for p in (GOLDEN / "nets").iterdir()) if (GOLDEN / "nets").is_dir() else []
SMALL = ROOT / "prototxt" / "selfie_small_deploy.prototxt"
VGG16 = ROOT / "prototxt" / "selfie_vgg16_deploy.prototxt"


def _assert_same_params(ours, theirs, exact=True):
    """``ours``: a runtime Net; ``theirs``: real Caffe's params ({layer: [arrays]})."""
    assert list(ours.params) == list(theirs)
    for layer, arrays in theirs.items():
        assert len(ours.params[layer]) == len(arrays), layer
        for i, (blob, want) in enumerate(zip(ours.params[layer], arrays)):
            assert blob.data.shape == want.shape, (layer, i, blob.data.shape, want.shape)
            if exact:
                assert np.array_equal(blob.data, want), f"param {layer}/{i} differs"
            else:
                assert rel_err(blob.data, want) <= FORWARD_TOL, f"param {layer}/{i} differs"


def _assert_same_blobs(ours, theirs: real_caffe.Result, tol=FORWARD_TOL):
    assert list(ours.blobs) == list(theirs.blobs)
    assert ours.outputs == theirs.outputs
    errs = {name: rel_err(ours.blobs[name].data, want) for name, want in theirs.blobs.items()}
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"runtime and real Caffe differ: {bad}"


def _forward(net, inputs):
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    net.reshape()
    return net.forward()


def _random_images(n, size, seed, amplitude):
    rng = np.random.default_rng(seed)
    return rng.uniform(-amplitude, amplitude, (n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", NET_CASES)
def test_golden_net_saved_by_runtime_runs_the_same_in_real_caffe(golden, tmp_path, name):
    case = golden / "nets" / name
    phase = json.loads((case / "meta.json").read_text())["phase"]
    ours = runtime.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"),
                       runtime.TRAIN if phase == "TRAIN" else runtime.TEST)
    saved = tmp_path / "saved.caffemodel"
    ours.save(saved)
    with np.load(case / "inputs.npz") as npz:
        inputs = {k: npz[k] for k in npz.files}
    theirs = real_caffe.run(case / "net.prototxt", phase, weights=saved, inputs=inputs)
    _assert_same_params(ours, theirs.loaded)
    _forward(ours, inputs)
    _assert_same_blobs(ours, theirs)
    _assert_same_params(ours, theirs.params, exact=False)   # BatchNorm's running sums in TRAIN
    # and this real Caffe is the one that computed the golden numbers
    with np.load(case / "blobs.npz") as expected:
        real = {k: rel_err(theirs.blobs[k], expected[k]) for k in expected.files
                if not k.startswith("param/")}
    assert max(real.values()) <= FORWARD_TOL, real


def test_small_net_saved_by_runtime_runs_the_same_in_real_caffe(tmp_path):
    runtime.set_random_seed(7)
    ours = runtime.Net(str(SMALL), runtime.TEST)     # msra fillers: random, non-trivial weights
    saved = tmp_path / "small.caffemodel"
    ours.save(saved)
    inputs = {"data": _random_images(3, 64, seed=1, amplitude=1.0)}
    theirs = real_caffe.run(SMALL, "TEST", weights=saved, inputs=inputs)
    _assert_same_params(ours, theirs.loaded)
    out = _forward(ours, inputs)
    _assert_same_blobs(ours, theirs)
    assert list(out) == ["prob"] and out["prob"].shape == (3, 2)
    assert np.ptp(theirs.blobs["prob"][:, 1]) > 1e-3     # the three images are told apart


def test_small_net_saved_by_real_caffe_loads_in_runtime(tmp_path):
    saved = tmp_path / "from_caffe.caffemodel"
    inputs = {"data": _random_images(2, 64, seed=2, amplitude=1.0)}
    theirs = real_caffe.run(SMALL, "TEST", seed=11, save=saved, inputs=inputs)
    ours = runtime.Net(str(SMALL), str(saved), runtime.TEST)
    _assert_same_params(ours, theirs.loaded)
    _forward(ours, inputs)
    _assert_same_blobs(ours, theirs)


@pytest.mark.slow
def test_vgg16_saved_by_runtime_runs_the_same_in_real_caffe(tmp_path):
    ours = runtime.Net(str(VGG16), runtime.TEST)
    rng = np.random.default_rng(0)
    for name, (weight, bias) in ours.params.items():    # He-scaled random weights (deploy has
        fan_in = int(np.prod(weight.shape[1:]))          # no fillers: it would be all zeros)
        scale = np.sqrt(2.0 / fan_in) * (0.01 if name == "fc8_selfie" else 1.0)
        weight.data[...] = rng.standard_normal(weight.shape, dtype=np.float32) * np.float32(scale)
        bias.data[...] = rng.uniform(-0.1, 0.1, bias.shape).astype(np.float32)
    saved = tmp_path / "vgg16.caffemodel"
    ours.save(saved)
    inputs = {"data": _random_images(1, 224, seed=3, amplitude=128.0)}
    try:
        theirs = real_caffe.run(VGG16, "TEST", weights=saved, inputs=inputs)
    finally:
        saved.unlink()   # 537 MB
    _assert_same_params(ours, theirs.loaded)
    _forward(ours, inputs)
    _assert_same_blobs(ours, theirs)
    prob = theirs.blobs["prob"]
    assert prob.shape == (1, 2) and 0.01 < prob[0, 1] < 0.99


@pytest.mark.slow
def test_caffe_time_runs_vgg16(caffe_bin):
    proc = subprocess.run([str(caffe_bin), "time", "-model", str(VGG16), "-iterations", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr

    def ms(label):
        m = re.search(rf"{re.escape(label)}: ([0-9.]+) ms", log)
        assert m, f"no {label!r} line in caffe time's output"
        return float(m.group(1))

    forward, backward, both = (ms("Average Forward pass"), ms("Average Backward pass"),
                               ms("Average Forward-Backward"))
    assert forward > 0 and backward >= 0 and both >= forward
    timed = set(re.findall(r"\]\s+(\S+)\tforward: [0-9.]+ ms", log))
    convs = {f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
             for i in range(1, n + 1)}
    assert convs | {"fc6", "fc7", "fc8_selfie", "prob"} <= timed
