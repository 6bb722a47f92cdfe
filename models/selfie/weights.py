"""Fetch published weights into the models directory: a bounded, resumable download
(deepselfie.download: deadline, byte cap, checked Range resume, http(s) only), the published
checksum, an atomic install. A local file can stand in for the download.

    deepselfie fetch-weights vgg16                        # the published Caffe VGG16 files
    deepselfie fetch-weights vgg16 --url URL              # a mirror
    deepselfie fetch-weights vgg16 --path FILE            # a copy you already have
    deepselfie fetch-weights vgg16 --source torchvision   # torchvision's checkpoint, converted

The torchvision source downloads ``vgg16-397923af.pth`` (SHA-256 prefix 397923af, as torch.hub
names its files), converts it exactly to Caffe's layout (models/selfie/vgg16_torchvision.py) and
writes ``VGG_ILSVRC_16_layers_torchvision.caffemodel`` beside a model card
``VGG_ILSVRC_16_layers_torchvision.json`` that gives the mean values it expects (BGR 103.53,
116.28, 123.675, scale 1; not the classic VGG mean). The checkpoint stays in the models directory
so that a rerun converts again without downloading.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

from deepselfie.console import get_logger
from deepselfie.download import Checksum, Limits, download
from deepselfie.errors import UserError
from deepselfie.files import atomic_path, atomic_write

log = get_logger("fetch")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    checksum: Checksum | None = None
    size: int | None = None            # the published size in bytes: never more is written
    max_bytes: int | None = None       # a cap when the size is not published


# The published VGG16 (Simonyan & Zisserman, ILSVRC-2014): weights from the authors' site, the V1
# deploy prototxt from their gist. SHA-1 values as listed by the Caffe model zoo.
MODELS = {
    "vgg16": [
        RemoteFile("VGG_ILSVRC_16_layers.caffemodel",
                   "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
                   "VGG_ILSVRC_16_layers.caffemodel",
                   Checksum("sha1", "9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24"),
                   size=553_432_081),
        RemoteFile("VGG_ILSVRC_16_layers_deploy.prototxt",
                   "https://gist.githubusercontent.com/ksimonyan/211839e770f7b538e2d8/raw/"
                   "0067c9b32f60362c74f4c445a080beed06b07eb3/"
                   "VGG_ILSVRC_16_layers_deploy.prototxt",
                   Checksum("sha1", "2734e5500f1445bd7c9fee540c99f522485247bd"),
                   max_bytes=1 << 20),
    ],
}

# torchvision's VGG16_Weights.IMAGENET1K_V1: the file name carries its SHA-256 prefix
TORCHVISION = {
    "vgg16": RemoteFile("vgg16-397923af.pth",
                        "https://download.pytorch.org/models/vgg16-397923af.pth",
                        Checksum("sha256", "397923af"), size=553_433_881),
}
CONVERTED = {"vgg16": "VGG_ILSVRC_16_layers_torchvision.caffemodel"}
SOURCES = ("caffe", "torchvision")


def install_local(src, dest, *, checksum: Checksum | None = None) -> pathlib.Path:
    """Copy a file the user already has into place (verified, atomically)."""
    src, dest = pathlib.Path(src), pathlib.Path(dest)
    if not src.is_file():
        raise UserError("file not found", path=src)
    if checksum is not None:
        checksum.verify(src, "--path")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _obtain(rf: RemoteFile, dest, *, url, path, checksum, limits: Limits) -> pathlib.Path:
    """The main file of a model: a local copy, a mirror or the published URL. The published
    size caps the download unless another file was asked for (--sha1/--sha256)."""
    if path is not None:
        return install_local(path, dest, checksum=checksum)
    same_file = checksum is None or checksum == rf.checksum
    size = rf.size if same_file else None
    return download(url or rf.url, dest, checksum=checksum, size=size, limits=limits)


def fetch_model(name: str, models_dir, *, source: str = "caffe", url: str | None = None,
                path=None, checksum: Checksum | None = None, verify: bool = True,
                limits: Limits = Limits()) -> list[pathlib.Path]:
    """Fetch a named model's weights into models_dir. ``source`` "caffe": the published
    .caffemodel (from ``url`` or a local ``path`` when given) and its companion files;
    "torchvision": torchvision's checkpoint, converted to a .caffemodel. Checksums: ``checksum``
    or the published one, unless ``verify`` is off. Companions that cannot be fetched are
    skipped with a warning when the weights came from elsewhere (the project ships its own
    deploy prototxts)."""
    if name not in MODELS:
        raise UserError(f"unknown model; known: {', '.join(sorted(MODELS))}", path=name)
    if source not in SOURCES:
        raise UserError(f"unknown source; known: {', '.join(SOURCES)}", path="--source")
    models_dir = pathlib.Path(models_dir)
    if source == "torchvision":
        return fetch_torchvision(name, models_dir, url=url, path=path, checksum=checksum,
                                 verify=verify, limits=limits)
    weights, *companions = MODELS[name]
    if checksum is not None and checksum.algo != "sha1":
        raise UserError("the Caffe weights are checked by SHA-1 (--sha1)", path="--sha256")
    want = (checksum or weights.checksum) if verify else None
    out = [_obtain(weights, models_dir / weights.filename, url=url, path=path, checksum=want,
                   limits=limits)]
    for rf in companions:
        try:
            cap = dataclasses.replace(limits, max_bytes=rf.max_bytes or limits.max_bytes)
            out.append(download(rf.url, models_dir / rf.filename,
                                checksum=rf.checksum if verify else None, size=rf.size,
                                limits=cap))
        except UserError as e:
            if url is None and path is None:
                raise
            log.warning("skipped %s: %s", rf.filename, e)
    return out


def fetch_torchvision(name: str, models_dir, *, url=None, path=None,
                      checksum: Checksum | None = None, verify: bool = True,
                      limits: Limits = Limits()) -> list[pathlib.Path]:
    """torchvision's checkpoint (checked by its SHA-256 prefix), converted exactly to the Caffe
    layout; returns [the .caffemodel, its model card]."""
    from models.selfie import vgg16_torchvision as tv

    if checksum is not None and checksum.algo != "sha256":
        raise UserError("torchvision checkpoints are checked by SHA-256 (--sha256)",
                        path="--sha1")
    rf = TORCHVISION[name]
    models_dir = pathlib.Path(models_dir)
    want = (checksum or rf.checksum) if verify else None
    pth = _obtain(rf, models_dir / rf.filename, url=url, path=path, checksum=want, limits=limits)
    dest = models_dir / CONVERTED[name]
    log.info("converting %s into %s", pth.name, dest.name)
    try:
        tv.convert(pth, dest)
    except UserError as e:
        pth.unlink(missing_ok=True)        # useless as it is; the next run fetches it again
        raise UserError(f"{e.detail}; it was removed", path=e.path) from None
    card = {
        "weights": dest.name,
        "source": f"torchvision {rf.filename} ({url or path or rf.url})",
        "sha256": want.hexdigest if want else None,
        "deploy": "prototxt/zoo/VGG_ILSVRC_16_layers_deploy.prototxt",
        "channels": "BGR", "input_range": "0-255", "input_size": [224, 224],
        "mean_value_bgr": list(tv.CAFFE_MEAN_BGR), "scale": 1.0,
        "classes": "ILSVRC-2012, 1000 synsets sorted by WordNet id (as Caffe's VGG16)",
        "note": "conv1_1 folds torchvision's mean/std; exact with these mean values. The "
                "classic VGG mean (103.939, 116.779, 123.68) differs by at most 0.5/255 and "
                "changes only conv1_1's one-pixel border.",
    }
    card_path = atomic_write(dest.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
    return [dest, card_path]
