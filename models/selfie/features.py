"""Features of one blob (fc7 by default) for a list of images, cached on disk.

The cache is keyed by the file list (paths, sizes, mtimes), the model, the weights, the
preprocessing and the blob, so a second t-SNE run with another perplexity starts at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from deepselfie.console import get_logger
from deepselfie.files import atomic_open

log = get_logger("features")


def _signature(path) -> list:
    st = os.stat(path)
    return [str(pathlib.Path(path).resolve()), st.st_size, st.st_mtime_ns]


def cache_key(scorer, paths, blob) -> str:
    """What the features depend on: the files, the model, the weights, preprocessing, the blob."""
    pre = scorer.pre
    spec = {"files": [_signature(p) for p in paths], "model": _signature(scorer.deploy),
            "weights": _signature(scorer.weights), "blob": blob,
            "pre": pre.signature(), "good_class": scorer.good_class}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:24]


def collect_features(scorer, paths, blob, cache_dir=None, show_progress=True):
    """-> (paths, N x D features, N scores, [(path, reason)] skipped, from_cache). One forward
    per batch gives both the blob's values and the score."""
    scorer.check_blob(blob)
    paths = [pathlib.Path(p) for p in paths]
    cache = None
    if cache_dir is not None:
        name = f"{blob.replace('/', '_')}-{cache_key(scorer, paths, blob)}.npz"
        cache = pathlib.Path(cache_dir) / name
        if cache.exists():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    failed = [tuple(f) for f in json.loads(str(z["failed"]))]
                    return ([pathlib.Path(p) for p in z["paths"]], z["features"], z["scores"],
                            failed, True)
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring a broken feature cache %s (%s)", cache, e)
    kept, feats, scores = [], [], []
    for batch_paths, inputs in scorer.iter_batches(paths, show_progress, desc=f"features {blob}"):
        s, values = scorer.run(inputs, (blob,))
        kept.extend(batch_paths)
        scores.append(s)
        feats.append(values[blob])
    failed = [(pathlib.Path(p), r) for p, r in scorer.failed]
    features = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if cache is not None:
        with atomic_open(cache, "wb") as f:
            np.savez(f, paths=np.array([str(p) for p in kept]), features=features, scores=scores,
                     failed=np.array(json.dumps([[str(p), r] for p, r in failed])))
    return kept, features, scores, failed, False
