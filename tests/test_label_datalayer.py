"""The label stage's LMDBs read by a Caffe Data layer: the runtime's, and real Caffe's (pycaffe
tests): same blobs, and the train LMDB's labels are labels.csv's train rows, in LMDB order."""
import csv

import numpy as np
import pytest

import models.caffe as caffe
from labelkit import Spec, make_catalog


def _label_run(tmp_path, cli, encoding):
    data = tmp_path / "data"
    specs = [Spec(uri=f"https://ex.org/p/{i:04d}", author=f"a{i % 9}@ex.org",
                  followers=500 + 3 * i, likes=(i * 37) % 50, image=i, size=(40 + i % 7, 36),
                  fmt="JPEG" if i % 3 else "PNG") for i in range(60)]
    make_catalog(data, specs)
    r = cli("label", "--data-dir", data, "--set", "label.group_size=10", "--set",
            "label.new_height=32", "--set", "label.new_width=32", "--set", "label.processes=1",
            "--set", f"label.encoding={encoding}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return data / "runs" / "selfie"


def _data_net(tmp_path, run, split, n):
    p = tmp_path / f"{split}_data.prototxt"
    p.write_text(f"""
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ mean_file: "{run / 'mean.binaryproto'}" }}
  data_param {{ source: "{run / (split + '_lmdb')}" batch_size: {n} backend: LMDB }} }}
""")
    return p


def _train_rows(run):
    rows = [r for r in csv.DictReader((run / "labels.csv").open()) if r["split"] == "train"]
    listed = [line.split() for line in (run / "train.txt").read_text().splitlines()]
    return rows, listed


@pytest.mark.parametrize("encoding", ["jpg", "raw"])
def test_runtime_data_layer_reads_the_label_lmdb(tmp_path, cli, encoding):
    run = _label_run(tmp_path, cli, encoding)
    rows, listed = _train_rows(run)
    n = len(listed)
    net = caffe.Net(str(_data_net(tmp_path, run, "train", n)), caffe.TEST)
    net.forward()
    labels = net.blobs["label"].data.astype(int).tolist()
    assert labels == [int(label) for _, label in listed]          # the LMDB's order
    by_path = {r["path"]: int(r["label"]) for r in rows}
    assert sorted(labels) == sorted(by_path.values())              # exactly the train rows
    assert [by_path[p] for p, _ in listed] == labels
    data = net.blobs["data"].data
    assert data.shape == (n, 3, 32, 32)
    mean = caffe.io.blobproto_to_array(caffe.proto.caffe_pb2.BlobProto.FromString(
        (run / "mean.binaryproto").read_bytes()))[0]
    assert abs(float((data + mean).mean()) - float(mean.mean())) < 1.0  # mean over train ~ 0


@pytest.mark.pycaffe
@pytest.mark.parametrize("encoding", ["jpg", "raw"])
def test_real_caffe_reads_the_same_blobs(tmp_path, cli, encoding):
    import real_caffe
    run = _label_run(tmp_path, cli, encoding)
    for split in ("train", "val", "test"):
        n = len((run / f"{split}.txt").read_text().splitlines())
        prototxt = _data_net(tmp_path, run, split, n)
        theirs = real_caffe.run(prototxt, "TEST")
        net = caffe.Net(str(prototxt), caffe.TEST)
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, theirs.blobs["label"])
        np.testing.assert_allclose(net.blobs["data"].data, theirs.blobs["data"], atol=1e-4)
