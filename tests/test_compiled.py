"""Compiled inference (models.caffe.compiled): the compiled forward of a TEST net gives what the
eager net and real Caffe give (the golden nets, a zoo net), keeps the blobs asked for, is built
from inductor's on-disk cache the second time, and runtime.compile: off never compiles."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import models.caffe as caffe
from conftest import GOLDEN, ROOT
from golden import rel_err
from models.caffe import compiled
from models.selfie.score import Scorer

NETS = GOLDEN / "nets"
CASES = sorted(p.name for p in NETS.iterdir()) if NETS.is_dir() else []
TEST_CASES = [c for c in CASES
              if json.loads((NETS / c / "meta.json").read_text())["phase"] == "TEST"]
QUICK = ["conv_basic", "pooling"]   # the rest (slow) compile for longer on a shared CPU


def golden_net(name):
    case = NETS / name
    net = caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe.TEST)
    inputs = np.load(case / "inputs.npz")
    expected = np.load(case / "blobs.npz")
    return net, {k: inputs[k] for k in inputs.files}, \
        {k: expected[k] for k in expected.files if not k.startswith("param/")}


def compile_events() -> int:
    """How many frames dynamo compiled and graphs inductor built, so far in this process."""
    return sum(counters["frames"].values()) + sum(counters["inductor"].values()) + \
        sum(counters["stats"].values())


def check_case(name, cache):
    net, inputs, expected = golden_net(name)
    fwd = compiled.compiled_forward(net, list(expected), mode="on", cache_dir=cache)
    assert fwd is not None
    out = fwd(**inputs)
    assert fwd.builds == 1
    eager_net, _, _ = golden_net(name)
    with torch.no_grad():
        eager = eager_net.forward(blobs=list(expected), **inputs)
    bad = {}
    for key, want in expected.items():
        for what, got in (("returned", out[key]), ("net.blobs", net.blobs[key].data),
                          ("vs eager", None)):
            err = rel_err(got, want) if got is not None else rel_err(out[key], eager[key])
            if not err <= 1e-5:
                bad[f"{key} {what}"] = err
    assert not bad, f"{name}: {bad}"
    assert set(out) == set(expected) | set(net.outputs)


@pytest.mark.parametrize("name", QUICK)
def test_compiled_golden_net_matches_caffe(golden, tmp_path, name):
    check_case(name, tmp_path / "inductor")


@pytest.mark.slow
def test_every_golden_test_net_compiles_and_matches_caffe(golden, tmp_path):
    assert len(TEST_CASES) >= 10
    for name in TEST_CASES:
        if name not in QUICK:
            check_case(name, tmp_path / "inductor")


def test_train_nets_run_eagerly(golden):
    train = [c for c in CASES if c not in TEST_CASES]
    assert train, "expected a TRAIN-phase golden case"
    case = NETS / train[0]
    net = caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe.TRAIN)
    assert compiled.compiled_forward(net, mode="on") is None


def test_fast_net_compiled_gives_the_eager_fast_outputs(golden, tmp_path):
    """Fast mode (bf16 autocast) compiles too: the graph runs under the same autocast, so it
    gives what the eager fast net gives (bf16 rounding, not the golden fp32 tolerance)."""
    case = NETS / "conv_basic"
    inputs = dict(np.load(case / "inputs.npz"))
    nets = [caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe.TEST,
                      fast=True) for _ in range(2)]
    with torch.no_grad():
        eager = nets[0].forward(blobs=["conv"], **inputs)["conv"].copy()
    fwd = compiled.compiled_forward(nets[1], ["conv"], mode="on", cache_dir=tmp_path / "ind")
    assert fwd is not None
    got = fwd(**inputs)["conv"]
    assert fwd.builds == 1
    assert rel_err(got, eager) <= 1e-2
    exact = np.load(case / "blobs.npz")["conv"]
    assert rel_err(got, exact) <= 5e-2 and rel_err(eager, exact) > 0     # bf16, not fp32
    # "auto" asks more work of a fast net than of an fp32 one (it gains less)
    fp32 = caffe.Net(str(case / "net.prototxt"), caffe.TEST)
    images = int(np.ceil(compiled.AUTO_MIN_FLOPS / compiled.forward_flops(fp32)))
    assert compiled.should_compile(fp32, "auto", images)
    assert not compiled.should_compile(nets[1], "auto", images)
    assert compiled.should_compile(
        nets[1], "auto", int(np.ceil(compiled.AUTO_MIN_FLOPS_FAST / compiled.forward_flops(fp32))))


def test_off_never_compiles(golden, tmp_path):
    net, inputs, expected = golden_net("conv_basic")
    before = compile_events()
    assert compiled.compiled_forward(net, ["conv"], mode="off", work_images=10**9) is None
    out = compiled.forward(net, ["conv"], "off", 10**9, tmp_path / "inductor", **inputs)
    assert rel_err(out["conv"], expected["conv"]) <= 1e-5
    assert compile_events() == before
    assert not (tmp_path / "inductor").exists()


def test_runtime_compile_config_key(tmp_path):
    """auto|on|off; a bare on/off (YAML reads it as a boolean) means on/off."""
    from deepselfie.config import load_config
    from deepselfie.errors import UserError
    assert load_config(tmp_path / "none.yaml").runtime.compile == "auto"
    path = tmp_path / "config.yaml"
    path.write_text("runtime:\n  compile: off\n")
    assert load_config(path).runtime.compile == "off"
    assert load_config(path, overrides=["runtime.compile=on"]).runtime.compile == "on"
    with pytest.raises(UserError, match="must be one of auto, on, off"):
        load_config(path, overrides=["runtime.compile=sometimes"])


def test_auto_compiles_when_the_work_pays(golden):
    net, _, _ = golden_net("conv_basic")
    conv = net.layer_dict["conv"]
    n, c_out, *spatial = net.blobs["conv"].shape
    per_image = 2 * c_out * int(np.prod(spatial)) * int(np.prod(conv.blobs[0].shape[1:]))
    assert compiled.forward_flops(net) == pytest.approx(per_image)
    enough = int(np.ceil(compiled.AUTO_MIN_FLOPS / per_image))
    assert compiled.should_compile(net, "auto", enough)
    assert not compiled.should_compile(net, "auto", enough - 1)
    assert not compiled.should_compile(net, "auto", None)     # unknown work: eager
    assert compiled.should_compile(net, "on", 1)
    with pytest.raises(ValueError):
        compiled.should_compile(net, "sometimes", 1)


def test_vgg16_flops_per_image():
    net = caffe.Net(str(ROOT / "prototxt" / "zoo" / "VGG_ILSVRC_16_layers_deploy.prototxt"),
                    caffe.TEST)
    assert 30.7e9 < compiled.forward_flops(net) < 31.1e9     # 15.47 GMAC, as published


BATCH_NET = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc7" type: "InnerProduct" bottom: "pool" top: "fc7"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


@pytest.fixture
def tiny_model(tmp_path):
    caffe.set_random_seed(3)
    deploy = tmp_path / "tiny.prototxt"
    deploy.write_text(BATCH_NET)
    net = caffe.Net(str(deploy), caffe.TEST)
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return deploy, weights


def test_scorer_compiled_gives_the_eager_scores_and_features(tmp_path, tiny_model):
    """Batches of 3 images (the last one padded to the compiled batch), fc7 kept."""
    deploy, weights = tiny_model
    rs = np.random.RandomState(0)
    batches = [rs.uniform(-100, 100, (k, 3, 12, 12)).astype(np.float32) for k in (3, 3, 1)]
    eager = Scorer(deploy, weights, mean="0,0,0", compile="off")
    fast = Scorer(deploy, weights, mean="0,0,0", compile="on",
                  compile_cache=tmp_path / "inductor")
    for batch in batches:
        p0, f0 = eager.run(batch, ("fc7",))
        p1, f1 = fast.run(batch, ("fc7",))
        assert p1.shape == (len(batch),) and f1["fc7"].shape == (len(batch), 5)
        assert rel_err(p1, p0) <= 1e-5 and rel_err(f1["fc7"], f0["fc7"]) <= 1e-5
        assert rel_err(fast.net.blobs["fc7"].data, f0["fc7"]) <= 1e-5
    fwd = compiled.compiled_forward(fast.net, ("prob", "fc7"), "on", None,
                                    tmp_path / "inductor", pad_batch=True)
    assert fwd.builds == 1                          # the short last batch reused the graph
    assert len(fwd.functions) == 1
    other = compiled.compiled_forward(fast.net, ("prob", "pool"), "on", None,
                                      tmp_path / "inductor", pad_batch=True)
    assert other is not fwd and other.builds == 0   # another blob: another function
    out = other(data=batches[0])
    with torch.no_grad():
        want = eager.net.forward(blobs=["pool"], data=batches[0])
    assert rel_err(out["pool"], want["pool"]) <= 1e-5


def test_new_weights_rebuild_the_constants(tmp_path, tiny_model):
    deploy, weights = tiny_model
    net = caffe.Net(str(deploy), str(weights), caffe.TEST)
    x = np.random.RandomState(1).uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    fwd = compiled.compiled_forward(net, ["fc8"], "on", cache_dir=tmp_path / "inductor")
    first = fwd(data=x)["fc8"].copy()
    with torch.no_grad():
        net.params["fc8"][1].tensor.add_(1.0)       # a write through torch bumps the version
    second = fwd(data=x)["fc8"]
    assert fwd.builds == 2
    np.testing.assert_allclose(second, first + 1.0, rtol=1e-5, atol=1e-5)


def test_a_net_that_fails_to_compile_runs_eagerly(golden, monkeypatch, caplog):
    net, inputs, expected = golden_net("conv_basic")

    def broken(self, args):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(compiled.CompiledForward, "_compile", broken)
    out = compiled.forward(net, ["conv"], "on", **inputs)
    assert rel_err(out["conv"], expected["conv"]) <= 1e-5
    assert "running it eagerly" in caplog.text
    assert compiled.compiled_forward(net, ["conv"], "on") is None


def test_a_bad_input_is_the_users_error_not_a_compile_failure(golden):
    from models.caffe.errors import CaffeError
    net, inputs, _ = golden_net("conv_basic")
    with pytest.raises(CaffeError, match="no blob named 'nosuch'"):
        compiled.forward(net, ["conv"], "on", nosuch=inputs["data"])
    assert net not in compiled._failed


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import models.caffe as caffe
    from models.caffe import compiled
    from torch._dynamo.utils import counters
    net = caffe.Net(sys.argv[1], sys.argv[2], caffe.TEST)
    x = np.load(sys.argv[3])
    out = compiled.forward(net, ["conv"], "on", None, sys.argv[4], **{"data": x})
    np.save(sys.argv[5], out["conv"])
    print(json.dumps(dict(counters["inductor"])))
""")


@pytest.mark.slow
def test_second_process_builds_from_the_cache(golden, tmp_path):
    """Two fresh processes compile the same net into one cache folder: the second compiles no
    kernel (no new C++ source or shared object) and gives the same outputs; a third, after
    every file in the cache was overwritten with garbage, still gives them."""
    case = NETS / "conv_basic"
    cache = tmp_path / "cache" / "inductor"
    x = tmp_path / "x.npy"
    np.save(x, np.load(case / "inputs.npz")["data"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)

    def run(i):
        res = subprocess.run([sys.executable, "-c", CHILD, str(case / "net.prototxt"),
                              str(case / "weights.caffemodel"), str(x), str(cache),
                              str(tmp_path / f"out{i}.npy")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        kernels = {p.relative_to(cache) for p in cache.rglob("*")
                   if p.suffix in (".so", ".cpp")}
        return json.loads(res.stdout.strip().splitlines()[-1]), kernels

    stats1, kernels1 = run(1)
    assert kernels1, "the first build wrote no compiled kernel into the cache"
    stats2, kernels2 = run(2)
    assert kernels2 == kernels1, f"the second build compiled {kernels2 - kernels1}"
    assert stats2.get("fxgraph_cache_miss", 0) == 0, stats2
    out1, out2 = np.load(tmp_path / "out1.npy"), np.load(tmp_path / "out2.npy")
    np.testing.assert_array_equal(out1, out2)
    expected = np.load(case / "blobs.npz")["conv"]
    assert rel_err(out2, expected) <= 1e-5
    # a cache left corrupt (a full disk, a killed process): every file in it garbage; the
    # third build does not crash on it and gives the same outputs
    for p in cache.rglob("*"):
        if p.is_file():
            p.write_bytes(b"\x00garbage" * 3)
    run(3)
    np.testing.assert_array_equal(np.load(tmp_path / "out3.npy"), out1)


@pytest.mark.slow
def test_zoo_caffenet_compiled_matches_eager(tmp_path):
    """CaffeNet's deploy (grouped convolutions, LRN, overlapping pooling, three inner products)
    at a small input, random weights: compiled within 1e-5 of eager, prob and fc7."""
    from models.caffe import protoio
    from models.caffe.proto import caffe_pb2
    param = protoio.read_prototxt(ROOT / "prototxt" / "zoo" /
                                  "bvlc_reference_caffenet_deploy.prototxt", caffe_pb2.NetParameter)
    shape = [2, 3, 99, 99]
    for lp in param.layer:
        if lp.type == "Input":
            del lp.input_param.shape[0].dim[:]
            lp.input_param.shape[0].dim.extend(shape)
    del param.input_dim[:]
    if param.input_shape:
        del param.input_shape[0].dim[:]
        param.input_shape[0].dim.extend(shape)
    net = caffe.Net(param, caffe.TEST)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers:
            for blob in layer.blobs:
                t = blob.tensor
                fan_in = max(1, t[0].numel()) if t.dim() > 1 else 1
                t.normal_(0, (2.0 / fan_in) ** 0.5 if t.dim() > 1 else 0.01, generator=g)
        net.params["fc8"][0].tensor.mul_(0.02)    # logits of a few units: a soft softmax
    x = np.random.RandomState(0).uniform(-60, 60, shape).astype(np.float32)
    with torch.no_grad():
        eager = {k: v.copy() for k, v in net.forward(blobs=["fc7", "fc8"], data=x).items()}
    assert 0.002 < eager["prob"].max() < 0.9
    out = compiled.forward(net, ["fc7", "fc8"], "on", None, tmp_path / "inductor", data=x)
    fwd = compiled.compiled_forward(net, ["fc7", "fc8"], "on", None, tmp_path / "inductor")
    assert fwd.builds == 1
    for key in ("fc7", "fc8", "prob"):
        assert np.abs(eager[key]).max() > 0
        assert rel_err(out[key], eager[key]) <= 1e-5, key


@pytest.mark.slow
def test_cli_score_with_runtime_compile_on_and_off(tmp_path, tiny_model, cli):
    """deepselfie score --set runtime.compile=on compiles into <data_dir>/cache/inductor and
    ranks as runtime.compile=off does, which leaves no cache behind."""
    from PIL import Image
    deploy, weights = tiny_model
    rs = np.random.RandomState(5)
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        Image.fromarray(rs.randint(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
    scores = {}
    for mode in ("off", "on"):
        data = tmp_path / f"data_{mode}"
        out = tmp_path / f"{mode}.json"
        r = cli("score", tmp_path / "imgs", "--model", deploy, "--weights", weights,
                "--mean", "100,110,120", "--scale", "0.01",   # logits of a trained net's size
                "--batch-size", "2", "--json", "--out", out,
                "--data-dir", data, "--set", f"runtime.compile={mode}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        scores[mode] = {row["path"]: row["score"] for row in json.loads(out.read_text())}
        kernels = list((data / "cache" / "inductor").rglob("*.so"))
        assert bool(kernels) == (mode == "on"), mode
    assert scores["on"].keys() == scores["off"].keys() and len(scores["on"]) == 5
    for path, value in scores["off"].items():
        assert abs(scores["on"][path] - value) <= 2e-6   # (written rounded to 6 digits)


def test_auto_decides_the_same_after_a_compiled_batch(tmp_path, tiny_model):
    """After a compiled forward of another batch size only the kept blobs are resized; the
    FLOPs per image (and so auto's decision) stay what they were."""
    deploy, weights = tiny_model
    net = caffe.Net(str(deploy), str(weights), caffe.TEST)
    before = compiled.forward_flops(net)
    x = np.zeros((7, 3, 12, 12), np.float32)
    compiled.forward(net, ["fc7"], "on", None, tmp_path / "inductor", data=x)
    assert net.blobs["data"].shape[0] == 7 and net.blobs["conv"].shape[0] == 2
    assert compiled.forward_flops(net) == before > 0
