"""Shared test fixtures: where ../shared lives, and the gpu/pycaffe markers' skips."""
import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "caffe-golden"


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def _has_pycaffe():
    spec = importlib.util.find_spec("caffe")
    if spec is None:
        return False
    try:
        import caffe  # noqa: F401  (the PyPI placeholder has no Net)
        return hasattr(caffe, "Net")
    except Exception:
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
def golden():
    if not GOLDEN.is_dir():
        if os.environ.get("DEEPSELFIE_REQUIRE_GOLDEN"):
            pytest.fail(f"{GOLDEN} is missing and DEEPSELFIE_REQUIRE_GOLDEN is set")
        pytest.skip(f"{GOLDEN} is not present")
    return GOLDEN


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


@pytest.fixture
def cli():
    """The deepselfie command of this checkout: ``cli("label", "--set", ...)``."""
    return run_cli
