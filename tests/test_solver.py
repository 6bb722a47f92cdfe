"""Solvers against real Caffe (../shared/caffe-golden/solvers, discovered from the folder), the lr
policies, resume, testing during training, snapshots and bad solver files."""
import json
import math
import os
import shutil

import numpy as np
import pytest

import models.caffe as caffe
from conftest import GOLDEN
from golden import rel_err
from models.caffe import lr_policy, protoio
from models.caffe.proto import caffe_pb2
from models.caffe.sgd_solvers import read_solverstate
from models.caffe.errors import CaffeError

SOLVER_CASES = (sorted(p.name for p in (GOLDEN / "solvers").iterdir())
                if (GOLDEN / "solvers").is_dir() else [])


@pytest.fixture
def in_dir(tmp_path):
    """Run from tmp_path (Caffe resolves the solver's paths against the working directory)."""
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


# ---------------------------------------------------------------- golden cases

def _golden_solver(case):
    os.chdir(case)
    solver = caffe.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    return solver


def _feed(solver, feed, k):
    for name in solver.net.inputs:
        solver.net.blobs[name].data[...] = feed[f"iter{k}/{name}"]


def _trajectory_errors(solver, traj, k):
    errs = {}
    for key in traj.files:
        parts = key.split("/")
        if parts[0] != f"iter{k}":
            continue
        if parts[1] == "loss":
            errs[key] = rel_err(solver.net.blobs["loss"].data, traj[key])
        else:
            errs[key] = rel_err(solver.net.params[parts[1]][int(parts[2])].data, traj[key])
    return errs


def test_golden_solvers_are_present(golden):
    assert SOLVER_CASES, "no cases under caffe-golden/solvers"


@pytest.mark.parametrize("name", SOLVER_CASES)
def test_solver_trajectory_matches_caffe(golden, name, in_dir):
    case = golden / "solvers" / name
    meta = json.loads((case / "meta.json").read_text())
    solver = _golden_solver(case)
    feed, traj = np.load(case / "feed.npz"), np.load(case / "trajectory.npz")
    for k in range(meta["iters"]):
        _feed(solver, feed, k)
        solver.step(1)
        errs = _trajectory_errors(solver, traj, k + 1)
        assert errs, f"no trajectory entries for iter{k + 1}"
        bad = {key: e for key, e in errs.items() if not e <= 1e-5}
        assert not bad, f"step {k + 1}: {bad}"
    assert solver.iter == meta["iters"]

    # what we write has Caffe's fields and history layout, and Caffe's values
    solver.param.snapshot_prefix = str(in_dir / "ours")
    solver.snapshot()
    ours = read_solverstate(in_dir / f"ours_iter_{solver.iter}.solverstate")
    theirs = read_solverstate(case / "final.solverstate")
    assert [f.name for f, _ in ours.ListFields()] == [f.name for f, _ in theirs.ListFields()]
    assert (ours.iter, ours.current_step) == (theirs.iter, theirs.current_step)
    assert ours.learned_net == str(in_dir / f"ours_iter_{solver.iter}.caffemodel")
    assert len(ours.history) == len(theirs.history)
    for a, b in zip(ours.history, theirs.history):
        assert protoio.blob_shape(a) == protoio.blob_shape(b)
        assert not len(a.diff)
        assert rel_err(protoio.blobproto_to_array(a), protoio.blobproto_to_array(b)) <= 1e-5


@pytest.mark.parametrize("name", SOLVER_CASES)
def test_caffe_solverstate_restores_and_ours_continues(golden, name, in_dir):
    """Caffe's final.solverstate + final.caffemodel load (weights via learned_net, found beside
    the state when its absolute path is gone); a state we write after 3 steps continues to
    Caffe's step 6."""
    case = golden / "solvers" / name
    meta = json.loads((case / "meta.json").read_text())
    n = meta["iters"]
    feed, traj = np.load(case / "feed.npz"), np.load(case / "trajectory.npz")
    theirs = read_solverstate(case / "final.solverstate")
    shutil.copy(case / "final.solverstate", in_dir / "final.solverstate")
    shutil.copy(case / "final.caffemodel", in_dir / os.path.basename(theirs.learned_net))

    solver = _golden_solver(case)
    solver.restore(in_dir / "final.solverstate")
    assert solver.iter == n and solver.current_step == theirs.current_step
    for key in traj.files:
        parts = key.split("/")
        if parts[0] == f"iter{n}" and parts[1] != "loss":
            assert rel_err(solver.net.params[parts[1]][int(parts[2])].data, traj[key]) == 0
    for h, b in zip(solver.history, theirs.history):
        assert np.array_equal(h.numpy(), protoio.blobproto_to_array(b).reshape(h.shape))

    first = _golden_solver(case)
    first.param.snapshot_prefix = str(in_dir / "half")
    for k in range(n // 2):
        _feed(first, feed, k)
        first.step(1)
    first.snapshot()
    second = _golden_solver(case)          # fresh weights: restore must bring them all back
    second.restore(in_dir / f"half_iter_{n // 2}.solverstate")
    for k in range(n // 2, n):
        _feed(second, feed, k)
        second.step(1)
    bad = {key: e for key, e in _trajectory_errors(second, traj, n).items() if not e <= 1e-5}
    assert not bad


# ---------------------------------------------------------------- lr policies

def _param(**kw):
    p = caffe_pb2.SolverParameter(base_lr=0.1, max_iter=100)
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.mark.parametrize("policy, extra, formula", [
    ("fixed", {}, lambda it, p: 0.1),
    ("step", {"gamma": 0.5, "stepsize": 3}, lambda it, p: 0.1 * 0.5 ** (it // 3)),
    ("exp", {"gamma": 0.9}, lambda it, p: 0.1 * 0.9 ** it),
    ("inv", {"gamma": 0.1, "power": 0.75}, lambda it, p: 0.1 * (1 + 0.1 * it) ** -0.75),
    ("poly", {"power": 2.0}, lambda it, p: 0.1 * (1 - it / 100) ** 2),
    ("sigmoid", {"gamma": 0.5, "stepsize": 4},
     lambda it, p: 0.1 / (1 + math.exp(-0.5 * (it - 4)))),
    ("multistep", {"gamma": 0.3, "stepvalue": [2, 5]},
     lambda it, p: 0.1 * 0.3 ** sum(it >= s for s in (2, 5))),
])
def test_lr_policies(policy, extra, formula):
    p = _param(lr_policy=policy, **extra)
    lr_policy.check(p)
    step = 0
    for it in range(12):
        rate, step = lr_policy.learning_rate(p, it, step)
        assert rate == pytest.approx(formula(it, p), rel=1e-6), (policy, it)
    if policy == "step":
        assert step == 11 // 3
    if policy == "multistep":
        assert step == 2


def test_multistep_moves_one_step_per_iteration_like_caffe():
    p = _param(lr_policy="multistep", gamma=0.1, stepvalue=[2, 3, 4])
    rate, step = lr_policy.learning_rate(p, 10, 0)      # resumed far past every stepvalue
    assert step == 1 and rate == pytest.approx(0.01)
    rate, step = lr_policy.learning_rate(p, 11, step)
    assert step == 2


@pytest.mark.parametrize("bad, field", [
    ({"lr_policy": "cosine"}, "lr_policy"),
    ({"lr_policy": "step", "stepsize": 0}, "stepsize"),
    ({"lr_policy": "exp", "gamma": -1.0}, "gamma"),
    ({}, "lr_policy"),
])
def test_bad_lr_policy_is_a_user_error(bad, field):
    with pytest.raises(CaffeError) as e:
        lr_policy.check(_param(**bad), "s.prototxt")
    assert field in str(e.value) and "s.prototxt" in str(e.value)


# ---------------------------------------------------------------- a small net, fed from Python

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _write_solver(folder, text, net=NET):
    (folder / "net.prototxt").write_text(net)
    path = folder / "solver.prototxt"
    path.write_text('net: "net.prototxt"\nsnapshot_prefix: "snaps/tiny"\nrandom_seed: 7\n' + text)
    return path


def _batch(k):
    rng = np.random.default_rng(1000 + k)
    return rng.normal(size=(4, 2, 5, 5)).astype(np.float32), rng.integers(0, 3, 4).astype(
        np.float32)


def _run(solver, start, stop):
    for k in range(start, stop):
        solver.net.blobs["data"].data[...], solver.net.blobs["label"].data[...] = _batch(k)
        solver.step(1)


@pytest.mark.parametrize("betas", ["momentum: 0.9 momentum2: 55149", "momentum: 1 momentum2: 0.999",
                                   "momentum: 0.9 momentum2: 1e30"])
def test_adam_with_betas_out_of_range_computes_as_caffe_does(in_dir, betas):
    """Caffe takes any momentum / momentum2 and computes its bias correction
    sqrt(1 - b2^t) / (1 - b1^t) in C: NaN or inf, never an exception (a solver prototxt from
    anywhere must not crash the trainer with Python's math errors)."""
    path = _write_solver(in_dir, f'type: "Adam" base_lr: 0.01 lr_policy: "fixed" {betas} '
                                 'max_iter: 3\n')
    solver = caffe.get_solver(str(path))
    _run(solver, 0, 3)
    assert solver.iter == 3
    assert not np.isfinite(solver.net.params["fc"][0].data).all()


@pytest.mark.parametrize("rule", [
    'type: "Nesterov" base_lr: 0.05 momentum: 0.9 lr_policy: "multistep" gamma: 0.5 '
    'stepvalue: 4 stepvalue: 13 weight_decay: 0.001',
    'type: "Adam" base_lr: 0.01 lr_policy: "step" gamma: 0.5 stepsize: 7 weight_decay: 0.01 '
    'regularization_type: "L1" iter_size: 2 clip_gradients: 0.3',
])
def test_resume_continues_the_identical_trajectory(in_dir, rule):
    path = _write_solver(in_dir, rule + "\nmax_iter: 20\n")
    straight = caffe.get_solver(str(path))
    _run(straight, 0, 20)

    first = caffe.get_solver(str(path))
    _run(first, 0, 10)
    first.snapshot()
    resumed = caffe.get_solver(str(path))
    resumed.restore("snaps/tiny_iter_10.solverstate")
    assert resumed.iter == 10 and resumed.current_step == first.current_step
    _run(resumed, 10, 20)
    for layer, blobs in straight.net.params.items():
        for a, b in zip(blobs, resumed.net.params[layer]):
            assert np.array_equal(a.data, b.data), layer     # bit for bit
    for a, b in zip(straight.history, resumed.history):
        assert np.array_equal(a.numpy(), b.numpy())


def test_solve_snapshots_on_schedule_and_after_training(in_dir):
    path = _write_solver(in_dir, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 10 snapshot: 4\n')
    solver = caffe.SGDSolver(str(path))
    records = []
    solver.add_listener(records.append)
    solver.solve()
    assert solver.iter == 10
    names = sorted(p.name for p in (in_dir / "snaps").iterdir())
    assert names == [f"tiny_iter_{n}.{ext}" for n in (10, 4, 8)
                     for ext in ("caffemodel", "solverstate")]
    st = read_solverstate(in_dir / "snaps/tiny_iter_8.solverstate")
    assert st.iter == 8 and st.learned_net == "snaps/tiny_iter_8.caffemodel"
    assert [r["iter"] for r in records if r["event"] == "snapshot"] == [4, 8, 10]
    net = caffe.Net(str(in_dir / "net.prototxt"), "snaps/tiny_iter_10.caffemodel", caffe.TEST)
    assert np.array_equal(net.params["fc"][0].data, solver.net.params["fc"][0].data)

    again = caffe.SGDSolver(str(path))
    again.param.snapshot_after_train = False
    again.param.snapshot_prefix = "snaps/other"
    again.solve()
    assert not (in_dir / "snaps/other_iter_10.caffemodel").exists()
    assert (in_dir / "snaps/other_iter_8.caffemodel").exists()


def test_legacy_solver_type_and_snapshot_prefix_default(in_dir):
    (in_dir / "net.prototxt").write_text(NET)
    (in_dir / "legacy.prototxt").write_text(
        'net: "net.prototxt" solver_type: ADAGRAD base_lr: 0.1 lr_policy: "fixed"\n')
    solver = caffe.get_solver("legacy.prototxt")
    assert isinstance(solver, caffe.AdaGradSolver) and solver.param.type == "AdaGrad"
    assert solver.param.snapshot_prefix == "legacy"
    (in_dir / "both.prototxt").write_text(
        'net: "net.prototxt" solver_type: ADAM type: "Adam" base_lr: 0.1 lr_policy: "fixed"\n')
    with pytest.raises(CaffeError, match="solver_type"):
        caffe.get_solver("both.prototxt")


# ---------------------------------------------------------------- testing during training

class CountingSource(caffe.Layer):
    """A source layer (like Data) that fills its top with 1, 2, 3, ... on successive forwards."""
    type = "TestCountingSource"
    bottoms = (0, 0)
    tops = (1, 1)
    is_source = True

    def setup(self, bottoms):
        self.count = 0

    def top_shapes(self):
        return [(2, 3)]

    def forward(self, bottoms, params):
        import torch
        self.count += 1
        return [torch.full((2, 3), float(self.count))]


caffe.register(CountingSource)

TEST_NET = NET + """layer { name: "count" type: "TestCountingSource" top: "count"
  include { phase: TEST } }
layer { name: "mean_count" type: "Reduction" bottom: "count" top: "mean_count"
  reduction_param { operation: MEAN axis: 0 } include { phase: TEST } loss_weight: 0.5 }
"""


def test_tests_average_outputs_on_schedule_and_display_smooths_loss(in_dir):
    path = _write_solver(in_dir, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 6 display: 1 '
                                 'average_loss: 3 test_iter: 4 test_interval: 3\n'
                                 'snapshot_after_train: false\n', net=TEST_NET)
    solver = caffe.get_solver(str(path))
    assert len(solver.test_nets) == 1
    records = []
    solver.add_listener(records.append)
    for k in range(6):
        solver.net.blobs["data"].data[...], solver.net.blobs["label"].data[...] = _batch(k)
        if k == 5:
            solver.solve()          # iteration 5, then the final display and test at 6
        else:
            solver.step(1)
    tests = [r for r in records if r["event"] == "test"]
    assert [r["iter"] for r in tests] == [0, 3, 6]
    # batches 1..4, then 5..8, then 9..12: each test reports their mean
    assert [r["outputs"]["mean_count"] for r in tests] == [2.5, 6.5, 10.5]
    assert tests[0]["loss_weights"] == {"loss": 1.0, "mean_count": 0.5}
    assert all(set(r["outputs"]) == {"loss", "mean_count"} for r in tests)

    train = [r for r in records if r["event"] == "train" and not r.get("final")]
    assert [r["iter"] for r in train] == [0, 1, 2, 3, 4, 5]
    raw = [r["outputs"]["loss"] for r in train]
    # step(1) restarts Caffe's smoothing window; solve() runs its own Step
    assert all(r["loss"] == pytest.approx(v, rel=1e-6) for r, v in zip(train, raw))
    assert all(r["lr"] == pytest.approx(0.1) for r in train)

    solver2 = caffe.get_solver(str(path))
    solver2.param.test_initialization = False
    records2 = []
    solver2.add_listener(records2.append)
    solver2.step(6)
    smoothed = [r["loss"] for r in records2 if r["event"] == "train"]
    raw = [r["outputs"]["loss"] for r in records2 if r["event"] == "train"]
    for i, s in enumerate(smoothed):
        window = raw[max(0, i - 2):i + 1]
        assert s == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert [r["iter"] for r in records2 if r["event"] == "test"] == [3]


def test_test_net_shares_the_trained_weights(in_dir):
    path = _write_solver(in_dir, 'base_lr: 0.1 lr_policy: "fixed" max_iter: 2 test_iter: 1 '
                                 'test_interval: 1\n', net=TEST_NET)
    solver = caffe.get_solver(str(path))
    _run(solver, 0, 2)
    test_net = solver.test_nets[0]
    assert test_net.params["fc"][0].data is not None
    assert np.array_equal(test_net.params["fc"][0].data, solver.net.params["fc"][0].data)


# ---------------------------------------------------------------- bad solver files

@pytest.mark.parametrize("text, needle", [
    ('type: "Adamax" base_lr: 0.1 lr_policy: "fixed"', "unknown solver type 'Adamax'"),
    ('type: "AdaGrad" momentum: 0.9 base_lr: 0.1 lr_policy: "fixed"', "momentum"),
    ('base_lr: 0.1 lr_policy: "fixed" regularization_type: "L3"', "regularization"),
    ('base_lr: 0.1 lr_policy: "fixed" test_iter: 2', "test_interval"),
    ('base_lr: 0.1 lr_policy: "fixed" snapshot_format: HDF5', "HDF5"),
    ('base_lr: 0.1 lr_policy: "fixed" average_loss: 0', "average_loss"),
    ('base_lr: 0.1 lr_plicy: "fixed"', "lr_plicy"),
])
def test_bad_solver_file_is_one_user_error(in_dir, text, needle):
    path = _write_solver(in_dir, text + "\n")
    with pytest.raises(CaffeError) as e:
        caffe.get_solver(str(path))
    assert needle in str(e.value) and "solver.prototxt" in str(e.value)
    assert "\n" not in str(e.value)


def test_solver_without_net_and_with_test_iter_mismatch(in_dir):
    (in_dir / "s.prototxt").write_text('base_lr: 0.1 lr_policy: "fixed"\n')
    with pytest.raises(CaffeError, match="no train net"):
        caffe.get_solver("s.prototxt")
    (in_dir / "net.prototxt").write_text(NET)
    (in_dir / "s.prototxt").write_text('train_net: "net.prototxt" test_net: "net.prototxt" '
                                       'base_lr: 0.1 lr_policy: "fixed" test_interval: 1\n')
    with pytest.raises(CaffeError, match="test_iter"):
        caffe.get_solver("s.prototxt")


def test_bad_solverstates_are_user_errors(in_dir):
    path = _write_solver(in_dir, 'type: "Adam" base_lr: 0.1 lr_policy: "fixed" max_iter: 1\n')
    adam = caffe.get_solver(str(path))
    _run(adam, 0, 1)
    adam.snapshot()
    sgd = caffe.SGDSolver(str(path))
    with pytest.raises(CaffeError, match="history blobs"):
        sgd.restore("snaps/tiny_iter_1.solverstate")
    assert sgd.iter == 0                               # nothing half-restored
    (in_dir / "junk.solverstate").write_bytes(b"\xff\xfe not a proto")
    with pytest.raises(CaffeError, match="junk.solverstate"):
        adam.restore("junk.solverstate")
    os.remove("snaps/tiny_iter_1.caffemodel")
    with pytest.raises(CaffeError, match="learned_net"):
        adam.restore("snaps/tiny_iter_1.solverstate")
    with pytest.raises(CaffeError, match="HDF5"):
        adam.restore("x.solverstate.h5")


@pytest.mark.gpu
@pytest.mark.parametrize("name", SOLVER_CASES)
def test_solver_trajectory_on_cuda_matches_caffe(golden, name, in_dir):
    case = golden / "solvers" / name
    meta = json.loads((case / "meta.json").read_text())
    os.chdir(case)
    solver = caffe.get_solver("solver.prototxt", device="cuda")
    solver.net.copy_from("init.caffemodel")
    feed, traj = np.load(case / "feed.npz"), np.load(case / "trajectory.npz")
    for k in range(meta["iters"]):
        _feed(solver, feed, k)
        solver.step(1)
        bad = {key: e for key, e in _trajectory_errors(solver, traj, k + 1).items()
               if not e <= 1e-5}
        assert not bad, f"step {k + 1}: {bad}"
    solver.param.snapshot_prefix = str(in_dir / "gpu")
    solver.snapshot()
    resumed = caffe.get_solver("solver.prototxt", device="cpu")
    resumed.restore(in_dir / f"gpu_iter_{meta['iters']}.solverstate")
    assert resumed.iter == meta["iters"]
