"""Fetch published weights into the models directory: resumable HTTP download (Range requests into
a ``.part`` file), SHA-1 check, atomic rename. A local file can stand in for the download.

    deepselfie fetch-weights vgg16                  # the published VGG16 files
    deepselfie fetch-weights vgg16 --url URL        # a mirror
    deepselfie fetch-weights vgg16 --path FILE      # a copy you already have
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import time

from deepselfie.console import get_logger, progress
from deepselfie.errors import UserError
from deepselfie.files import atomic_path

log = get_logger("fetch")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    sha1: str | None = None
    size: int | None = None


# The published VGG16 (Simonyan & Zisserman, ILSVRC-2014): weights from the authors' site, the V1
# deploy prototxt from their gist. SHA-1 values as listed by the Caffe model zoo.
MODELS = {
    "vgg16": [
        RemoteFile("VGG_ILSVRC_16_layers.caffemodel",
                   "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
                   "VGG_ILSVRC_16_layers.caffemodel",
                   "9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24"),
        RemoteFile("VGG_ILSVRC_16_layers_deploy.prototxt",
                   "https://gist.githubusercontent.com/ksimonyan/211839e770f7b538e2d8/raw/"
                   "0067c9b32f60362c74f4c445a080beed06b07eb3/"
                   "VGG_ILSVRC_16_layers_deploy.prototxt",
                   "2734e5500f1445bd7c9fee540c99f522485247bd"),
    ],
}

CHUNK = 1 << 20


def sha1_of(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: pathlib.Path, sha1: str | None, what: str):
    if sha1 is None:
        return
    got = sha1_of(path)
    if got != sha1.lower():
        raise UserError(f"checksum mismatch: SHA-1 {got}, expected {sha1} ({what}); the file "
                        "was not kept", path=path)


def download(url: str, dest, *, sha1: str | None = None, retries: int = 5, timeout: float = 30,
             session=None) -> pathlib.Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with HTTP Range; verify SHA-1."""
    import requests

    dest = pathlib.Path(dest)
    if dest.exists() and (sha1 is None or sha1_of(dest) == sha1.lower()):
        log.info("%s is already there", dest)
        return dest
    if not url.startswith(("http://", "https://")):
        raise UserError("only http(s) URLs can be downloaded (use --path for a local file)",
                        path=url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    sess = session or requests.Session()
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with sess.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416:         # we already have every byte
                    break
                if r.status_code >= 400:
                    raise UserError(f"download failed: HTTP {r.status_code}", path=url)
                if have and r.status_code != 206:  # the server ignored Range: start over
                    have = 0
                total = r.headers.get("Content-Length")
                total = int(total) + have if total is not None else None
                mode = "ab" if have else "wb"
                with open(part, mode) as f, progress(total=total, initial=have, unit="B",
                                                     unit_scale=True, desc=dest.name) as bar:
                    for block in r.iter_content(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size < total:
                    raise requests.ConnectionError("connection closed early")
                break
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as e:
            attempt += 1
            if attempt > retries:
                raise UserError(
                    f"cannot download {url} ({type(e).__name__}); offline? Download it "
                    f"yourself and put it at {dest}, or pass --path FILE", path=dest) from None
            wait = min(30.0, 0.5 * 2 ** (attempt - 1))
            log.warning("download interrupted (%s); resuming in %.1f s", type(e).__name__, wait)
            time.sleep(wait)
    try:
        _verify(part, sha1, url)
    except UserError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def install_local(src, dest, *, sha1: str | None = None) -> pathlib.Path:
    """Copy a file the user already has into place (verified, atomically)."""
    src, dest = pathlib.Path(src), pathlib.Path(dest)
    if not src.is_file():
        raise UserError("file not found", path=src)
    _verify(src, sha1, "--path")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def fetch_model(name: str, models_dir, *, url: str | None = None, path=None,
                sha1: str | None = None, verify: bool = True, **kw) -> list[pathlib.Path]:
    """Fetch a named model's files into models_dir: the weights (from ``url`` or a local
    ``path`` when given) and its companion files. Checksums: ``sha1`` or the published one,
    unless ``verify`` is off. Companions that cannot be fetched are skipped with a warning
    when the weights came from elsewhere (the project ships its own deploy prototxts)."""
    if name not in MODELS:
        raise UserError(f"unknown model; known: {', '.join(sorted(MODELS))}", path=name)
    models_dir = pathlib.Path(models_dir)
    weights, *companions = MODELS[name]
    checksum = (sha1 or weights.sha1) if verify else None
    dest = models_dir / weights.filename
    if path is not None:
        out = [install_local(path, dest, sha1=checksum)]
    else:
        out = [download(url or weights.url, dest, sha1=checksum, **kw)]
    for rf in companions:
        try:
            out.append(download(rf.url, models_dir / rf.filename,
                                sha1=rf.sha1 if verify else None, **kw))
        except UserError as e:
            if url is None and path is None:
                raise
            log.warning("skipped %s: %s", rf.filename, e)
    return out
