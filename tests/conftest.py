"""Shared test fixtures: where the golden cases live, and the gpu/pycaffe markers' skips."""
import importlib.util
import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# The golden cases real Caffe computed, copied into the repository (PROVENANCE.md there);
# ../shared/caffe-golden, when present, is the source the copy is kept in step with.
GOLDEN = ROOT / "tests" / "data" / "caffe-golden"
# (a git worktree elsewhere names it with DEEPSELFIE_SHARED_GOLDEN).
SHARED_GOLDEN = pathlib.Path(os.environ.get("DEEPSELFIE_SHARED_GOLDEN")
                             or SHARED / "caffe-golden")

# Real Caffe built outside the repo (e.g. /work/caffe-real/python): DEEPSELFIE_PYCAFFE_PATH goes in
# front of sys.path (for detection and the tests) and of PYTHONPATH (for subprocesses).
PYCAFFE_PATH = os.environ.get("DEEPSELFIE_PYCAFFE_PATH", "")
if PYCAFFE_PATH:
    for _p in reversed(PYCAFFE_PATH.split(os.pathsep)):
        if _p and _p not in sys.path:
            sys.path.insert(0, _p)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (PYCAFFE_PATH, os.environ.get("PYTHONPATH", "")) if p)


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def _has_pycaffe():
    """Whether ``import caffe`` gives real Caffe (its C++ module, not the PyPI placeholder), asked
    of a child process: the tests run real Caffe in children too (tests/real_caffe.py)."""
    if importlib.util.find_spec("caffe") is None:
        return False
    import subprocess
    probe = "import caffe, caffe._caffe; assert hasattr(caffe, 'Net')"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120,
                              env={**os.environ, "GLOG_minloglevel": "2"}).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="CUDA not available")
    skip_caffe = pytest.mark.skip(reason="real pycaffe not importable")
    has_gpu = has_caffe = None
    for item in items:
        if "gpu" in item.keywords:
            has_gpu = _has_cuda() if has_gpu is None else has_gpu
            if not has_gpu:
                item.add_marker(skip_gpu)
        if "pycaffe" in item.keywords:
            has_caffe = _has_pycaffe() if has_caffe is None else has_caffe
            if not has_caffe:
                item.add_marker(skip_caffe)


@pytest.fixture
def caffe_bin():
    """Real Caffe's ``caffe`` command: $DEEPSELFIE_CAFFE_BIN, else next to pycaffe (cmake install
    layout PREFIX/bin, Makefile layout build/tools), else on PATH."""
    spec = importlib.util.find_spec("caffe")
    here = pathlib.Path(spec.origin).resolve().parents[2] if spec and spec.origin else None
    for cand in (os.environ.get("DEEPSELFIE_CAFFE_BIN"),
                 here and here / "bin" / "caffe", here and here / "build" / "tools" / "caffe",
                 shutil.which("caffe")):
        if cand and pathlib.Path(cand).is_file() and os.access(cand, os.X_OK):
            return pathlib.Path(cand)
    pytest.skip("real Caffe's caffe binary not found (set DEEPSELFIE_CAFFE_BIN)")


def require_golden(folder: pathlib.Path) -> pathlib.Path:
    """``folder`` when it holds the golden cases; otherwise the test FAILS (never skips: the
    cases belong to the repository, a check that quietly vanishes is a defect)."""
    if not folder.is_dir():
        pytest.fail(f"{folder} is missing: the golden cases belong to the repository")
    return folder


@pytest.fixture
def golden():
    """The in-repo golden cases (tests/data/caffe-golden)."""
    return require_golden(GOLDEN)


def golden_cases(kind: str) -> list:
    """The case folders of one kind ("nets", "data", "solvers"), the round2/ ones included,
    as paths relative to GOLDEN ("nets/conv_basic", "round2/nets/dropout_train")."""
    found = []
    for base in (GOLDEN / kind, GOLDEN / "round2" / kind):
        if base.is_dir():
            found += sorted(str(p.relative_to(GOLDEN)) for p in base.iterdir() if p.is_dir())
    return found


def run_cli(*args, cwd=None, env=None, timeout=600, input=None):
    """Run ``python -m deepselfie ARGS`` from this checkout (not whatever is installed)."""
    import subprocess
    import sys
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "deepselfie", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout,
                          input=input)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def cli():
    """The deepselfie command of this checkout: ``cli("label", "--set", ...)``."""
    return run_cli


@pytest.fixture
def fake_gs(tmp_path, monkeypatch):
    """A `gs` first on PATH that leaves a marker file (the path returned) when anything runs it:
    the tests that say no Ghostscript starts for an EPS file check that it stays absent."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-was-run"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\nexit 0\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker
