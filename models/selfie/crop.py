"""Best-crop search: which crop of a photo does the net like most?

A crop has the net's input aspect (square for VGG16) and three bounded parameters:

    scale  in [min_scale, 1]   the crop's height over the largest such crop that fits
    fx, fy in [0, 1]           where it sits: 0 = left/top edge, 1 = right/bottom edge

The search scores a coarse grid of (scale, fx, fy) first, then refines around the best with
shrinking steps (the six axis neighbours plus seeded random jitter), every round's candidates going
through the net as one batch. The uncropped image (as ``deepselfie score`` sees it) is a candidate
too, so the best never scores below the original. Candidates are cut from a copy of the photo
shrunk just enough that the smallest crop still has the net's resolution; the winners are scored
again from the full-resolution photo, so the reported score is the score of the crop written.

    from models.selfie.crop import CropSearch, search_crop
    result = search_crop(scorer, load_bgr("me.jpg"), CropSearch(seed=0))
    result.box, result.score, result.original_score
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

from deepselfie.console import get_logger, progress
from deepselfie.files import atomic_write

from .score import UnreadableImage, list_images, load_bgr, resize

log = get_logger("crop")


@dataclasses.dataclass(frozen=True)
class CropSearch:
    """The search's bounds and effort (config section ``crop``; the config schema checks their
    ranges)."""

    min_scale: float = 0.4      # smallest crop, relative to the largest that fits
    grid_scales: int = 3        # coarse grid: this many scales ...
    grid_steps: int = 3         # ... times this many positions along x and along y
    rounds: int = 3             # refinement rounds, each halving the step
    candidates: int = 16        # crops scored per refinement round
    batch_size: int = 32        # most candidates in one forward
    seed: int = 0               # the jitter's random seed
    rescore: int = 3            # best crops scored again from the full-resolution image

    @classmethod
    def from_config(cls, section):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(section).items() if k in names})


@dataclasses.dataclass
class CropResult:
    box: tuple[int, int, int, int]     # x, y, width, height in the original's pixels
    score: float                       # the best crop's score (>= original_score)
    original_score: float              # the uncropped image's score
    uncropped: bool                    # True when no crop beat the whole image
    candidates: int                    # distinct candidates scored
    forwards: int                      # forward passes run

    def to_json(self) -> dict:
        return {"box": {"x": self.box[0], "y": self.box[1], "width": self.box[2],
                        "height": self.box[3]},
                "score": round(self.score, 6), "original_score": round(self.original_score, 6),
                "gain": round(self.score - self.original_score, 6), "uncropped": self.uncropped,
                "candidates": self.candidates, "forwards": self.forwards}


def crop_box(params, height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(scale, fx, fy) -> integer (x, y, w, h) inside a height x width image; aspect = w / h."""
    scale, fx, fy = params
    h_max = min(height, width / aspect)
    h = max(1, min(height, round(scale * h_max)))
    w = max(1, min(width, round(h * aspect)))
    x = round(fx * (width - w))
    y = round(fy * (height - h))
    return int(x), int(y), int(w), int(h)


def _grid(search: CropSearch) -> list[tuple[float, float, float]]:
    scales = np.linspace(search.min_scale, 1.0, search.grid_scales) if search.grid_scales > 1 \
        else np.array([(search.min_scale + 1.0) / 2])
    steps = np.linspace(0.0, 1.0, search.grid_steps) if search.grid_steps > 1 else np.array([.5])
    return [(float(s), float(x), float(y)) for s in scales[::-1] for y in steps for x in steps]


def _refinement(center, step, search: CropSearch, rng) -> list[tuple[float, float, float]]:
    """The six axis neighbours of center at ±step, then seeded jitter inside ±step, clipped."""
    lo = np.array([search.min_scale, 0.0, 0.0])
    hi = np.array([1.0, 1.0, 1.0])
    center = np.asarray(center, dtype=np.float64)
    moves = [sign * step[i] * np.eye(3)[i] for i in range(3) for sign in (-1, 1)]
    while len(moves) < search.candidates:
        moves.append(rng.uniform(-1, 1, 3) * step)
    return [tuple(np.clip(center + m, lo, hi).tolist()) for m in moves[:search.candidates]]


def search_crop(scorer, image: np.ndarray, search: CropSearch = CropSearch()) -> CropResult:
    """Find the crop of ``image`` (H x W x 3 uint8 BGR) that ``scorer`` scores highest."""
    rng = np.random.default_rng(search.seed)
    height, width = image.shape[:2]
    in_h, in_w = scorer.pre.height, scorer.pre.width
    aspect = in_w / in_h
    # Work on a copy shrunk so that the smallest crop still has the net's input height.
    h_max = min(height, width / aspect)
    shrink = min(1.0, in_h / (search.min_scale * h_max) * 1.05)
    small = image if shrink >= 1.0 else resize(image, max(1, round(height * shrink)),
                                                 max(1, round(width * shrink)))
    sy, sx = small.shape[0] / height, small.shape[1] / width
    seen: dict[tuple, float] = {}          # box -> score
    params_of: dict[tuple, tuple] = {}     # box -> the (scale, fx, fy) that made it
    forwards = 0

    def cut(img, box, fy=1.0, fx=1.0):
        x, y, w, h = box
        x0, y0 = int(round(x * fx)), int(round(y * fy))
        x1 = max(x0 + 1, int(round((x + w) * fx)))
        y1 = max(y0 + 1, int(round((y + h) * fy)))
        return img[y0:y1, x0:x1]

    def score_boxes(boxes, source, fy=1.0, fx=1.0, extra=()):
        """Score crops of source in batches of at most batch_size; returns their scores."""
        nonlocal forwards
        crops = list(extra) + [cut(source, b, fy, fx) for b in boxes]
        out = []
        for i in range(0, len(crops), search.batch_size):
            out.extend(scorer.score_images(crops[i:i + search.batch_size]).tolist())
            forwards += 1
        return out

    def evaluate(param_list, extra=()):
        boxes, params = [], []
        for p in param_list:
            b = crop_box(p, height, width, aspect)
            if b not in seen and b not in boxes:
                boxes.append(b)
                params.append(p)
        if not boxes and not extra:
            return []
        scores = score_boxes(boxes, small, sy, sx, extra)
        extra_scores, scores = scores[:len(extra)], scores[len(extra):]
        for b, s in zip(boxes, scores):
            seen[b] = s
        params_of.update(zip(boxes, params))
        return extra_scores

    def leader(b):                         # best score first; ties go to the larger crop
        return seen[b], b[2]

    # The coarse grid, with the uncropped image (from the full-resolution original) in its batch.
    (original_score,) = evaluate(_grid(search), extra=[image])
    best_box = max(seen, key=leader)
    grid_spacing = np.array([
        (1 - search.min_scale) / max(1, search.grid_scales - 1),
        1.0 / max(1, search.grid_steps - 1),
        1.0 / max(1, search.grid_steps - 1)])
    step = grid_spacing / 2
    for _ in range(search.rounds):
        evaluate(_refinement(params_of[best_box], step, search, rng))
        best_box = max(seen, key=leader)
        step = step / 2
    # Score the leaders again from the full-resolution image: that is the crop that is written.
    leaders = sorted(seen, key=leader, reverse=True)[:search.rescore]
    final = score_boxes(leaders, image)
    i = int(np.argmax(final))
    if final[i] > original_score:
        return CropResult(leaders[i], float(final[i]), float(original_score), False, len(seen),
                          forwards)
    return CropResult((0, 0, width, height), float(original_score), float(original_score), True,
                      len(seen), forwards)


def cut_box(image: np.ndarray, box) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(image[y:y + h, x:x + w])


# ---- the stage: crop every image under a folder, write pictures and JSON -----------------------

def _file_signature(path) -> list:
    st = os.stat(path)
    return [str(pathlib.Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _output_names(paths, root) -> dict:
    """Each input's output stem (relative to out), unique even when a.jpg and a.png meet."""
    stems = {}
    for p in paths:
        rel = p.relative_to(root) if root.is_dir() else pathlib.Path(p.name)
        stems[p] = rel.with_suffix("")
    counts = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {p: (s if counts[s] == 1 else s.with_name(f"{s.name}_{p.suffix.lstrip('.')}"))
            for p, s in stems.items()}


def _write_json(data, out: pathlib.Path):
    atomic_write(out, json.dumps(data, indent=1) + "\n")


def crop_images(scorer, source, out_dir, search: CropSearch = CropSearch(),
                show_progress=True) -> tuple[list[dict], list]:
    """The crop stage: for each image under ``source`` write <stem>.crop.jpg (the best crop),
    <stem>.compare.jpg (original with the box | best crop, both scores) and <stem>.json, plus
    crops.json listing them all. Images whose JSON matches (same file, model and search) are
    reused. Returns (records, [(path, reason)] for skipped files)."""
    from PIL import Image

    from deepselfie.report import pictures

    source = pathlib.Path(source)
    out_dir = pathlib.Path(out_dir)
    paths = list_images(source, exclude=out_dir)          # never crop our own crops
    names = _output_names(paths, source)
    model = {"deploy": _file_signature(scorer.deploy), "weights": _file_signature(scorer.weights),
             "pre": scorer.pre.signature(), "good_class": scorer.good_class}
    records, failed, reused = [], [], 0
    bar = progress(total=len(paths), desc="crop", unit="img") if show_progress else None
    for p in paths:
        stem = out_dir / names[p]
        files = {k: stem.with_name(stem.name + suffix) for k, suffix in
                 (("crop", ".crop.jpg"), ("compare", ".compare.jpg"), ("json", ".json"))}
        key = hashlib.sha256(json.dumps([_file_signature(p), model, dataclasses.asdict(search)])
                             .encode()).hexdigest()[:16]
        if bar is not None:
            bar.update(1)
        try:
            old = json.loads(files["json"].read_text())
            if old.get("key") == key and all(f.exists() for f in files.values()):
                records.append(old)
                reused += 1
                continue
        except (OSError, ValueError):
            pass
        try:
            image = load_bgr(p)
        except UnreadableImage as e:
            log.warning("skipped %s: %s", p, e)
            failed.append((p, str(e)))
            continue
        result = search_crop(scorer, image, search)
        best = cut_box(image, result.box)
        pictures.save_image(Image.fromarray(best[:, :, ::-1]), files["crop"])
        pictures.save_image(pictures.side_by_side(image, result.box, result.original_score,
                                                  best, result.score), files["compare"])
        record = {"path": str(p), "image": {"width": image.shape[1], "height": image.shape[0]},
                  **result.to_json(), "seed": search.seed, "key": key,
                  "crop": str(files["crop"]), "compare": str(files["compare"])}
        _write_json(record, files["json"])
        records.append(record)
    if bar is not None:
        bar.close()
    _write_json({"crops": records, "skipped": [{"path": str(p), "reason": r}
                                               for p, r in failed]}, out_dir / "crops.json")
    if reused:
        log.info("%d image(s) already cropped with the same model and search: reused", reused)
    return records, failed
