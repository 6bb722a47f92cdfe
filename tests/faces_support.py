"""What the face tests share: the pinned facenet-pytorch wheel (a local copy, never the
internet), MTCNN weights converted from it once per test process, photos shipped inside
installed packages, and a package index served on 127.0.0.1.

The wheel is looked for at $DEEPSELFIE_FACES_WHEEL, then at .whl/<wheel> in the checkout (where
.ci/run puts it with `pip download`). Without it the tests that need it skip, or fail when
DEEPSELFIE_REQUIRE_FACES is set (as in CI).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pathlib
import tempfile
import threading

import numpy as np
import pytest

from models.faces import convert

ROOT = pathlib.Path(__file__).resolve().parents[1]


def wheel_path() -> pathlib.Path:
    """The local facenet-pytorch wheel, or skip (fail in CI) with what to run."""
    candidates = [os.environ.get("DEEPSELFIE_FACES_WHEEL"), ROOT / ".whl" / convert.WHEEL]
    for c in candidates:
        if c and pathlib.Path(c).is_file():
            return pathlib.Path(c)
    why = (f"{convert.WHEEL} not found (set DEEPSELFIE_FACES_WHEEL or run `pip download "
           f"--no-deps {convert.PACKAGE}=={convert.VERSION} -d .whl`; .ci/run does)")
    if os.environ.get("DEEPSELFIE_REQUIRE_FACES"):
        pytest.fail(why)
    pytest.skip(why)


@functools.lru_cache(maxsize=None)
def _converted(wheel: str) -> pathlib.Path:
    models_dir = pathlib.Path(tempfile.mkdtemp(prefix="deepselfie-faces-models-"))
    convert.ensure_weights(models_dir, wheel=wheel)
    return models_dir


@pytest.fixture
def models_dir() -> pathlib.Path:
    """A models dir holding faces/{pnet,rnet,onet}.caffemodel (converted once per process)."""
    return _converted(str(wheel_path()))


@functools.lru_cache(maxsize=None)
def _detector(models: str, **kw):
    from models.faces.detect import FaceDetector
    return FaceDetector(convert.weights_dir(models), device="cpu", **kw)


@pytest.fixture
def detector(models_dir):
    """The detector with the config's default settings, on the CPU."""
    from deepselfie.config import SCHEMA
    f = {k: key.default for k, key in SCHEMA["faces"].items()}
    return _detector(str(models_dir), min_face_size=f["min_face_size"],
                     scale_factor=f["scale_factor"], thresholds=tuple(f["thresholds"]),
                     max_side=f["max_side"])


# ---------------------------------------------------------------- photos from installed packages

def rgb(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3].astype(np.uint8))


def photo(name: str) -> np.ndarray:
    """A real photo as H x W x 3 uint8 RGB, from scikit-image, matplotlib or scikit-learn."""
    if name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return rgb(Image.open(f).convert("RGB"))
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return rgb(load_sample_image(f"{name}.jpg"))
    import skimage.data
    if name == "motorcycle":
        return rgb(skimage.data.stereo_motorcycle()[0])
    return rgb(getattr(skimage.data, name)())


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b scaled to a's height, placed right of a."""
    from PIL import Image
    h = a.shape[0]
    w = round(b.shape[1] * h / b.shape[0])
    b = np.asarray(Image.fromarray(b).resize((w, h), Image.BILINEAR))
    return np.concatenate([a, b], axis=1)


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


# ---------------------------------------------------------------- a package index on 127.0.0.1

class PackageIndex:
    """A PEP 503 simple index on 127.0.0.1 serving one wheel (its bytes may be altered)."""

    def __init__(self, root: pathlib.Path, wheel_bytes: bytes, name=convert.WHEEL):
        files = root / "files"
        page = root / "simple" / convert.PACKAGE
        files.mkdir(parents=True)
        page.mkdir(parents=True)
        (files / name).write_bytes(wheel_bytes)
        digest = hashlib.sha256(wheel_bytes).hexdigest()
        (page / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="../../files/{name}#sha256={digest}">'
            f"{name}</a></body></html>")
        self.requests = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                index.requests.append(self.path)
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hermetic_pip_env() -> dict:
    """os.environ without pip settings that add other indexes or wheel folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/simple/"
