"""The face stage: mark every downloaded image in the catalog with its faces (``scan``), or look
at one photo (``detect_one``). ``deepselfie faces`` (deepselfie/cli/faces.py) calls these.

Each image gets a ``face_scans`` row (face count, the largest face's share of the image, the
detector's settings) and one ``faces`` row per face (box, score, landmarks), written batch by
batch in transactions: an interrupted run keeps what it finished and the next run goes on from
there. Coordinates are pixels of the full-size image as displayed.
"""
from __future__ import annotations

import json

from deepselfie.console import get_logger, progress, summary
from deepselfie.errors import UserError
from deepselfie.tally import closing_line

log = get_logger("faces")

# The stage's counters, as its summary (and the catalog's runs table) names them.
IMAGES = "images"                     # images in the catalog
ALREADY_SCANNED = "already_scanned"   # scanned by an earlier run (left alone)
SCANNED = "scanned"                   # scanned by this run
WITH_FACES = "with_faces"             # ... of which with at least one face
FACES = "faces"                       # faces found by this run
UNREADABLE = "unreadable"             # images that could not be decoded


# ---------------------------------------------------------------- the detector from config

def fetch_weights(cfg):
    from .convert import ensure_weights
    return ensure_weights(cfg.models_dir, wheel=cfg.faces.wheel, index_url=cfg.faces.index_url,
                          log=log)


def detector_settings(cfg) -> dict:
    """The detector's part of the faces section (the config schema checked the values)."""
    f = cfg.faces
    th = f.thresholds
    return dict(min_face_size=f.min_face_size, scale_factor=f.scale_factor,
                thresholds=tuple(th), max_side=f.max_side)


def detector_name(settings: dict) -> str:
    from .convert import PACKAGE, VERSION
    th = ",".join(f"{t:g}" for t in settings["thresholds"])
    return (f"mtcnn {PACKAGE}-{VERSION} min_face={settings['min_face_size']} "
            f"factor={settings['scale_factor']:g} thresholds={th} "
            f"max_side={settings['max_side']}")


def load_detector(cfg):
    """A FaceDetector as config says (device, fast mode), weights fetched if needed. Its nets run
    on the torch engine (it feeds them torch tensors); the CLI applies runtime.threads and warns
    when runtime.backend asks for another engine (deepselfie.cli.apply_runtime)."""
    from models.caffe.state import resolve_device

    from .detect import FaceDetector
    settings = detector_settings(cfg)
    folder = fetch_weights(cfg)
    device = resolve_device(cfg.runtime.device)
    return FaceDetector(folder, device=device, fast=cfg.runtime.fast,
                        compile=cfg.runtime.compile,
                        compile_cache=cfg.data_dir / "cache" / "inductor", **settings), settings


# ---------------------------------------------------------------- one photo

def detect_one(cfg, path, *, as_json=False, draw=None) -> int:
    from .draw import check_out_path, draw_faces
    from .image import load_rgb
    if draw:
        check_out_path(draw)
    rgb, _ = load_rgb(path)
    detector, _ = load_detector(cfg)
    faces = detector.detect([rgb])[0]
    if draw:
        draw_faces(rgb, faces, draw)
        log.info("wrote %s", draw)
    if as_json:
        print(json.dumps({"faces": [f.to_json() for f in faces]}))
        return 0
    for f in faces:
        x1, y1, x2, y2 = f.box
        print(f"  face {x1:.0f},{y1:.0f} - {x2:.0f},{y2:.0f}  score {f.score:.4f}")
    summary("faces", f"{len(faces)} face{'s' if len(faces) != 1 else ''} in {path}")
    return 0


# ---------------------------------------------------------------- the catalog

def scan(cfg, *, rescan: bool = False) -> dict:
    """The stage: detect faces in every catalog image not scanned yet (all with ``rescan``),
    record them, print the summary line; returns the summary as a dict (keys: the counters
    below, and status and seconds when something was scanned)."""
    from deepselfie.catalog import Catalog
    with Catalog(cfg.catalog_path, create=False) as cat:
        total = cat.counts()["images"]
        todo = cat.images_to_scan(rescan=rescan)
        counters = {IMAGES: total, ALREADY_SCANNED: total - len(todo), SCANNED: 0,
                    WITH_FACES: 0, FACES: 0, UNREADABLE: 0}
        if not todo:
            summary("faces", "nothing to do: " + (
                f"all {total} images are scanned (--rescan to scan them again)" if total else
                "the catalog has no downloaded images yet (run `deepselfie scrape`)"))
            return counters
        detector, settings = load_detector(cfg)
        detector.work_images = len(todo)      # what runtime.compile: auto weighs
        name = detector_name(settings)
        with closing_line(cat.run("faces", {"rescan": rescan, "detector": name}),
                          _describe) as run:
            for what, n in counters.items():
                run.add(what, n=n)
            with progress(total=len(todo), desc="faces", unit="img") as bar:
                for i in range(0, len(todo), cfg.faces.batch_size):
                    batch = todo[i:i + cfg.faces.batch_size]
                    _scan_batch(cat, cfg, detector, name, batch, run)
                    bar.update(len(batch))
    return run.summary()


def _describe(run) -> str:
    """The closing summary line."""
    seconds = run.seconds
    return (f"scanned {run[SCANNED]} images in {seconds:.1f} s "
            f"({run[SCANNED] / max(seconds, 1e-9):.1f}/s): {run[WITH_FACES]} with faces "
            f"({run[FACES]} faces), {run[SCANNED] - run[WITH_FACES]} without, "
            f"{run[UNREADABLE]} unreadable; {run[ALREADY_SCANNED]} scanned before")


def _scan_batch(cat, cfg, detector, name, batch, run):
    from deepselfie.catalog import FaceRecord, FaceScan

    from .image import load_rgb
    loaded = []
    for image in batch:
        try:
            rgb, scale = load_rgb(cfg.data_dir / image.path, at_least=detector.max_side)
        except UserError as e:
            log.warning("skipping %s: %s", image.sha256[:12], e)
            run.add(UNREADABLE)
            continue
        loaded.append((image.sha256, rgb, scale))
    if not loaded:
        return
    found = detector.detect([rgb for _, rgb, _ in loaded])
    scans = []
    for (sha, rgb, (sx, sy)), faces in zip(loaded, found):
        faces = [f.scaled(sx, sy) for f in faces]
        area = rgb.shape[0] * sy * rgb.shape[1] * sx
        share = max((f.area for f in faces), default=0.0) / area
        scans.append(FaceScan(sha, tuple(FaceRecord(f.box, f.score, f.to_json()["landmarks"])
                                         for f in faces), share))
    cat.record_face_scans(scans, name)
    for scan_ in scans:
        run.add(SCANNED)
        run.add(FACES, n=len(scan_.faces))
        run.add(WITH_FACES, n=int(bool(scan_.faces)))
