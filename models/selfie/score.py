"""Score images with a trained deploy net: the probability of "good".

    from models.selfie.score import Scorer
    scorer = Scorer.from_card("snap_iter_1000.caffemodel")     # as trained (the model card)
    scorer = Scorer("prototxt/selfie_vgg16_deploy.prototxt", "snap_iter_1000.caffemodel",
                    mean="data/labels/mean.binaryproto")       # hand-set: squash, mean values
    results, failed = scorer.score_paths(paths)       # [(path, score)], [(path, reason)]

Images are read by the project's one loader (models.caffe.image) and become net input as
models.selfie.preprocess says: by default as the TEST phase of the training net saw its records
(the model card beside the weights says how), or by one of the hand-set modes squash, crop,
oversample. Worker threads decode and preprocess ahead of the net into preallocated batch buffers
(models.selfie.pipeline), so the net does not wait for images.
"""
from __future__ import annotations

import math
import os
import pathlib
import threading
import time
import weakref

import numpy as np

from deepselfie.console import get_logger, progress
from deepselfie.errors import UserError, shortened
from deepselfie.files import atomic_open
from models.caffe import image

from .pipeline import ForwardThreads, PooledBatches, PreparedBatches
from .preprocess import RESIZE_MODES, AsTrained, Preprocess, resize  # noqa: F401

log = get_logger("score")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# batches larger than this (VGG16 oversampled: 16 x 10 crops x 3 x 224 x 224 floats = 96 MB) get
# two buffers ahead of the net instead of three
BIG_BATCH = 64 << 20

UnreadableImage = image.ImageError      # the one image error (kind "too_large" for the limit)

# prepare="auto": a job of at least this many images, each image one net input, whose net runs
# on a GPU with at least PROCESS_MIN_WORKERS workers prepares them in worker processes, else in
# threads. Measured with benchmarks/bench_score.py (--prepare threads,processes), score img/s:
#   16-core H200 machine, CUDA   small net 1366 threads / 2757 processes; VGG16 fp32 440 / 529,
#                                bf16 776 / 944 (threads stop at ~5 cores' worth of preparing:
#                                the GIL, held for the Python between decodes)
#   the same 16 cores, CPU net   small net 1023 threads / 731 processes
#   2-core machine, CPU net      small net 907 threads / 617 processes
# A forward on the CPU wants the cores the worker processes would take (there threads and the
# forward's measured thread count share them better), and processes cost a start (~0.3 s each:
# numpy and OpenCV imported): on the GPU they pay, on the CPU they do not.
PROCESS_MIN_IMAGES = 256
PROCESS_MIN_WORKERS = 4      # (the default workers: one a core, up to 8)
PREPARE = ("auto", "threads", "processes")


class PoolPreparing:
    """A scorer's preparing as the reader and the transformer of a ``DecodePool`` (pickled once
    to each worker process): ``load`` decodes (label -1 and an empty image when the file cannot
    be read: the batch goes on without it), ``transform`` writes the net input."""

    def __init__(self, pre, min_side, item_shape):
        self.pre, self.min_side, self.item_shape = pre, min_side, tuple(item_shape)

    @staticmethod
    def payload(path):
        return None             # a path is small: the worker reads the file itself

    @staticmethod
    def describe(path):
        return f"image {str(path)!r}"

    def error(self, message):
        return UserError(message)

    def load(self, path):
        try:
            return load_bgr(path, min_side=self.min_side), 0.0
        except UnreadableImage:
            return np.zeros((0, 0, 3), np.uint8), -1.0

    def output_shape(self, _shape):
        return self.item_shape

    def transform(self, img, _draws, out):
        if img.size == 0:
            out[...] = 0.0
        else:
            self.pre.into(img, out)


def list_images(root, exclude=None) -> list[pathlib.Path]:
    """Every file under root (recursively, sorted); a single file is its own list. Files under
    ``exclude`` (a stage's own output folder inside root) are left out."""
    root = pathlib.Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError("no such file or folder", path=root)
    skip = pathlib.Path(exclude).resolve() if exclude is not None else None
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not (skip is not None and skip in p.resolve().parents))


def load_bgr(path, max_pixels=None, min_side=None) -> np.ndarray:
    """An image (a path, bytes or a binary file object) as H x W x 3 uint8 BGR, through the one
    loader: upright, transparency on white; ImageError with the reason (kind "too_large" when
    the header says more than ``max_pixels``; nothing is decoded then). With ``min_side``, a
    large JPEG is decoded at a reduced scale (DCT scaling) that keeps both sides at least that
    long: faster, but not the pixels the net was trained on (``--fast-decode``)."""
    return image.load(path, max_pixels=max_pixels or image.MAX_PIXELS, min_side=min_side)


def read_mean(spec) -> np.ndarray:
    """A mean as 3 BGR values: from a .binaryproto (averaged per channel), a .json of BGR values
    (as the label stage writes), or "B,G,R"."""
    if spec is None:
        raise UserError("no mean given: pass --mean (the label run's mean.binaryproto) or "
                        "set score.mean", path="--mean")
    if isinstance(spec, (list, tuple, np.ndarray)):
        values = np.asarray(spec, dtype=np.float32)
    elif isinstance(spec, str) and "," in spec and not os.path.exists(spec):
        try:
            values = np.asarray([float(v) for v in spec.split(",")], dtype=np.float32)
        except ValueError:
            raise UserError("expected B,G,R numbers or a file", path="--mean",
                            field=spec) from None
    else:
        p = pathlib.Path(spec)
        if p.suffix == ".json":
            import json
            try:
                data = json.loads(p.read_text())
            except FileNotFoundError:
                raise UserError("file not found", path=p) from None
            except ValueError as e:
                raise UserError(f"not JSON ({e})", path=p) from None
            values = np.asarray(data.get("bgr", data) if isinstance(data, dict) else data,
                                dtype=np.float32)
        else:
            from models.caffe.protoio import read_blobproto
            arr = read_blobproto(p)
            arr = arr.reshape(arr.shape[-3:]) if arr.ndim >= 3 else arr
            values = arr.reshape(arr.shape[0], -1).mean(axis=1)
    if values.shape != (3,):
        raise UserError(f"the mean needs 3 values (B, G, R), got {values.size}", path=str(spec))
    return values.astype(np.float32)


class Scorer:
    """A deploy net loaded once, scoring images in batches. ``good_class`` is the softmax index of
    "good" (label 1 in the label stage)."""

    def __init__(self, deploy, weights, *, mean=None, resize="squash", base=None, scale=1.0,
                 batch_size=16, device=None, fast=False, good_class=1, output=None,
                 workers=None, card=None, fast_decode=False, compile="off",
                 compile_cache=None, threads=None, prepare="auto"):
        """``resize="trained"`` preprocesses as the model ``card`` says (``mean`` and ``scale``,
        when not None, override the card's); the other modes use ``mean``'s channel values.
        ``threads``: torch threads while scoring paths (None: chosen as it runs, see
        models.selfie.pipeline.ForwardThreads); ``workers``: threads or processes preparing
        images (``prepare``: auto, threads, processes; see PROCESS_MIN_IMAGES)."""
        from models import caffe
        from models.caffe.state import resolve_device
        self.deploy, self.weights = pathlib.Path(deploy), pathlib.Path(weights)
        self.net = caffe.Net(str(deploy), str(weights), caffe.TEST,
                             device=resolve_device(device), fast=fast)
        if not self.net.inputs:
            raise UserError("the deploy net has no Input layer", path=deploy)
        self.input = self.net.inputs[0]
        shape = self.net.blobs[self.input].shape
        if len(shape) != 4 or shape[1] != 3:
            raise UserError(f"input {self.input!r} must be N x 3 x H x W, is {shape}",
                            path=deploy)
        self.output = output or self.net.outputs[-1]
        if resize == "trained":
            if card is None:
                raise UserError("--resize trained needs the model card of the weights",
                                path=weights)
            self.pre = AsTrained(card, mean=mean, scale=scale)
            if (self.pre.height, self.pre.width) != tuple(shape[2:]):
                raise UserError(f"the deploy net takes {shape[2]}x{shape[3]} inputs but the "
                                f"training net's TEST phase gives {self.pre.height}x"
                                f"{self.pre.width} (model card {card.get('path')})",
                                path=deploy)
        else:
            self.pre = Preprocess(shape[2], shape[3], read_mean(mean), resize, base,
                                  1.0 if scale is None else scale)
        self.fast_decode = bool(fast_decode)
        self.batch_size = max(1, int(batch_size))
        self.good_class = good_class
        self.workers = workers or min(8, (os.cpu_count() or 2))
        # worker processes: one core is the caller's (its forward, or feeding a GPU); they
        # only run while there is room ahead of the net, so a CPU forward's cores stay its own
        self.pool_workers = workers or max(2, min(32, (os.cpu_count() or 2) - 1))
        self.threads = threads or None
        self.split = None              # the ForwardThreads of the runs so far (what it measured)
        self.failed = []
        self.lock = threading.Lock()   # one forward at a time: the net's blobs are shared state
        # compiled inference (models.caffe.compiled): runtime.compile, its cache folder, and the
        # number of images the current job will run (what "auto" weighs against the compile)
        self.compile, self.compile_cache, self.work_images = compile, compile_cache, None
        # where images are prepared: worker threads or processes (PooledBatches)
        if prepare not in PREPARE:
            raise UserError(f"must be one of {', '.join(PREPARE)}", path="score.prepare",
                            field=str(prepare))
        self.prepare = prepare
        self._pool = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_card(cls, weights, **kw):
        """The scorer a snapshot's model card describes (``kw`` overrides: model=DEPLOY, mean,
        scale, resize, batch_size, device, ...); UserError naming the flags when there is no
        card."""
        from .card import find_card, missing_card_message
        card = find_card(weights)
        deploy = kw.pop("model", None) or (card or {}).get("deploy")
        if card is None or not deploy:
            if card is not None:
                raise UserError("the model card names no deploy net (none beside the "
                                "train_val): pass --model DEPLOY", path=card["path"])
            raise UserError(missing_card_message(weights), path=weights)
        kw.setdefault("resize", "trained")
        if kw.get("scale") is None and kw["resize"] != "trained":
            kw["scale"] = card["transform"]["scale"]
        if kw.get("mean") is None and kw["resize"] != "trained":
            t = card["transform"]
            values = t.get("mean_value") or []
            kw["mean"] = t.get("mean_file") or ((values * 3)[:3] if values else None)
        if kw["resize"] == "trained" and card.get("classes") and "good_class" not in kw:
            kw["good_class"] = card["classes"].index("good") if "good" in card["classes"] else 1
        return cls(deploy, weights, card=card, **kw)

    def load(self, path) -> np.ndarray:
        """An image file as this scorer reads it (BGR; large JPEGs decoded at reduced scale
        only with fast_decode)."""
        return load_bgr(path, min_side=self.pre.needed_side if self.fast_decode else None)

    def uses_processes(self, images: int) -> bool:
        """Whether a job of ``images`` prepares them in worker processes."""
        if self.prepare == "threads" or self.pre.crops != 1:
            return False
        return self.prepare == "processes" or (self.net.device.type != "cpu"
                                               and self.workers >= PROCESS_MIN_WORKERS
                                               and images >= PROCESS_MIN_IMAGES)

    def pool(self, shape, depth):
        """The worker processes (started with the first batch, kept for the next jobs, ended
        with the scorer or the process)."""
        from models.caffe.decode_pool import DecodePool
        if self._pool is None or self._pool.in_flight != depth:
            self.close()
            prep = PoolPreparing(self.pre, self.pre.needed_side if self.fast_decode else None,
                                 shape)
            self._pool = DecodePool(self.pool_workers, prep, prep, name="score",
                                    in_flight=depth, here=False)
            weakref.finalize(self, self._pool.close)
        return self._pool

    def close(self):
        """End the worker processes, if any (they also end with this process)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _reason(self, path) -> str:
        """Why a worker could not read ``path`` (read again here)."""
        try:
            self.load(path)
        except UnreadableImage as e:
            return str(e)
        return "could not be read (it changed while it was scored)"

    def _prepare_into(self, path, out) -> str | None:
        """Write an image file's net input into ``out``; the reason when it is unreadable."""
        try:
            self.pre.into(self.load(path), out)
        except UnreadableImage as e:
            return str(e)
        return None

    def run(self, batch: np.ndarray, blobs=()) -> tuple[np.ndarray, dict]:
        """One forward of N*crops x 3 x H x W inputs -> (N probabilities of "good", {blob: N x D
        values}), crops averaged. Thread-safe: forwards are serialized by ``self.lock``."""
        import torch

        from models.caffe import compiled
        for blob in blobs:
            self.check_blob(blob)
        k = self.pre.crops
        n = len(batch) // k
        with self.lock, torch.no_grad():
            if compiled.compilable(self.net):
                probs = compiled.forward(self.net, (self.output, *blobs), self.compile,
                                         self.work_images, self.compile_cache, pad_batch=True,
                                         **{self.input: batch})[self.output]
            else:   # real pycaffe (runtime.backend: caffe) feeds only a blob of the batch's shape
                self.net.blobs[self.input].reshape(*batch.shape)
                probs = self.net.forward(blobs=list(blobs), **{self.input: batch})[self.output]
            probs = np.array(probs, dtype=np.float32).reshape(n, k, -1)
            values = {b: np.array(self.net.blobs[b].data, dtype=np.float32).reshape(n, k, -1)
                      .mean(axis=1) for b in blobs}
        if probs.shape[-1] <= self.good_class:
            raise UserError(f"output {self.output!r} has {probs.shape[-1]} values; no class "
                            f"{self.good_class}", path=self.deploy, field="good_class")
        return probs.mean(axis=1)[:, self.good_class], values

    def check_blob(self, blob: str):
        if blob not in self.net.blobs:
            raise UserError(f"no blob {blob!r} in the net (blobs: "
                            f"{', '.join(self.net.blobs)})", path=self.deploy, field="--blob")

    def score_arrays(self, batch: np.ndarray) -> np.ndarray:
        """N*crops x 3 x H x W inputs -> N probabilities of "good" (crops averaged)."""
        return self.run(batch)[0]

    def features(self, batch: np.ndarray, blob: str) -> np.ndarray:
        """Run a batch and return one blob's values per image (crops averaged), e.g. fc7."""
        return self.run(batch, (blob,))[1][blob]

    def score_images(self, images) -> np.ndarray:
        """H x W x 3 uint8 BGR arrays -> their probabilities of "good", all in one forward."""
        return self.score_arrays(np.concatenate([self.pre(im) for im in images]))

    def iter_batches(self, paths, show_progress=True, desc="score"):
        """Yield (paths, inputs) batches of ``batch_size`` readable images, prepared ahead by
        worker threads into preallocated buffers while the caller runs the previous batch
        (models.selfie.pipeline); ``inputs`` is valid until the next step. Files that cannot
        be read are skipped with a warning and listed in ``self.failed``, in path order. While
        it runs, torch gets the threads ``self.threads`` says (None: the step of 1, 2, 4, ...
        up to torch's own that scores fastest, measured: models.selfie.pipeline.ForwardThreads)."""
        failed = self.failed = []
        paths = list(paths)
        self.work_images = len(paths) * self.pre.crops
        bar = progress(total=len(paths), desc=desc, unit="img") \
            if show_progress else None

        def skipped(path, reason):
            log.warning("skipped %s: %s", path, reason)
            failed.append((path, reason))

        shape = (self.pre.crops, 3, self.pre.height, self.pre.width)
        batch_bytes = 4 * self.batch_size * int(np.prod(shape))
        depth = 3 if batch_bytes <= BIG_BATCH else 2
        done = bar.update if bar is not None else None
        # one job at a time has the pool (its batches are collected in the order submitted);
        # a job beside it, from another thread, prepares in threads
        pooled = self.uses_processes(len(paths)) and self._pool_lock.acquire(blocking=False)
        if pooled:
            try:
                pool = self.pool(shape, depth)
            except BaseException:
                self._pool_lock.release()
                raise
            batches = PooledBatches(paths, pool, shape, self.batch_size, self._reason,
                                    depth=depth, on_failure=skipped, on_done=done)
        else:
            batches = PreparedBatches(paths, self._prepare_into, shape, self.batch_size,
                                      self.workers, depth=depth, on_failure=skipped,
                                      on_done=done)
        steps = iter(batches)
        if self.split is None or self.split.fixed != (self.threads or None):
            self.split = ForwardThreads(self.threads)
        with self.split as threads:
            try:
                first = True
                while True:
                    started = time.perf_counter()
                    try:
                        step = next(steps, None)
                    except RuntimeError:    # a worker process died or failed: the next job
                        if pooled:          # starts a new pool
                            self.close()
                        raise
                    if step is None:
                        break
                    waited = time.perf_counter() - started
                    yield step
                    threads.observe(len(step[0]), waited, time.perf_counter() - started - waited,
                                    batches.cpu_per_image, first)
                    first = False
            finally:               # the caller stopped early (or failed): stop the workers
                steps.close()
                if pooled:
                    self._pool_lock.release()
        if bar is not None:
            bar.close()

    def score_paths(self, paths, show_progress=True):
        """-> ([(path, score)] sorted best first, [(path, reason)] for skipped files)."""
        paths = [pathlib.Path(p) for p in paths]
        results = []
        for batch_paths, inputs in self.iter_batches(paths, show_progress):
            results.extend(zip(batch_paths, self.score_arrays(inputs).tolist()))
        results.sort(key=lambda r: (-r[1], str(r[0])))
        return results, list(self.failed)


def read_scores(csv_path) -> list[tuple[pathlib.Path, float]]:
    """The rows of a scores.csv written by ``deepselfie score`` as [(path, score)]. Relative paths
    are taken from the current folder, or else from the CSV's folder."""
    import csv
    csv_path = pathlib.Path(csv_path)
    try:            # (utf-8-sig: a spreadsheet's export starts with a byte order mark)
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "score"} <= set(reader.fieldnames):
                raise UserError("expected a CSV with columns path,score (from deepselfie score)",
                                path=csv_path)
            rows = []
            for i, row in enumerate(reader, start=2):
                try:
                    score = float(row["score"])
                except (TypeError, ValueError):
                    raise UserError(f"score {_shown(row['score'])} is not a number",
                                    path=csv_path, field=f"line {i}") from None
                if not math.isfinite(score):
                    raise UserError(f"score {_shown(row['score'])} is not a finite number",
                                    path=csv_path, field=f"line {i}")
                if not row["path"] or "\0" in row["path"]:
                    raise UserError(f"path {_shown(row['path'])} is empty or holds a NUL byte",
                                    path=csv_path, field=f"line {i}")
                p = pathlib.Path(row["path"])
                if not p.is_absolute() and not p.exists() and (csv_path.parent / p).exists():
                    p = csv_path.parent / p
                rows.append((p, score))
    except FileNotFoundError:
        raise UserError("file not found", path=csv_path) from None
    except UnicodeDecodeError:
        raise UserError("not a text CSV", path=csv_path) from None
    except csv.Error as e:          # a field over the csv module's limit, a stray NUL ...
        raise UserError(f"not a CSV deepselfie can read ({e})", path=csv_path,
                        field=f"near line {reader.line_num + 1}") from None
    return rows


def _shown(value) -> str:
    """A value from a stranger's file, as Python writes it, shortened for a one-line message."""
    return shortened(repr(value))


def write_scores(results, out, *, as_json=False, root=None):
    """CSV (path,score,rank) or JSON ([{path, score, rank}]), best first; returns the rows."""
    import csv
    import json
    rows = [{"path": str(p), "score": round(float(s), 6), "rank": i + 1}
            for i, (p, s) in enumerate(results)]
    if out is None:
        return rows
    with atomic_open(out, "w", newline="") as f:
        if as_json:
            json.dump(rows, f, indent=1)
            f.write("\n")
        else:
            w = csv.DictWriter(f, fieldnames=["path", "score", "rank"])
            w.writeheader()
            w.writerows(rows)
    return rows
