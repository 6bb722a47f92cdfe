"""Caffe's random numbers (models/caffe/rng.py) against real Caffe: boost's mt19937, its
distributions, and what they make — every golden net's weights from its seed, every golden
solver's initial weights from the solver's random_seed, and `deepselfie train` printing the
very losses and test outputs of real Caffe's train.log."""
import json
import re
import shutil

import numpy as np
import pytest

import models.caffe as caffe
from conftest import golden_cases
from golden import rel_err
from models.caffe import rng

NET_CASES = golden_cases("nets")
SOLVER_CASES = golden_cases("solvers")


# ---------------------------------------------------------------- the engine and distributions

def test_mt19937_is_boosts():
    """boost's own check of mt19937: default seed 5489, the 10000th word is 4123659995."""
    assert rng.Stream(5489).words(10000)[-1] == 4123659995


def test_seeding_restarts_the_global_stream():
    rng.seed(42)
    first = [rng.caffe_rng_rand() for _ in range(3)]
    rng.seed(42)
    assert [rng.caffe_rng_rand() for _ in range(3)] == first
    assert rng.seeded()


@pytest.mark.parametrize("draw", ["gaussian", "uniform_real"])
def test_a_distribution_drawn_in_pieces_continues_the_same_stream(draw):
    """Words read ahead go back: drawing 5000 values at once or in pieces gives the same values,
    and the stream is left at the same word."""
    args = (0.0, 1.0) if draw == "gaussian" else (-0.5, 0.5)
    whole = rng.Stream(7)
    a = getattr(whole, draw)(5000, *args)
    parts = rng.Stream(7)
    b = np.concatenate([getattr(parts, draw)(k, *args) for k in (1, 2, 3, 100, 4894)])
    np.testing.assert_array_equal(a, b)
    assert whole.draw() == parts.draw()


def test_the_vectorised_ziggurat_is_the_word_by_word_one():
    """The block ziggurat gives what trying word by word gives (slow wedges, tails included)."""
    s = rng.Stream(11)
    words = s.words(300_000)
    one, q = [], 0
    while len(one) < 250_000:
        value, used = rng._one_normal(words, q)
        one.append(value)
        q += used
    block = rng.Stream(11).gaussian(250_000, 0.0, 1.0)
    np.testing.assert_array_equal(block, np.array(one, np.float32))
    assert abs(float(block.mean())) < 0.01 and abs(float(block.std()) - 1) < 0.01
    assert float(np.abs(block).max()) > 3.4426     # the tail was drawn


def test_uniform_stays_inside_its_range_and_bernoulli_keeps_p():
    s = rng.Stream(3)
    u = s.uniform_real(100_000, -0.25, 0.25)
    assert u.dtype == np.float32 and u.min() >= -0.25 and u.max() <= 0.25
    keep = s.bernoulli(100_000, 0.7, np.float64)
    assert abs(keep.mean() - 0.7) < 0.01
    before = s.draw()
    t = rng.Stream(3)
    t.uniform_real(100_000, -0.25, 0.25)
    t.bernoulli(100_000, 0.7, np.float64)
    assert t.draw() == before
    assert not rng.Stream(1).bernoulli(10, 0.0).any()


# ---------------------------------------------------------------- Caffe's weights from a seed

def _params(net):
    return {f"{name}/{i}": b.data.copy() for name, blobs in net.params.items()
            for i, b in enumerate(blobs)}


@pytest.mark.parametrize("name", NET_CASES)
def test_net_built_from_the_seed_has_caffes_weights(golden, name):
    case = golden / name
    meta = json.loads((case / "meta.json").read_text())
    phase = caffe.TRAIN if meta["phase"] == "TRAIN" else caffe.TEST
    caffe.set_random_seed(meta["random_seed"])
    ours = _params(caffe.Net(str(case / "net.prototxt"), phase))
    theirs = _params(caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"),
                               phase))
    assert set(ours) == set(theirs)
    if "set by hand" in meta.get("fillers", ""):    # batchnorm_scale_test: BatchNorm's blobs
        by_hand = {k for k in theirs if k.split("/")[0] in
                   {l for l, _ in _layers_of_type(case, "BatchNorm")}}
        assert by_hand
    else:
        by_hand = set()
    errs = {k: rel_err(ours[k], theirs[k]) for k in theirs if k not in by_hand}
    bad = {k: v for k, v in errs.items() if not v <= 1e-6}
    assert not bad, bad


def _layers_of_type(case, kind):
    from models.caffe import protoio
    net = protoio.read_prototxt(case / "net.prototxt")
    return [(l.name, l.type) for l in net.layer if l.type == kind]


@pytest.mark.parametrize("name", SOLVER_CASES)
def test_solver_from_its_random_seed_has_caffes_initial_weights(golden, name, monkeypatch):
    case = golden / name
    monkeypatch.chdir(case)
    solver = caffe.get_solver("solver.prototxt")      # sets random_seed, then builds the nets
    ours = _params(solver.net)
    solver.net.copy_from("init.caffemodel")
    theirs = _params(solver.net)
    errs = {k: rel_err(ours[k], theirs[k]) for k in theirs}
    bad = {k: v for k, v in errs.items() if not v <= 1e-6}
    assert not bad, bad


# ---------------------------------------------------------------- training from a seed

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
LOGGED = re.compile(r"(Iteration \d+(?:, Testing net \(#\d+\))?|"
                    r"(?:Train|Test) net output #\d+: \w+ = " + NUMBER + r"|"
                    r", loss = " + NUMBER + r")")


def logged_numbers(lines):
    """Every loss and output a training log prints, in order, as (what, number): the display
    lines' smoothed loss, the Train/Test net outputs, and the final "Iteration N, loss". The
    speed figures (iter/s, s/iters) are left out: they measure the machine."""
    out = []
    for line in lines:
        message = line.split("] ", 1)[-1]
        m = re.match(r"Iteration (\d+).*, loss = (" + NUMBER + ")$", message)
        if m:
            out.append((f"iteration {m.group(1)} loss", float(m.group(2))))
            continue
        m = re.match(r"\s*(Train|Test) net output #(\d+): (\w+) = (" + NUMBER + ")", message)
        if m:
            out.append((f"{m.group(1)} #{m.group(2)} {m.group(3)}", float(m.group(4))))
    return out


def test_train_prints_real_caffes_numbers(golden, cli, tmp_path):
    """The logs/ case as README says it ran: its solver and train_val over
    data/raw_meanfile_crop's LMDB as `db`, with its mean; random_seed 1 fixes the fillers and the
    TRAIN crops and mirrors, so every loss and test output equals train.log's."""
    for f in ("solver.prototxt", "train_val.prototxt"):
        shutil.copy(golden / "logs" / f, tmp_path / f)
    data = golden / "data" / "raw_meanfile_crop"
    shutil.copytree(data / "db", tmp_path / "db", ignore=shutil.ignore_patterns("lock.mdb"))
    shutil.copy(data / "mean.binaryproto", tmp_path / "mean.binaryproto")
    r = cli("train", "-solver", "solver.prototxt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = logged_numbers(r.stderr.splitlines())
    theirs = logged_numbers((golden / "logs" / "train.log").read_text().splitlines())
    assert len(theirs) == 21                  # the count of logged numbers
    assert [what for what, _ in ours] == [what for what, _ in theirs]
    bad = [(what, a, b) for (what, a), (_, b) in zip(ours, theirs)
           if not abs(a - b) <= 1e-4 * max(abs(b), 1e-12)]
    assert not bad, bad
