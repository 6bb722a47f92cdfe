"""fetch-weights vgg16 --source torchvision: a torchvision-style VGG16 checkpoint made by the test
(the real layer names and kernel layout, narrower layers so that it stays small), served from
127.0.0.1, converted to a .caffemodel; the Caffe net with Caffe's preprocessing must compute what
the torch net computes with torchvision's preprocessing. The torch net is written here with
torch.nn.functional (torchvision is not a dependency)."""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import models.caffe as caffe
from conftest import ROOT
from deepselfie.errors import UserError
from httpserver import FileServer
from models.caffe import protoio
from models.caffe.proto import caffe_pb2
from models.selfie import vgg16_torchvision as tv

WIDTHS = (4, 8, 16, 16, 16)          # VGG16 has 64, 128, 256, 512, 512
BLOCKS = (2, 2, 3, 3, 3)
FC, CLASSES = 32, 10                  # VGG16 has 4096, 1000
MEAN_RGB, STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_state_dict(seed=0):
    """torchvision's key names (features.0 ... classifier.6), He-scaled random weights."""
    g = torch.Generator().manual_seed(seed)
    sd, idx, cin = {}, 0, 3
    for width, n in zip(WIDTHS, BLOCKS):
        for _ in range(n):
            sd[f"features.{idx}.weight"] = torch.randn(width, cin, 3, 3, generator=g) * \
                (2 / (cin * 9)) ** 0.5
            sd[f"features.{idx}.bias"] = torch.randn(width, generator=g) * 0.1
            idx, cin = idx + 2, width          # conv, ReLU
        idx += 1                               # MaxPool
    dims = [cin * 7 * 7, FC, FC, CLASSES]
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        sd[f"classifier.{3 * i}.weight"] = torch.randn(b, a, generator=g) * (2 / a) ** 0.5
        sd[f"classifier.{3 * i}.bias"] = torch.randn(b, generator=g) * 0.1
    return sd


def torch_vgg16(sd, images_rgb01):
    """torchvision's VGG16 forward (eval mode) on N x H x W x 3 RGB images in [0, 1], with
    torchvision's ImageNet normalization."""
    x = torch.from_numpy(images_rgb01).permute(0, 3, 1, 2).double()
    x = (x - torch.tensor(MEAN_RGB).double()[:, None, None]) / \
        torch.tensor(STD_RGB).double()[:, None, None]
    sd = {k: v.double() for k, v in sd.items()}
    idx = 0
    for n in BLOCKS:
        for _ in range(n):
            x = F.relu(F.conv2d(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"],
                                padding=1))
            idx += 2
        x = F.max_pool2d(x, 2, 2)
        idx += 1
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    for i in range(3):
        x = F.linear(x, sd[f"classifier.{3 * i}.weight"], sd[f"classifier.{3 * i}.bias"])
        if i < 2:
            x = F.relu(x)                      # (Dropout is the identity in eval mode)
    return x.numpy()


def caffe_prototxt(path, batch):
    """The zoo's VGG16 deploy net (same layer names and layout) with the test's widths."""
    net = protoio.read_prototxt(ROOT / "prototxt" / "zoo" / "VGG_ILSVRC_16_layers_deploy.prototxt",
                                caffe_pb2.NetParameter)
    net.input_dim[0] = batch
    widths = dict(zip(tv.CONVS, [w for w, n in zip(WIDTHS, BLOCKS) for _ in range(n)]))
    widths.update(fc6=FC, fc7=FC, fc8=CLASSES)
    for layer in net.layers:
        if layer.name in widths:
            p = layer.convolution_param if layer.name.startswith("conv") else \
                layer.inner_product_param
            p.num_output = widths[layer.name]
    path.write_text(str(net))
    return path


def test_zoo_deploy_has_exactly_the_converted_layers():
    net = protoio.read_prototxt(ROOT / "prototxt" / "zoo" / "VGG_ILSVRC_16_layers_deploy.prototxt",
                                caffe_pb2.NetParameter)
    learnable = [l.name for l in net.layers if l.type in (caffe_pb2.V1LayerParameter.CONVOLUTION,
                                                          caffe_pb2.V1LayerParameter.INNER_PRODUCT)]
    assert learnable == [name for name, _ in tv.LAYERS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = make_state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "vgg16-test.pth"
    torch.save(sd, path)
    data = path.read_bytes()
    return sd, data, hashlib.sha256(data).hexdigest()


def test_fetch_weights_torchvision_converts_exactly(cli, tmp_path, checkpoint):
    sd, data, digest = checkpoint
    with FileServer({"/vgg16.pth": data}) as srv:
        r = cli("fetch-weights", "vgg16", "--source", "torchvision", "--url",
                srv.url("/vgg16.pth"), "--sha256", digest[:8], "--data-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    models = tmp_path / "models"
    weights = models / "VGG_ILSVRC_16_layers_torchvision.caffemodel"
    card = json.loads((models / "VGG_ILSVRC_16_layers_torchvision.json").read_text())
    assert str(weights) in r.stdout and weights.is_file()
    assert card["mean_value_bgr"] == pytest.approx([103.53, 116.28, 123.675])
    assert card["channels"] == "BGR" and card["scale"] == 1.0

    # images made here, written and read back as a pycaffe user would
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:224, 0:224]
    ramp = np.stack([xx, yy, 255 - xx], -1).astype(np.uint8)
    images = []
    for i, arr in enumerate((noise, ramp)):
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        images.append(caffe.io.load_image(str(tmp_path / f"{i}.png")))     # RGB in [0, 1]
    images = np.stack(images).astype(np.float32)

    net = caffe.Net(str(caffe_prototxt(tmp_path / "deploy.prototxt", len(images))), caffe.TEST,
                    weights=str(weights))
    t = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))       # RGB -> BGR
    t.set_raw_scale("data", 255)                # [0, 1] -> 0-255
    t.set_mean("data", np.array(card["mean_value_bgr"]))
    net.blobs["data"].data[...] = np.stack([t.preprocess("data", im) for im in images])
    prob = net.forward()["prob"]
    got = net.blobs["fc8"].data.copy()

    want = torch_vgg16(sd, images)
    assert np.abs(want).max() > 0.5              # outputs of a useful size, not all ~0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(prob, torch.softmax(torch.from_numpy(want), 1).numpy(),
                               atol=1e-5, rtol=0)


def test_wrong_sha256_prefix_is_one_line_and_installs_nothing(cli, tmp_path, checkpoint):
    _, data, digest = checkpoint
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    with FileServer({"/vgg16.pth": data}) as srv:
        r = cli("fetch-weights", "vgg16", "--source", "torchvision", "--url",
                srv.url("/vgg16.pth"), "--sha256", wrong, "--data-dir", tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "checksum mismatch" in r.stderr and f"expected prefix {wrong}" in r.stderr
    models = tmp_path / "models"
    assert not models.exists() or not any(models.iterdir())


def test_the_published_checkpoint_is_checked_by_its_file_names_prefix():
    from models.selfie.weights import TORCHVISION
    rf = TORCHVISION["vgg16"]
    assert rf.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert rf.checksum.algo == "sha256" and rf.checksum.hexdigest == "397923af"
    assert rf.filename.endswith(f"-{rf.checksum.hexdigest}.pth")


def test_not_a_vgg16_state_dict_is_one_clear_line(tmp_path, checkpoint, cli):
    sd = dict(checkpoint[0])
    del sd["classifier.6.bias"]
    sd["features.1.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="missing classifier.6.bias; unexpected features.1.weight"):
        tv.caffe_blobs(sd)
    bad = dict(checkpoint[0])
    bad["features.2.weight"] = torch.zeros(4, 5, 3, 3)
    with pytest.raises(UserError, match=r"features.2.weight has shape \(4, 5, 3, 3\)"):
        tv.caffe_blobs(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    r = cli("fetch-weights", "vgg16", "--source", "torchvision", "--path", junk, "--no-verify",
            "--data-dir", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    error = r.stderr.strip().splitlines()[-1]      # (after the "converting ..." progress line)
    assert "not a torch checkpoint that loads with weights_only=True" in error
    assert "it was removed" in error and len(error) < 400
    assert not list((tmp_path / "models").glob("*.pth")) and \
        not list((tmp_path / "models").glob("*.caffemodel"))


def test_classic_vgg_mean_is_exact_inside_and_off_only_on_the_border(checkpoint):
    """What the module doc says about the classic mean: folding M - 255 m into the bias is
    exact wherever conv1_1 sees no padding, and only there."""
    sd = checkpoint[0]
    (_, (w, b)), *_ = tv.caffe_blobs(sd, mean_bgr=tv.CLASSIC_VGG_MEAN_BGR)
    img = np.random.default_rng(1).random((1, 3, 16, 16))          # RGB in [0, 1]
    x_torch = (torch.from_numpy(img) - torch.tensor(MEAN_RGB).double()[:, None, None]) / \
        torch.tensor(STD_RGB).double()[:, None, None]
    ref = F.conv2d(x_torch, sd["features.0.weight"].double(), sd["features.0.bias"].double(),
                   padding=1)
    x_caffe = torch.from_numpy(img[:, ::-1].copy() * 255) - \
        torch.tensor(tv.CLASSIC_VGG_MEAN_BGR).double()[:, None, None]
    got = F.conv2d(x_caffe, torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                   padding=1)
    diff = (got - ref).abs()[0].amax(0)
    assert diff[1:-1, 1:-1].max() < 1e-4
    assert diff[0].max() > 1e-3 and diff[:, -1].max() > 1e-3
