"""Score as trained: with a lossless label run, `deepselfie score DIR --weights W` on the original
files gives the probabilities the training net's TEST phase gives over the run's LMDB, for the
small net and for a VGG16-shaped net with crop_size; the model card beside the snapshots is all
it needs."""
import csv
import io
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import models.caffe as caffe
from deepselfie.demo.run import write_small_net_files
from labelkit import Spec, make_catalog
from models.selfie.card import write_card

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A VGG16-shaped net in miniature: Data with a center crop, mean image, scale; conv/relu/pool
# blocks; fc layers; 2-way fc8. Its deploy beside it, by the naming convention.
VGG_LIKE = """
name: "VggLike"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ crop_size: 32 mean_file: "{run}/mean.binaryproto" scale: 0.017 }}
  data_param {{ source: "{run}/test_lmdb" batch_size: 1 backend: LMDB }} }}
{body}
"""
VGG_DEPLOY = """
name: "VggLike"
layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 32 dim: 32 }} }} }}
{body}
layer {{ name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }}
"""
VGG_BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 pad: 1 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc7" type: "InnerProduct" bottom: "pool1" top: "fc7"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def _photo(seed: int) -> tuple[bytes, str]:
    """Every kind of file the loader turns upright / flattens: EXIF-rotated JPEG, RGBA PNG, gray
    PNG, palette GIF, plain JPEG; sizes differ, none is the LMDB's size."""
    rs = np.random.RandomState(seed)
    w, h = 70 + 7 * (seed % 5), 50 + 5 * (seed % 4)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.clip(rs.randint(20, 200, 3)[None, None] + xx[:, :, None] * 1.5 - yy[:, :, None]
                  + rs.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    im, buf = Image.fromarray(arr), io.BytesIO()
    kind = seed % 5
    if kind == 0:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    elif kind == 1:
        alpha = (xx * 255 // max(1, w - 1)).astype(np.uint8)
        Image.fromarray(np.dstack([arr, alpha])).save(buf, "PNG")
    elif kind == 2:
        im.convert("L").save(buf, "PNG")
    elif kind == 3:
        im.convert("P").save(buf, "GIF")
    else:
        im.save(buf, "JPEG", quality=85)
    return buf.getvalue(), ".jpg"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("astrained") / "data"
    specs = [Spec(uri=f"https://ex.org/p/{i:06d}", author=f"a{i % 12}@ex.org",
                  followers=1000 + 7 * (i // 2), likes=(80 if i % 2 else 10) + i % 5, image=i)
             for i in range(40)]
    paths = make_catalog(data, specs)
    for i, rel in enumerate(sorted(paths.values())):
        (data / rel).write_bytes(_photo(i)[0])
    return data


def _label(cli, data, run, size, encoding="png"):
    r = cli("label", "--data-dir", data, "--set", "label.group_size=20", "--set",
            f"label.new_height={size}", "--set", f"label.new_width={size}", "--set",
            "label.processes=2", "--set", f"label.encoding={encoding}", "--set",
            f"label.run_name={run}", "--set", "label.test_ratio=0.5", "--set",
            "label.val_ratio=0.1", "--set", "label.train_ratio=0.4")
    assert r.returncode == 0, r.stderr
    return data / "runs" / run


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _test_net_probs(train_val, weights, run, split, top="fc8"):
    """The TEST net over the split's LMDB, one record per pass -> {list path: P(good)}."""
    lines = [line.rsplit(" ", 1)[0] for line in (run / f"{split}.txt").read_text().splitlines()]
    net = caffe.Net(str(train_val), str(weights), caffe.TEST)
    probs = {}
    for rel in lines:
        net.forward()
        probs[rel] = float(_softmax(np.asarray(net.blobs[top].data, np.float64))[0, 1])
    return probs


def _score_cli(cli, data, run, split, weights, tmp_path):
    folder = tmp_path / f"files_{run.name}"
    folder.mkdir()
    names = {}
    for i, line in enumerate((run / f"{split}.txt").read_text().splitlines()):
        rel = line.rsplit(" ", 1)[0]
        dst = folder / f"{i:03d}{pathlib.Path(rel).suffix}"
        shutil.copy(data / rel, dst)
        names[dst.name] = rel
    out = tmp_path / f"scores_{run.name}.csv"
    r = cli("score", folder, "--weights", weights, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return {names[pathlib.Path(row["path"]).name]: float(row["score"])
            for row in csv.DictReader(out.open())}


def _batch_one(train_val: pathlib.Path):
    text = train_val.read_text()
    for n in ("32", "16"):
        text = text.replace(f"batch_size: {n}", "batch_size: 1")
    train_val.write_text(text)


def test_small_net_scores_files_as_its_test_phase_saw_the_lmdb(data_dir, tmp_path, cli):
    run = _label(cli, data_dir, "small", 64)
    snap = tmp_path / "snap"
    solver = write_small_net_files(run, snap, max_iter=10, test_interval=5)
    tv = snap / "train_val.prototxt"
    tv.write_text(tv.read_text().replace(f"{run}/val_lmdb", f"{run}/test_lmdb"))
    _batch_one(tv)
    # (write_small_net_files puts the deploy net beside the train_val, as deploy.prototxt)
    caffe.set_random_seed(3)
    weights = snap / "selfie_small_iter_10.caffemodel"
    caffe.Net(str(snap / "deploy.prototxt"), caffe.TEST).save(str(weights))
    card = write_card(solver)
    assert card == snap / "selfie_small_card.json"
    info = json.loads(card.read_text())
    assert info["deploy"] == str(snap / "deploy.prototxt")
    assert info["transform"]["scale"] == 0.0078125 and info["image_size"] == [64, 64]
    assert info["classes"] == ["bad", "good"] and info["encoding"] == "png"

    want = _test_net_probs(tv, weights, run, "test", top="fc5_selfie")
    got = _score_cli(cli, data_dir, run, "test", weights, tmp_path)
    assert set(got) == set(want) and len(want) >= 10
    diffs = [abs(got[k] - want[k]) for k in want]
    assert max(diffs) <= 1e-4, max(diffs)
    spread = max(want.values()) - min(want.values())
    assert spread > 1e-3                       # the net tells these images apart

    # the old way (squash to the input, mean values) is measurably not what training saw
    r = cli("score", tmp_path / "files_small", "--weights", weights, "--resize", "squash",
            "--out", tmp_path / "old.csv", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    old = {pathlib.Path(row["path"]).name: float(row["score"])
           for row in csv.DictReader((tmp_path / "old.csv").open())}
    new = {pathlib.Path(k).name: v for k, v in
           ((row["path"], float(row["score"])) for row in
            csv.DictReader((tmp_path / "scores_small.csv").open()))}
    assert max(abs(old[k] - new[k]) for k in new) > 1e-4


@pytest.mark.parametrize("encoding", ["png", "jpg"])
def test_vgg_shaped_net_with_crop_size(data_dir, tmp_path, cli, encoding):
    """png: lossless records. jpg: scoring repeats the records' JPEG round trip with the same
    encoder (cv::imencode, quality 95), so it matches too."""
    run = _label(cli, data_dir, f"vgg_{encoding}", 40, encoding)
    snap = tmp_path / "vgg"
    snap.mkdir()
    tv = snap / "vgglike_train_val.prototxt"
    tv.write_text(VGG_LIKE.format(run=run, body=VGG_BODY))
    (snap / "vgglike_deploy.prototxt").write_text(VGG_DEPLOY.format(body=VGG_BODY))
    solver = snap / "solver.prototxt"
    solver.write_text(f'net: "{tv}"\nbase_lr: 0.01\nmax_iter: 1\nlr_policy: "fixed"\n'
                      f'snapshot_prefix: "{snap / "vgglike"}"\n')
    assert json.loads((run / "manifest.json").read_text())["settings"]["encoding"] == encoding
    caffe.set_random_seed(5)
    weights = snap / "vgglike_iter_1.caffemodel"
    caffe.Net(str(snap / "vgglike_deploy.prototxt"), caffe.TEST).save(str(weights))
    info = json.loads(write_card(solver).read_text())
    assert info["deploy"] == str(snap / "vgglike_deploy.prototxt")
    assert info["transform"]["crop_size"] == 32 and info["input_size"] == [32, 32]

    want = _test_net_probs(tv, weights, run, "test")
    got = _score_cli(cli, data_dir, run, "test", weights, tmp_path)
    assert set(got) == set(want) and len(want) >= 10
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-4
    assert max(want.values()) - min(want.values()) > 1e-3


def test_a_missing_card_names_the_flags_to_pass(tmp_path, cli):
    deploy = ROOT / "prototxt" / "selfie_small_deploy.prototxt"
    weights = tmp_path / "x_iter_5.caffemodel"
    caffe.Net(str(deploy), caffe.TEST).save(str(weights))
    (tmp_path / "imgs").mkdir()
    r = cli("score", tmp_path / "imgs", "--weights", weights)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "x_iter_5.json or x_card.json" in lines[0]
    assert "--model DEPLOY --mean MEAN" in lines[0]
