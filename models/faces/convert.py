"""MTCNN weights: download the facenet-pytorch wheel, read its state dicts, write .caffemodels.

The MIT-licensed P-Net, R-Net and O-Net weights ship inside the ``facenet-pytorch`` wheel on PyPI
as torch state dicts (``facenet_pytorch/data/{pnet,rnet,onet}.pt``). This module fetches that
wheel once with ``pip download --no-deps`` (pinned version, pinned sha256), reads the three files
straight out of the zip with ``torch.load(weights_only=True)`` -- the package is never installed
or imported -- and writes ``pnet.caffemodel``, ``rnet.caffemodel`` and ``onet.caffemodel`` for
the nets in ``prototxt/faces/`` into ``<models_dir>/faces/``.

Mapping from facenet-pytorch's modules to the prototxt's layers:
  * convolutions and PReLUs: same shapes, same layout (both take N x 3 x H x W images);
  * dense layers: facenet-pytorch flattens the last feature map after permuting it to
    (N, W, H, C); Caffe's InnerProduct flattens (N, C, H, W). The first dense layer's columns
    are reordered from (w, h, c) to (c, h, w) so that both compute the same thing.

    python -m models.faces.convert [--models-dir DIR] [--wheel FILE] [--index-url URL]
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from deepselfie.errors import CaffeError, UserError

PACKAGE = "facenet-pytorch"
VERSION = "2.6.0"
WHEEL = f"facenet_pytorch-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
# bump when the mapping below changes: older converted files are then rewritten
CONVERTER_VERSION = 1

NETS = ("pnet", "rnet", "onet")
PROTOTXT_DIR = pathlib.Path(__file__).resolve().parents[2] / "prototxt" / "faces"

# prototxt layer -> (facenet-pytorch module, how to map its tensors)
LAYER_MAP = {
    "pnet": {
        "conv1": "conv1", "PReLU1": "prelu1", "conv2": "conv2", "PReLU2": "prelu2",
        "conv3": "conv3", "PReLU3": "prelu3", "conv4-1": "conv4_1", "conv4-2": "conv4_2",
    },
    "rnet": {
        "conv1": "conv1", "prelu1": "prelu1", "conv2": "conv2", "prelu2": "prelu2",
        "conv3": "conv3", "prelu3": "prelu3", "conv4": "dense4", "prelu4": "prelu4",
        "conv5-1": "dense5_1", "conv5-2": "dense5_2",
    },
    "onet": {
        "conv1": "conv1", "prelu1": "prelu1", "conv2": "conv2", "prelu2": "prelu2",
        "conv3": "conv3", "prelu3": "prelu3", "conv4": "conv4", "prelu4": "prelu4",
        "conv5": "dense5", "prelu5": "prelu5", "conv6-1": "dense6_1", "conv6-2": "dense6_2",
        "conv6-3": "dense6_3",
    },
}
# the dense layer that reads a feature map: its name and the map's (C, H, W)
FLATTENING_DENSE = {"rnet": ("conv4", (64, 3, 3)), "onet": ("conv5", (128, 3, 3))}


def weights_dir(models_dir) -> pathlib.Path:
    return pathlib.Path(models_dir) / "faces"


def caffemodel_path(models_dir, net: str) -> pathlib.Path:
    return weights_dir(models_dir) / f"{net}.caffemodel"


def prototxt_path(net: str) -> pathlib.Path:
    return PROTOTXT_DIR / f"{net}.prototxt"


def _manifest_path(models_dir) -> pathlib.Path:
    return weights_dir(models_dir) / "weights.json"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_ready(models_dir) -> bool:
    """The three .caffemodels are there, made by this converter from the pinned wheel."""
    try:
        manifest = json.loads(_manifest_path(models_dir).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("converter") != CONVERTER_VERSION or manifest.get("wheel_sha256") != \
            WHEEL_SHA256:
        return False
    files = manifest.get("files", {})
    for net in NETS:
        path = caffemodel_path(models_dir, net)
        if not path.is_file() or files.get(net, {}).get("bytes") != path.stat().st_size:
            return False
    return True


# ---------------------------------------------------------------- the wheel

def how_to_fix(models_dir) -> str:
    cache = weights_dir(models_dir)
    return (f"run `deepselfie faces --fetch-weights` where PyPI is reachable, or put {WHEEL} "
            f"(sha256 {WHEEL_SHA256}) into {cache} and rerun")


def check_wheel(path) -> pathlib.Path:
    """A local wheel file whose sha256 is the pinned one, or a UserError."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError("facenet-pytorch wheel not found", path=path)
    digest = sha256_file(path)
    if digest != WHEEL_SHA256:
        raise UserError(f"sha256 is {digest}, expected {WHEEL_SHA256} ({PACKAGE}=={VERSION}); "
                        "delete it and download again", path=path)
    return path


def download_wheel(dest_dir, *, index_url: str | None = None) -> pathlib.Path:
    """``pip download --no-deps facenet-pytorch==VERSION`` into dest_dir; checks the sha256.

    Nothing is installed. The file appears in dest_dir only once it is complete and verified.
    """
    dest_dir = pathlib.Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / WHEEL
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--retries", "2",
               "--dest", tmp, f"{PACKAGE}=={VERSION}"]
        if index_url:
            cmd[4:4] = ["--index-url", index_url]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise UserError(f"pip download of {PACKAGE}=={VERSION} timed out", path=dest_dir)
        got = pathlib.Path(tmp) / WHEEL
        if proc.returncode != 0 or not got.is_file():
            raise UserError(f"pip download of {PACKAGE}=={VERSION} failed "
                            f"({_pip_reason(proc.stdout + proc.stderr)})", path=dest_dir)
        check_wheel(got)
        os.replace(got, target)
    return target


def _pip_reason(output: str) -> str:
    """The most telling line of pip's output."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("ERROR:"):
            return ln[len("ERROR:"):].strip()
    return lines[-1] if lines else "no output"


def obtain_wheel(models_dir, *, wheel=None, index_url=None) -> pathlib.Path:
    """The verified wheel: ``wheel`` if given, else the cached copy, else a fresh download."""
    if wheel:
        return check_wheel(wheel)
    cached = weights_dir(models_dir) / WHEEL
    if cached.is_file():
        return check_wheel(cached)
    try:
        return download_wheel(weights_dir(models_dir), index_url=index_url)
    except UserError as e:
        raise UserError(f"MTCNN weights are missing and {e.detail}: {how_to_fix(models_dir)}",
                        path=weights_dir(models_dir)) from None


def read_state_dicts(wheel_path) -> dict:
    """{'pnet': state dict, ...} read from inside the wheel (never imported)."""
    import torch
    out = {}
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            for net in NETS:
                data = zf.read(f"facenet_pytorch/data/{net}.pt")
                out[net] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise UserError(f"cannot read the MTCNN state dicts ({e})", path=wheel_path) from None
    return out


# ---------------------------------------------------------------- the mapping

def caffe_blobs(net: str, state_dict: dict) -> dict:
    """{prototxt layer: [numpy arrays in Caffe's blob order]} for one net."""
    import numpy as np
    out = {}
    for layer, module in LAYER_MAP[net].items():
        weight = state_dict[f"{module}.weight"].detach().float().numpy()
        bias = state_dict.get(f"{module}.bias")
        if net in FLATTENING_DENSE and FLATTENING_DENSE[net][0] == layer:
            c, h, w = FLATTENING_DENSE[net][1]
            # columns indexed (w, h, c) in facenet-pytorch -> (c, h, w) in Caffe
            weight = weight.reshape(-1, w, h, c).transpose(0, 3, 2, 1).reshape(-1, c * h * w)
        blobs = [np.ascontiguousarray(weight)]
        if bias is not None:
            blobs.append(bias.detach().float().numpy())
        out[layer] = blobs
    return out


def convert(state_dicts: dict, out_dir) -> dict:
    """Write <out_dir>/{pnet,rnet,onet}.caffemodel; returns {net: {'bytes', 'sha256'}}."""
    import torch

    import models.caffe as caffe
    out_dir = pathlib.Path(out_dir)
    files = {}
    for net_name in NETS:
        net = caffe.Net(str(prototxt_path(net_name)), caffe.TEST, device="cpu", fast=False)
        blobs = caffe_blobs(net_name, state_dicts[net_name])
        if set(blobs) != set(net.params):
            raise RuntimeError(f"{net_name}: layers {sorted(net.params)} vs mapped "
                               f"{sorted(blobs)}")
        for layer, arrays in blobs.items():
            params = net.params[layer]
            for i, (blob, arr) in enumerate(zip(params, arrays)):
                if blob.shape != arr.shape:
                    raise RuntimeError(f"{net_name} {layer} param {i}: {arr.shape} vs "
                                       f"{blob.shape}")
                with torch.no_grad():
                    blob.tensor.copy_(torch.from_numpy(arr))
        path = out_dir / f"{net_name}.caffemodel"
        net.save(str(path))
        files[net_name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def ensure_weights(models_dir, *, wheel=None, index_url=None, force=False,
                   log=None) -> pathlib.Path:
    """Make sure <models_dir>/faces holds the converted weights; returns that folder.

    Downloads and converts on first use; offline, one UserError says what to run or where to
    put the wheel. Files are written atomically, the manifest last.
    """
    out = weights_dir(models_dir)
    if not force and weights_ready(models_dir):
        return out
    path = obtain_wheel(models_dir, wheel=wheel, index_url=index_url)
    if log:
        log.info("converting MTCNN weights from %s into %s", path.name, out)
    out.mkdir(parents=True, exist_ok=True)
    files = convert(read_state_dicts(path), out)
    manifest = {"source": f"{PACKAGE}=={VERSION} ({WHEEL})", "wheel_sha256": WHEEL_SHA256,
                "license": "MIT (facenet-pytorch, Copyright (c) 2019 Timothy Esler)",
                "converter": CONVERTER_VERSION, "files": files}
    from models.caffe.protoio import atomic_write_bytes
    atomic_write_bytes(_manifest_path(models_dir), json.dumps(manifest, indent=2).encode())
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m models.faces.convert", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--models-dir", default="data/models", help="default: data/models")
    ap.add_argument("--wheel", help=f"a local {WHEEL} instead of downloading it")
    ap.add_argument("--index-url", help="package index for pip download (default: pip's)")
    ap.add_argument("--force", action="store_true", help="convert again even if present")
    args = ap.parse_args(argv)
    try:
        out = ensure_weights(args.models_dir, wheel=args.wheel, index_url=args.index_url,
                             force=args.force)
    except CaffeError as e:   # UserError, or the runtime's writing the .caffemodel
        print(f"convert: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"convert: MTCNN weights in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
