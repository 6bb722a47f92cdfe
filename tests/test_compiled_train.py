"""Compiled training steps (models.caffe.compiled_train, ``Solver(..., compile=True)``): real
Caffe's solver trajectories (caffe-golden/solvers) reached through the compiled forward and
backward, nets of one shape with other settings in one process, Caffe's propagate_down, label
errors from inside the compiled step, and the eager fallback for nets it does not compile."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from google.protobuf import text_format

import models.caffe as caffe
from conftest import GOLDEN
from golden import rel_err
from models.caffe.compiled import CompileError
from models.caffe.compiled_train import CompiledTrainStep
from models.caffe.errors import CaffeError
from models.caffe.proto import caffe_pb2
from models.caffe.sgd_solvers import SGDSolver

SOLVER_CASES = (sorted(p.name for p in (GOLDEN / "solvers").iterdir())
                if (GOLDEN / "solvers").is_dir() else [])


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "inductor"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", SOLVER_CASES)
def test_compiled_steps_follow_caffes_trajectory(golden, name, device, cache, monkeypatch):
    case = golden / "solvers" / name
    monkeypatch.chdir(case)
    meta = json.loads((case / "meta.json").read_text())
    feed, traj = np.load(case / "feed.npz"), np.load(case / "trajectory.npz")
    solver = caffe.get_solver("solver.prototxt", compile=True, compile_cache=cache,
                              device=device)
    solver.net.copy_from("init.caffemodel")
    for k in range(meta["iters"]):
        for name_ in solver.net.inputs:
            solver.net.blobs[name_].data[...] = feed[f"iter{k}/{name_}"]
        solver.step(1)
        for key in traj.files:
            parts = key.split("/")
            if parts[0] != f"iter{k + 1}":
                continue
            got = (solver.net.blobs["loss"].data if parts[1] == "loss"
                   else solver.net.params[parts[1]][int(parts[2])].data)
            assert rel_err(got, traj[key]) <= 1e-5, (k + 1, key)
    assert isinstance(solver._compiled, CompiledTrainStep), "it trained eagerly"


NET = """name: "t"
layer {{ name: "in" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 3 dim: 8 dim: 8 }} shape {{ dim: 4 }} }} }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param {{ num_output: 4 kernel_size: 3
    weight_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "c2" type: "Convolution" bottom: "c1" top: "c2" {propagate}
  convolution_param {{ num_output: 4 kernel_size: 3
    weight_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "r" type: "ReLU" bottom: "c2" top: "c2" relu_param {{ negative_slope: {slope} }} }}
{extra}
layer {{ name: "fc" type: "InnerProduct" bottom: "c2" top: "fc"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


def trained(compile, cache=None, steps=3, labels=(0, 1, 2, 1), fast=False, **fields):
    fields = {"propagate": "", "slope": 0.0, "extra": "", **fields}
    caffe.set_random_seed(5)
    sp = caffe_pb2.SolverParameter(base_lr=0.05, momentum=0.9, lr_policy="fixed",
                                   max_iter=100, type="SGD", random_seed=5)
    text_format.Parse(NET.format(**fields), sp.net_param)
    solver = SGDSolver(sp, compile=compile, compile_cache=cache, source="<t>", fast=fast)
    rs = np.random.RandomState(0)
    solver.net.blobs["data"].data[...] = rs.normal(0, 1, (4, 3, 8, 8))
    solver.net.blobs["label"].data[...] = labels
    solver.step(steps)
    weights = {n: [b.data.copy() for b in blobs] for n, blobs in solver.net.params.items()}
    return solver, float(solver.net.blobs["loss"].data), weights


def assert_same(a, b, tol=1e-5):
    (_, loss_a, w_a), (_, loss_b, w_b) = a, b
    assert rel_err(loss_a, loss_b) <= tol
    for name in w_a:
        for x, y in zip(w_a[name], w_b[name]):
            assert rel_err(x, y) <= tol, name


def test_nets_of_one_shape_with_other_settings_each_train_as_eager(cache):
    """The same layer shapes, a ReLU slope apart, trained in one process: each compiled run
    is its own net's (nothing compiled for one is taken for the other)."""
    for slope in (0.0, 0.3):
        compiled = trained(True, cache, slope=slope)
        assert isinstance(compiled[0]._compiled, CompiledTrainStep)
        assert compiled[0]._compiled.builds == 1        # one graph for all three steps
        assert_same(compiled, trained(False, slope=slope))


def test_propagate_down_false_stops_the_gradient_as_in_caffe(cache):
    """c2 does not propagate to c1: c1 keeps its initial weights, as in the eager net."""
    compiled = trained(True, cache, propagate="propagate_down: false")
    eager = trained(False, propagate="propagate_down: false")
    assert_same(compiled, eager)
    fresh = trained(False, steps=0, propagate="propagate_down: false")
    np.testing.assert_array_equal(compiled[2]["c1"][0], fresh[2]["c1"][0])
    assert not np.array_equal(compiled[2]["c2"][0], fresh[2]["c2"][0])


def test_a_label_out_of_range_is_the_layers_error_from_the_compiled_step(cache):
    with pytest.raises(CaffeError, match=r"layer 'loss'.*label 7 is out of range for 3 classes"):
        trained(True, cache, labels=(0, 1, 7, 1))


def test_a_net_with_dropout_trains_eagerly_and_says_so(cache, caplog):
    extra = 'layer { name: "d" type: "Dropout" bottom: "c2" top: "c2" }'
    with caplog.at_level(logging.WARNING, logger="models.caffe.solver"):
        solver, *_ = trained(True, cache, extra=extra)
    assert solver._compiled is False
    assert "draws Caffe's random numbers" in caplog.text and "training eagerly" in caplog.text
    assert_same(trained(True, cache, extra=extra), trained(False, extra=extra))
    assert not os.path.exists(cache) or not any(cache.rglob("*.so"))


def test_fast_mode_compiled_steps_train_as_the_eager_fast_net(cache):
    """bf16 autocast inside the graph, as in the eager fast net: the same losses and weights
    within bf16's rounding."""
    compiled = trained(True, cache, fast=True)
    assert isinstance(compiled[0]._compiled, CompiledTrainStep)
    assert_same(compiled, trained(False, fast=True), tol=2e-2)


def data_solver(folder, **kw):
    """The golden training log's net (a Data layer on the golden LMDB, conv, pool, inner
    product, SoftmaxWithLoss) under a plain SGD solver, run from ``folder``."""
    sp = caffe_pb2.SolverParameter(net="train_val.prototxt", base_lr=0.01, momentum=0.9,
                                   lr_policy="fixed", max_iter=100, type="SGD", random_seed=1)
    return SGDSolver(sp, source=str(folder / "solver"), **kw)


def losses(solver, steps=4):
    out = []
    for _ in range(steps):
        solver.step(1)
        out.append(float(solver.net.blobs["loss"].data))
    return out


def test_a_compile_that_fails_trains_eagerly_on_the_batch_already_read(golden, tmp_path,
                                                                     monkeypatch, caplog):
    """The failed compiled step's Data layer had read its batch: the eager step uses it, so
    the records go by in Caffe's order (the same losses as a solver that never compiled)."""
    src = GOLDEN / "data" / "raw_meanfile_crop"
    shutil.copytree(src / "db", tmp_path / "db")
    shutil.copy(src / "mean.binaryproto", tmp_path / "mean.binaryproto")
    shutil.copy(GOLDEN / "logs" / "train_val.prototxt", tmp_path / "train_val.prototxt")
    monkeypatch.chdir(tmp_path)
    eager = losses(data_solver(tmp_path))

    def broken(self, args):
        raise CompileError("no C++ compiler here")
    monkeypatch.setattr(CompiledTrainStep, "_build", broken)
    with caplog.at_level(logging.WARNING, logger="models.caffe.solver"):
        solver = data_solver(tmp_path, compile=True)
        got = losses(solver)
    assert got == eager
    assert solver._compiled is False and "no C++ compiler here" in caplog.text
