"""MTCNN weights: the pinned wheel is fetched with pip from a package index (one served on
127.0.0.1 here), checked, read without importing facenet_pytorch, converted to .caffemodels
that the runtime runs exactly like an independent computation on the original state dicts."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models.caffe as caffe
from deepselfie.errors import UserError
from faces_support import (PackageIndex, closed_port_url, hermetic_pip_env, models_dir,  # noqa
                           photo, wheel_path)
from models.caffe.proto import caffe_pb2
from models.faces import convert


# ---------------------------------------------------------------- an independent computation
# MTCNN written out with torch.nn.functional on facenet-pytorch's state dicts, in facenet-pytorch's
# own layout: dense layers read the feature map permuted to (N, W, H, C).

def _cp(x, s, conv, prelu):
    return F.prelu(F.conv2d(x, s[f"{conv}.weight"], s[f"{conv}.bias"]), s[f"{prelu}.weight"])


def _dense(x, s, name):
    return F.linear(x, s[f"{name}.weight"], s[f"{name}.bias"])


def pnet_reference(x, s):
    x = F.max_pool2d(_cp(x, s, "conv1", "prelu1"), 2, 2, ceil_mode=True)
    x = _cp(_cp(x, s, "conv2", "prelu2"), s, "conv3", "prelu3")
    prob = F.softmax(F.conv2d(x, s["conv4_1.weight"], s["conv4_1.bias"]), dim=1)
    return {"prob1": prob, "conv4-2": F.conv2d(x, s["conv4_2.weight"], s["conv4_2.bias"])}


def rnet_reference(x, s):
    x = F.max_pool2d(_cp(x, s, "conv1", "prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_cp(x, s, "conv2", "prelu2"), 3, 2, ceil_mode=True)
    x = _cp(x, s, "conv3", "prelu3").permute(0, 3, 2, 1).reshape(len(x), -1)
    x = F.prelu(_dense(x, s, "dense4"), s["prelu4.weight"])
    return {"prob1": F.softmax(_dense(x, s, "dense5_1"), dim=1),
            "conv5-2": _dense(x, s, "dense5_2")}


def onet_reference(x, s):
    x = F.max_pool2d(_cp(x, s, "conv1", "prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_cp(x, s, "conv2", "prelu2"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_cp(x, s, "conv3", "prelu3"), 2, 2, ceil_mode=True)
    x = _cp(x, s, "conv4", "prelu4").permute(0, 3, 2, 1).reshape(len(x), -1)
    x = F.prelu(_dense(x, s, "dense5"), s["prelu5.weight"])
    return {"prob1": F.softmax(_dense(x, s, "dense6_1"), dim=1),
            "conv6-2": _dense(x, s, "dense6_2"), "conv6-3": _dense(x, s, "dense6_3")}


REFERENCE = {"pnet": pnet_reference, "rnet": rnet_reference, "onet": onet_reference}


def _face_crop(size):
    """The astronaut's face (and some margin) as a size x size MTCNN input."""
    from PIL import Image
    face = Image.fromarray(photo("astronaut")).crop((172, 50, 274, 186)).resize((size, size))
    return (np.asarray(face, np.float32).transpose(2, 0, 1)[None] - 127.5) * 0.0078125


@pytest.mark.parametrize("net_name,shape", [
    ("pnet", (2, 3, 12, 12)), ("pnet", (2, 3, 37, 51)), ("pnet", (1, 3, 64, 23)),
    ("rnet", (7, 3, 24, 24)), ("onet", (5, 3, 48, 48))])
def test_runtime_matches_independent_computation_on_fixed_inputs(models_dir, net_name, shape):
    state = convert.read_state_dicts(wheel_path())[net_name]
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g) * 2 - 1
    if net_name != "pnet":   # one real face among the random inputs
        x[0] = torch.from_numpy(_face_crop(shape[-1]))[0]
    net = caffe.Net(str(convert.prototxt_path(net_name)),
                    str(convert.caffemodel_path(models_dir, net_name)), caffe.TEST,
                    device="cpu")
    got = net.forward(data=x.numpy())
    with torch.no_grad():
        want = REFERENCE[net_name](x, state)
    assert set(want) <= set(got)
    for name, ref in want.items():
        assert got[name].shape == tuple(ref.shape), name
        np.testing.assert_allclose(got[name], ref.numpy(), atol=1e-4, rtol=0, err_msg=name)
    if net_name != "pnet":
        assert got["prob1"][0, 1] > 0.99    # the real face is a face


def test_caffemodels_are_plain_caffe_files_named_like_the_prototxt(models_dir):
    manifest = json.loads((convert.weights_dir(models_dir) / "weights.json").read_text())
    assert manifest["wheel_sha256"] == convert.WHEEL_SHA256
    for net_name in convert.NETS:
        proto = caffe_pb2.NetParameter()
        proto.ParseFromString(convert.caffemodel_path(models_dir, net_name).read_bytes())
        layers = {lp.name: [tuple(b.shape.dim) for b in lp.blobs] for lp in proto.layer}
        net = caffe.Net(str(convert.prototxt_path(net_name)), caffe.TEST)
        assert {k: v for k, v in layers.items() if v} == \
            {k: [b.shape for b in v] for k, v in net.params.items()}
        assert manifest["files"][net_name]["bytes"] == \
            convert.caffemodel_path(models_dir, net_name).stat().st_size


def test_dense_columns_are_reordered_from_whc_to_chw():
    state = convert.read_state_dicts(wheel_path())["onet"]
    blobs = convert.caffe_blobs("onet", state)
    w = state["dense5.weight"].numpy()          # columns: (w, h, c) with c fastest
    c, h, x = 5, 1, 2
    caffe_col, torch_col = c * 9 + h * 3 + x, x * 3 * 128 + h * 128 + c
    assert blobs["conv5"][0][:, caffe_col].tolist() == w[:, torch_col].tolist()
    assert blobs["conv6-3"][0].tolist() == state["dense6_3.weight"].numpy().tolist()


# ---------------------------------------------------------------- fetching the wheel

@pytest.fixture
def index(tmp_path):
    servers = []

    def start(data=None):
        srv = PackageIndex(tmp_path / f"index{len(servers)}",
                           wheel_path().read_bytes() if data is None else data)
        servers.append(srv)
        return srv
    yield start
    for s in servers:
        s.close()


@pytest.fixture
def pip_env(monkeypatch):
    for k in [k for k in list(__import__("os").environ) if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    for k, v in hermetic_pip_env().items():
        if k.startswith("PIP_"):
            monkeypatch.setenv(k, v)


def test_first_use_downloads_the_wheel_with_pip_converts_and_caches(tmp_path, index, pip_env):
    srv = index()
    models = tmp_path / "models"
    out = convert.ensure_weights(models, index_url=srv.url)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [convert.WHEEL, "onet.caffemodel", "pnet.caffemodel", "rnet.caffemodel", "weights.json"])
    assert any(r.endswith(convert.WHEEL) for r in srv.requests)
    assert convert.sha256_file(out / convert.WHEEL) == convert.WHEEL_SHA256
    n = len(srv.requests)
    convert.ensure_weights(models, index_url=srv.url)          # ready: no network
    assert len(srv.requests) == n
    (out / "onet.caffemodel").unlink()                         # damaged: rebuilt from the cache
    convert.ensure_weights(models, index_url=srv.url)
    assert len(srv.requests) == n and (out / "onet.caffemodel").is_file()


def test_a_wheel_with_the_wrong_checksum_is_refused_and_nothing_is_written(tmp_path, index,
                                                                          pip_env):
    data = bytearray(wheel_path().read_bytes())
    data[-100] ^= 0xFF
    srv = index(bytes(data))
    models = tmp_path / "models"
    with pytest.raises(UserError) as e:
        convert.ensure_weights(models, index_url=srv.url)
    assert "sha256" in str(e.value) and "--fetch-weights" in str(e.value)
    assert [p.name for p in convert.weights_dir(models).iterdir()] == []


def test_a_local_wheel_is_checked_too(tmp_path):
    bad = tmp_path / convert.WHEEL
    bad.write_bytes(b"PK\x03\x04 not the wheel")
    with pytest.raises(UserError, match="sha256 is"):
        convert.ensure_weights(tmp_path / "models", wheel=bad)


def test_offline_first_use_fails_with_one_line_saying_what_to_do(tmp_path, cli, pip_env):
    photo_path = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(photo("astronaut")).save(photo_path)
    res = cli("faces", "--image", photo_path, "--data-dir", tmp_path / "data",
              "--set", f"faces.index_url={closed_port_url()}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "--fetch-weights" in lines[0] and convert.WHEEL in lines[0]
    assert str(tmp_path / "data" / "models" / "faces") in lines[0]
    assert res.stdout == ""
