"""``caffe test`` (models.caffe.tool.test, ``deepselfie test``) through runtime.compile: the net
of the golden training log (a Data layer on the golden LMDB, then conv, pool, inner product,
SoftmaxWithLoss and Accuracy) scores the same compiled as eager, within the golden forward
tolerance, and the compiled run leaves its kernels under the cache folder it was given."""
import re
import shutil

import pytest
from torch._dynamo.utils import counters

import models.caffe as caffe
from conftest import GOLDEN
from golden import rel_err
from models.caffe import compiled, tool


@pytest.fixture
def test_case(golden, tmp_path, monkeypatch):
    """The log case's train_val.prototxt beside the LMDB and mean it reads, and weights its
    fillers drew (seed 1), in a folder that is the working directory (Caffe's paths)."""
    src = GOLDEN / "data" / "raw_meanfile_crop"
    shutil.copytree(src / "db", tmp_path / "db")
    shutil.copy(src / "mean.binaryproto", tmp_path / "mean.binaryproto")
    shutil.copy(GOLDEN / "logs" / "train_val.prototxt", tmp_path / "train_val.prototxt")
    monkeypatch.chdir(tmp_path)
    caffe.set_random_seed(1)
    net = caffe.Net("train_val.prototxt", caffe.TEST)
    net.save("w.caffemodel")
    return tmp_path


def inductor_events() -> int:
    return sum(counters["inductor"].values()) + sum(counters["frames"].values())


def test_caffe_test_compiled_matches_eager(test_case):
    eager = tool.test("train_val.prototxt", "w.caffemodel", 3, compile="off",
                      compile_cache=test_case / "off")
    assert not (test_case / "off").exists()
    before = inductor_events()
    got = tool.test("train_val.prototxt", "w.caffemodel", 3, compile="on",
                    compile_cache=test_case / "inductor")
    assert inductor_events() > before, "runtime.compile: on did not compile"
    assert list((test_case / "inductor").rglob("*.so")), "no kernel in the cache folder"
    assert got.keys() == eager.keys() == {"loss", "accuracy"}
    assert got["accuracy"] == eager["accuracy"]
    assert rel_err(got["loss"], eager["loss"]) <= 1e-5
    assert eager["loss"] > 0


def test_caffe_test_auto_runs_small_work_eagerly(test_case, monkeypatch):
    """(Watched at the compile call itself: inductor's global counters can move after an
    earlier test's compile, from its asynchronous workers.)"""
    compiles = []

    def refuse(self, args):
        compiles.append(args)
        raise AssertionError("runtime.compile auto compiled a small job")
    monkeypatch.setattr(compiled.CompiledForward, "_compile", refuse)
    tool.test("train_val.prototxt", "w.caffemodel", 2, compile="auto",
              compile_cache=test_case / "inductor")
    assert not compiles
    assert not (test_case / "inductor").exists()


def test_caffe_test_falls_back_to_eager_when_the_compile_fails(test_case, monkeypatch, capsys):
    eager = tool.test("train_val.prototxt", "w.caffemodel", 2, compile="off")

    def broken(self, args):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(compiled.CompiledForward, "_compile", broken)
    got = tool.test("train_val.prototxt", "w.caffemodel", 2, compile="on")
    assert got == eager
    assert re.search(r"compiling the net failed \(RuntimeError: no compiler here\); running it "
                     r"eagerly", capsys.readouterr().err)


@pytest.mark.slow
def test_cli_test_compiles_into_the_data_dir(test_case, cli):
    """deepselfie test --set runtime.compile=on: the same output line as off, and the kernels
    under <data_dir>/cache/inductor."""
    lines = {}
    for mode in ("off", "on"):
        data = test_case / f"data_{mode}"
        r = cli("test", "-model", "train_val.prototxt", "-weights", "w.caffemodel",
                "-iterations", "2", "--data-dir", data, "--set", f"runtime.compile={mode}",
                cwd=test_case)
        assert r.returncode == 0, r.stderr
        lines[mode] = r.stdout.strip()
        assert bool(list((data / "cache" / "inductor").rglob("*.so"))) == (mode == "on")
    values = {m: [float(v) for v in re.findall(r"= (\S+?)(?:,|$)", line)]
              for m, line in lines.items()}
    assert len(values["on"]) == len(values["off"]) == 2
    for a, b in zip(values["on"], values["off"]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
