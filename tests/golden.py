"""Running a golden case (tests/data/caffe-golden) the way its README says, and comparing with its
tolerances: err = max|a - b| / (max|b| + 1e-8)."""
import json
import pathlib

import numpy as np


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        if a.size == b.size:
            a = a.reshape(b.shape)
        else:
            return float("inf")
    if b.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-8))


def run_net_case(case: pathlib.Path, caffe):
    """Forward and backward a nets/ case; return (blob errors, diff errors) keyed by name."""
    meta = json.loads((case / "meta.json").read_text())
    phase = caffe.TRAIN if meta.get("phase") == "TRAIN" else caffe.TEST
    if "random_seed" in meta:   # Caffe's fillers run at construction, then TRAIN draws (Dropout)
        caffe.set_random_seed(meta["random_seed"])
    net = caffe.Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), phase)
    inputs = np.load(case / "inputs.npz")
    for name in inputs.files:
        net.blobs[name].data[...] = inputs[name]
    net.forward()
    expected = np.load(case / "blobs.npz")
    fwd = {}
    for key in expected.files:
        fwd[key] = rel_err(_value(net, key, "data"), expected[key])
    bwd = {}
    if (case / "diffs.npz").exists():   # a net where nothing needs backward: a no-op
        top = np.load(case / "top_diffs.npz")
        for name in top.files:
            net.blobs[name].diff[...] = top[name]
        net.backward()
        diffs = np.load(case / "diffs.npz")
        for key in diffs.files:
            bwd[key] = rel_err(_value(net, key, "diff"), diffs[key])
    return fwd, bwd


def _value(net, key, what):
    if key.startswith("param/"):
        _, layer, i = key.split("/")
        return getattr(net.params[layer][int(i)], what)
    return getattr(net.blobs[key], what)
