"""Several processes training one net (Caffe's multi-GPU semantics) on the CPU with gloo: each
process takes its own batch, gradients are averaged, only rank 0 logs and snapshots."""
import os
import subprocess
import sys

import numpy as np
import pytest

import models.caffe as caffe
from conftest import ROOT
from models.caffe import parallel

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: BATCH dim: 2 dim: 5 dim: 5 } shape { dim: BATCH } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = """net: "NET" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed"
max_iter: 5 snapshot_prefix: "snap/tiny" random_seed: RANDOM
"""

WORKER = """
import sys
import numpy as np
import torch
sys.path.insert(0, {root!r})
import models.caffe as caffe
from models.caffe import parallel
parallel.init(torch.device("cpu"))
solver = caffe.get_solver("solver2.prototxt")
r, n = parallel.rank(), parallel.world_size()
assert n == 2
for k in range(5):
    rng = np.random.default_rng(k)
    data = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
    label = rng.integers(0, 3, 4).astype(np.float32)
    solver.net.blobs["data"].data[...] = data[2 * r:2 * r + 2]
    solver.net.blobs["label"].data[...] = label[2 * r:2 * r + 2]
    solver.step(1)
np.savez(f"rank{{r}}.npz", **{{f"{{l}}/{{i}}": b.data for l, bs in solver.net.params.items()
                              for i, b in enumerate(bs)}})
solver.snapshot()
parallel.finish()
"""


def _write(folder, batch, name, seed):
    (folder / f"net{batch}.prototxt").write_text(NET.replace("BATCH", str(batch)))
    (folder / name).write_text(SOLVER.replace("NET", f"net{batch}.prototxt").replace(
        "RANDOM", str(seed)))


def test_two_processes_average_gradients_like_one_process_on_the_whole_batch(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, 2, "solver2.prototxt", seed=5)
    _write(tmp_path, 4, "solver4.prototxt", seed=5)
    (tmp_path / "worker.py").write_text(WORKER.format(root=str(ROOT)))
    assert parallel.launch(2, ["worker.py"]) == 0

    single = caffe.get_solver("solver4.prototxt")
    for k in range(5):
        rng = np.random.default_rng(k)
        single.net.blobs["data"].data[...] = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
        single.net.blobs["label"].data[...] = rng.integers(0, 3, 4).astype(np.float32)
        single.step(1)
    rank0, rank1 = np.load("rank0.npz"), np.load("rank1.npz")
    for key in rank0.files:
        layer, i = key.split("/")
        expected = single.net.params[layer][int(i)].data
        assert np.array_equal(rank0[key], rank1[key]), key        # the ranks stay in step
        err = np.abs(rank0[key] - expected).max() / np.abs(expected).max()
        assert err <= 1e-5, (key, err)
    # rank 1 started from other random weights: the broadcast made them rank 0's
    snaps = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert snaps == ["tiny_iter_5.caffemodel", "tiny_iter_5.solverstate"]


@pytest.mark.slow
def test_train_command_under_torchrun(tmp_path):
    (tmp_path / "net4.prototxt").write_text(NET.replace("BATCH", "4"))
    (tmp_path / "solver.prototxt").write_text(
        SOLVER.replace("NET", "net4.prototxt").replace("RANDOM", "3") + "display: 1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "--module", "deepselfie", "train", "-solver",
                        "solver.prototxt"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("] Solving tiny") == 1              # rank 0 alone logs
    assert r.stderr.count("Snapshotting to binary proto file snap/tiny_iter_5") == 1
    assert r.stdout.count("train: done at iteration 5") == 1
    net = caffe.Net(str(tmp_path / "net4.prototxt"), str(tmp_path / "snap/tiny_iter_5.caffemodel"),
                    caffe.TEST)

    # same zero inputs on both ranks: the averaged gradient is each rank's own
    os.chdir(tmp_path)
    try:
        single = caffe.get_solver("solver.prototxt")
        single.step(5)
    finally:
        os.chdir(ROOT)
    for layer, blobs in single.net.params.items():
        for a, b in zip(blobs, net.params[layer]):
            assert np.abs(a.data - b.data).max() <= 1e-5 * np.abs(a.data).max(), layer
