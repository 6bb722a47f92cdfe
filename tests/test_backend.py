"""Two backends behind one API: this project's torch engine (default) and real pycaffe
(``caffe.set_backend("caffe")``), and files moving between them: a .solverstate written by the
runtime after 3 steps lets real Caffe continue to its own step 6."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models.caffe as caffe
from conftest import GOLDEN, _has_pycaffe
from models.caffe.errors import CaffeError
from golden import rel_err

SOLVER_CASES = sorted(p.name for p in (GOLDEN / "solvers").iterdir()) \
    if (GOLDEN / "solvers").is_dir() else []


@pytest.fixture
def torch_backend_after():
    yield
    caffe.set_backend("torch")


def test_unknown_backend_is_refused():
    with pytest.raises(CaffeError, match="must be one of torch, caffe"):
        caffe.set_backend("tensorflow")


@pytest.mark.skipif(_has_pycaffe(), reason="real pycaffe is importable here")
def test_caffe_backend_without_pycaffe_is_one_clear_error():
    with pytest.raises(CaffeError, match="pycaffe"):
        caffe.set_backend("caffe")
    assert caffe.Net.__name__ == "Net"


@pytest.mark.pycaffe
def test_net_built_by_the_caffe_backend_is_real_caffe(golden, torch_backend_after):
    case = golden / "nets" / "v1_format"
    caffe.set_backend("caffe")
    caffe.set_mode_cpu()
    net = caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe.TEST)
    assert type(net).__module__.startswith("caffe")          # real pycaffe's class
    inputs = np.load(case / "inputs.npz")
    net.blobs["data"].data[...] = inputs["data"]
    out = net.forward()
    assert rel_err(out["prob"], np.load(case / "blobs.npz")["prob"]) <= 1e-5
    caffe.set_backend("torch")
    ours = caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe.TEST)
    assert type(ours) is caffe.Net


CONTINUE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import caffe
    case, state, out = sys.argv[1:4]
    caffe.set_mode_cpu()
    solver = caffe.get_solver(case + "/solver.prototxt")
    solver.restore(state)
    feed = np.load(case + "/feed.npz")
    start = solver.iter
    for k in range(start, start + 3):
        for name in solver.net.inputs:
            solver.net.blobs[name].data[...] = feed["iter%d/%s" % (k, name)]
        solver.step(1)
    np.savez(out, **{"%s/%d" % (l, i): b.data for l, bs in solver.net.params.items()
                     for i, b in enumerate(bs)})
    print(json.dumps({"iter": solver.iter}))
""")


@pytest.mark.pycaffe
@pytest.mark.parametrize("name", SOLVER_CASES)
def test_real_caffe_continues_our_solverstate_to_its_step_6(golden, tmp_path, name):
    case = golden / "solvers" / name
    work = tmp_path / "case"
    shutil.copytree(case, work)
    old = os.getcwd()
    os.chdir(work)
    try:
        solver = caffe.get_solver("solver.prototxt")
        solver.net.copy_from("init.caffemodel")
        feed = np.load(work / "feed.npz")
        for k in range(3):
            for blob in solver.net.inputs:
                solver.net.blobs[blob].data[...] = feed[f"iter{k}/{blob}"]
            solver.step(1)
        solver.snapshot()
        state = work / "snap_iter_3.solverstate"
        assert state.exists()
    finally:
        os.chdir(old)
    out = tmp_path / "after.npz"
    env = dict(os.environ, GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, "-c", CONTINUE, str(work), str(state), str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["iter"] == 6
    traj = np.load(case / "trajectory.npz")
    got = np.load(out)
    for key in got.files:
        layer, i = key.split("/")
        err = rel_err(got[key], traj[f"iter6/{layer}/{i}"])
        assert err <= 1e-5, f"{name}: {key} off by {err}"
