"""``deepselfie train | test | time``: Caffe's log format (as Caffe's log parsers read it, and in
the order real Caffe prints it), snapshots, SIGHUP/SIGINT effects and resume, one-line errors."""
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import GOLDEN, ROOT
from deepselfie.cli import main

NET = """name: "logcase"
layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TRAIN }
  input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } shape { dim: 4 } } }
layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TEST }
  input_param { shape { dim: 5 dim: 3 dim: 12 dim: 12 } shape { dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

# The solver of ../shared/caffe-golden/logs (its net reads an LMDB; ours is the same net on
# Input layers, so this test does not depend on the data layers).
SOLVER = """net: "train_val.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 15
momentum: 0.9
weight_decay: 0.0005
display: 5
average_loss: 5
max_iter: 30
snapshot: 20
snapshot_prefix: "snap/logcase"
solver_mode: CPU
random_seed: 1
"""

# What tools/extra/parse_log.py matches (the format's facts, written out here).
PREFIX = re.compile(r"^([IWEF])(\d{2})(\d{2}) (\d\d):(\d\d):(\d\d)\.(\d{6}) +(\d+) "
                    r"([\w.]+):(\d+)\] (.*)$")
ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def parse_log(lines):
    """Rows like parse_log.py's: train rows (NumIters, Seconds, LearningRate, outputs) and test
    rows, keyed by the iteration of the nearest 'Iteration N' line above."""
    iteration, lr, start = -1, float("nan"), None
    train, test = {}, {}
    for line in lines:
        m = PREFIX.match(line)
        if m and "Solving" in line and start is None:
            start = _time(m)
        it = ITERATION.search(line)
        if it:
            iteration = int(it.group(1))
        if iteration == -1 or not m:
            continue
        seconds = (_time(m) - start).total_seconds()
        lr_match = LEARNING_RATE.search(line)
        if lr_match:
            lr = float(lr_match.group(1))
        for regex, rows in ((TRAIN_OUTPUT, train), (TEST_OUTPUT, test)):
            out = regex.search(line)
            if out:
                row = rows.setdefault(iteration, {"NumIters": iteration, "Seconds": seconds,
                                                  "LearningRate": lr})
                row[out.group(2)] = float(out.group(3))
    return train, test


def _time(m):
    month, day, hh, mm, ss, us = (int(m.group(i)) for i in range(2, 8))
    return dt.datetime(2000, month, day, hh, mm, ss, us)


LOSS_NOTE = r"( \(\* \S+ = \S+ loss\))?$"
SHAPES = [  # (kind, regex) for the solver's own lines, in the order a line is classified
    ("test", re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)$")),
    ("test_out", re.compile(r"^    Test net output #(\d+): (\S+) = \S+" + LOSS_NOTE)),
    ("display", re.compile(r"^Iteration (\d+) \(\S+ iter/s, \S+s/(\d+) iters\), loss = \S+$")),
    ("train_out", re.compile(r"^    Train net output #(\d+): (\S+) = \S+" + LOSS_NOTE)),
    ("lr", re.compile(r"^Iteration (\d+), lr = \S+$")),
    ("final", re.compile(r"^Iteration (\d+), loss = \S+$")),
    ("model", re.compile(r"^Snapshotting to binary proto file \S+?_iter_(\d+)\.caffemodel$")),
    ("state", re.compile(r"^Snapshotting solver state to binary proto file "
                         r"\S+?_iter_(\d+)\.solverstate$")),
    ("done", re.compile(r"^(Optimization Done\.|Solving \S+|Learning Rate Policy: \S+)$")),
]


def shape_of(lines):
    """The sequence of solver line kinds with their numbers (not the values)."""
    out = []
    for line in lines:
        m = PREFIX.match(line)
        if not m:
            continue
        message = m.group(11)
        for kind, regex in SHAPES:
            hit = regex.match(message)
            if hit:
                groups = tuple(g for g in hit.groups() if g is not None and "loss)" not in g)
                out.append((kind,) + groups)
                break
    return out


def _write_case(folder, solver=SOLVER):
    (folder / "train_val.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(solver)


def test_train_log_has_caffes_lines_in_caffes_order(cli, tmp_path):
    _write_case(tmp_path)
    r = cli("train", "-solver", "solver.prototxt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = r.stderr.splitlines()
    assert ours and all(PREFIX.match(l) for l in ours if l[:1] in "IWEF" and l[1:2].isdigit())
    assert "train: done at iteration 30" in r.stdout

    if (GOLDEN / "logs" / "train.log").exists():   # the same solver in real Caffe's log
        golden = (GOLDEN / "logs" / "train.log").read_text().splitlines()
        golden = [re.sub(r"^([IWEF])\d{4}(\d{4} )", r"\1\2", l) for l in golden]  # drop year
        assert shape_of(ours) == shape_of(golden)
    shapes = shape_of(ours)
    assert ("test", "0", "0") in shapes and ("model", "20") in shapes and ("final", "30") in shapes

    train, test = parse_log(ours)
    assert sorted(train) == [0, 5, 10, 15, 20, 25]
    assert sorted(test) == [0, 10, 20, 30]
    # as with Caffe's own logs, a row carries the lr printed last (after the previous display)
    lrs = [train[i]["LearningRate"] for i in sorted(train)]
    assert np.isnan(lrs[0]) and lrs[1:] == [0.01] * 3 + [0.005] * 2
    assert all(set(row) == {"NumIters", "Seconds", "LearningRate", "loss"} for row in
               train.values())
    assert all({"accuracy", "loss"} <= set(row) for row in test.values())
    assert train[25]["Seconds"] >= train[0]["Seconds"] >= 0

    snap = tmp_path / "snap"
    files = sorted(p.name for p in snap.iterdir())
    assert files == ["logcase_curve.png", "logcase_iter_20.caffemodel",
                     "logcase_iter_20.solverstate", "logcase_iter_30.caffemodel",
                     "logcase_iter_30.solverstate", "logcase_metrics.jsonl",
                     "logcase_train.log"]
    log_file = (snap / "logcase_train.log").read_text().splitlines()
    assert shape_of(log_file) == shape_of(ours)
    assert (snap / "logcase_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(l) for l in (snap / "logcase_metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["event"] == "test"] == [0, 10, 20, 30]
    assert [r["iter"] for r in records if r["event"] == "snapshot"] == [20, 30]
    displays = [r for r in records if r["event"] == "train" and not r.get("final")]
    assert [r["lr"] for r in displays] == [0.01] * 3 + [0.005] * 3
    assert displays[-1]["loss"] == pytest.approx(float(
        re.search(r"loss = (\S+)", [l for l in ours if "Iteration 25 (" in l][0]).group(1)),
        rel=1e-5)


def _popen_train(folder, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                 "")]))
    return subprocess.Popen([sys.executable, "-m", "deepselfie", "train", *args], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(proc, needle, seen):
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never came:\n{''.join(seen[-20:])}")


def _params(path_net, weights):
    import models.caffe as caffe
    net = caffe.Net(str(path_net), str(weights), caffe.TEST)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


@pytest.mark.slow
def test_sighup_snapshots_sigint_stops_with_snapshot_and_resume_is_exact(tmp_path, monkeypatch):
    solver = SOLVER.replace("max_iter: 30", "max_iter: 100000").replace(
        "display: 5", "display: 1").replace("test_interval: 10", "test_interval: 1000").replace(
        "snapshot: 20", "snapshot: 0")
    _write_case(tmp_path, solver)
    proc = _popen_train(tmp_path, "-solver", "solver.prototxt")
    seen = []
    try:
        _read_until(proc, "Iteration 3 (", seen)
        proc.send_signal(signal.SIGHUP)
        hup = _read_until(proc, "Snapshotting solver state", seen)
        _read_until(proc, "Iteration", seen)            # and it goes on
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(seen) + err
    assert proc.returncode == 0, log
    assert "Optimization stopped early." in log
    stops = re.findall(r"Snapshotting to binary proto file snap/logcase_iter_(\d+)\.caffemodel",
                       log)
    assert len(stops) == 2 and int(stops[0]) == int(re.search(r"_iter_(\d+)", hup).group(1))
    stop = int(stops[1])
    assert stop > int(stops[0])
    assert "stopped early at iteration" in out

    # resume from the SIGINT snapshot to stop + 3; equals a straight run to stop + 3, bit for bit
    (tmp_path / "more.prototxt").write_text(solver.replace("max_iter: 100000",
                                                           f"max_iter: {stop + 3}"))
    r = subprocess.run([sys.executable, "-m", "deepselfie", "train", "--solver", "more.prototxt",
                        "--snapshot", f"snap/logcase_iter_{stop}.solverstate"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"Resuming from snap/logcase_iter_{stop}.solverstate" in r.stderr
    assert f"Iteration {stop}, lr = " in r.stderr and f"Iteration {stop - 1}, lr" not in r.stderr
    resumed = _params(tmp_path / "train_val.prototxt",
                      tmp_path / f"snap/logcase_iter_{stop + 3}.caffemodel")

    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    _write_case(straight_dir, solver.replace("max_iter: 100000", f"max_iter: {stop + 3}"))
    monkeypatch.chdir(straight_dir)
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    straight = _params(straight_dir / "train_val.prototxt",
                       straight_dir / f"snap/logcase_iter_{stop + 3}.caffemodel")
    for layer in straight:
        for a, b in zip(straight[layer], resumed[layer]):
            assert np.array_equal(a, b), layer

    records = [json.loads(l) for l in
               (tmp_path / "snap/logcase_metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in records if r["event"] == "train" and not r.get("final")]
    assert iters == sorted(iters) and len(iters) == len(set(iters))   # one story after resume


# ---------------------------------------------------------------- in-process CLI checks

@pytest.fixture
def case(tmp_path, monkeypatch):
    _write_case(tmp_path, SOLVER.replace("max_iter: 30", "max_iter: 4").replace(
        "snapshot: 20", "snapshot: 0").replace("display: 5", "display: 2"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [l for l in err if "error" in l]


@pytest.mark.parametrize("argv, needle", [
    (["train", "-solver", "missing.prototxt"], "missing.prototxt: file not found"),
    (["train", "-solver", "solver.prototxt", "-weights", "w.caffemodel", "-snapshot",
      "s.solverstate"], "not both"),
    (["train", "-solver", "solver.prototxt", "-gpu", "zero"], "--gpu"),
    (["train", "-solver", "solver.prototxt", "-snapshot", "nope.solverstate"],
     "nope.solverstate: file not found"),
    (["train", "-solver", "solver.prototxt", "-weights", "nope.caffemodel"],
     "nope.caffemodel: file not found"),
    (["train", "-solver", "train_val.prototxt"], "train_val.prototxt"),
    (["test", "-model", "train_val.prototxt", "-weights", "nope.caffemodel"], "nope.caffemodel"),
    (["time", "-model", "train_val.prototxt", "-iterations", "0"], "--iterations"),
])
def test_bad_input_is_one_line_and_exit_2(case, capsys, argv, needle):
    assert main(argv) == 2
    lines = _one_error_line(capsys)
    assert len(lines) == 1 and needle in lines[0], lines


def test_missing_required_flag_and_bad_effect_exit_2(case, capsys):
    for argv in (["train"], ["test", "-model", "train_val.prototxt"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # a setting flag's value is checked by the config schema, as --set's would be
    assert main(["train", "-solver", "solver.prototxt", "-sigint_effect", "explode"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "-sigint_effect: train.sigint_effect: must be one of stop, snapshot, none" in line


def test_gpu_without_cuda_warns_and_trains_on_cpu(case, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    assert main(["train", "--solver=solver.prototxt", "--gpu", "0", "--fast"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^W\d{4} .*CUDA is not available: running on the CPU", err, re.M)
    assert "Use CPU." in err and "Optimization Done." in err
    assert (case / "snap/logcase_iter_4.caffemodel").exists()


def test_weights_finetune_and_test_command(case, capsys):
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    capsys.readouterr()
    assert main(["train", "-solver", "solver.prototxt",
                 "-weights", "snap/logcase_iter_4.caffemodel"]) == 0
    assert "Finetuning from snap/logcase_iter_4.caffemodel" in capsys.readouterr().err
    assert main(["test", "-model", "train_val.prototxt", "-weights",
                 "snap/logcase_iter_4.caffemodel", "-iterations", "3"]) == 0
    captured = capsys.readouterr()
    assert "Running for 3 iterations." in captured.err
    assert re.search(r"Batch 2, accuracy = \S+", captured.err)
    assert re.search(r"\] loss = \S+ \(\* 1 = \S+ loss\)$", captured.err, re.M)
    assert captured.out.startswith("test: 3 batches: accuracy = ")


def test_time_command_reports_each_layer(case, capsys):
    assert main(["time", "-model", "train_val.prototxt", "-iterations", "2"]) == 0
    captured = capsys.readouterr()
    for layer in ("data", "conv1", "relu1", "pool1", "fc", "loss"):
        assert re.search(rf"\] +{layer}\tforward: [\d.e+-]+ ms\.$", captured.err, re.M), layer
        assert re.search(rf"\] +{layer}\tbackward: [\d.e+-]+ ms\.$", captured.err, re.M), layer
    assert "Average Forward-Backward:" in captured.err and "*** Benchmark ends ***" in captured.err
    assert captured.out.startswith("time: 2 iterations")


def test_train_compile_setting_trains_the_compiled_net_to_the_same_weights(case, capsys):
    """``--set train.compile=true``: the solver's steps run compiled (kernels under the data
    dir's cache/inductor) and end at the eager run's weights."""
    import models.caffe as caffe
    from golden import rel_err
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    eager = case / "eager.caffemodel"
    os.replace(case / "snap/logcase_iter_4.caffemodel", eager)
    assert main(["train", "-solver", "solver.prototxt", "--data-dir", str(case / "data"),
                 "--set", "train.compile=true"]) == 0
    assert "training eagerly" not in capsys.readouterr().err
    assert any((case / "data" / "cache" / "inductor").rglob("*.py")), "nothing compiled"
    a = caffe.Net("train_val.prototxt", str(eager), caffe.TEST)
    b = caffe.Net("train_val.prototxt", str(case / "snap/logcase_iter_4.caffemodel"), caffe.TEST)
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            assert rel_err(x.data, y.data) <= 1e-5, name
