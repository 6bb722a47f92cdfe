"""Run a net in real BVLC Caffe (pycaffe) in a child process and bring its numbers back.

A child, because real Caffe answers a bad file with a CHECK failure that aborts its process: the
test then fails with Caffe's own message instead of taking pytest down. The child finds pycaffe on
PYTHONPATH (tests/conftest.py puts $DEEPSELFIE_PYCAFFE_PATH there).

    got = run(prototxt, "TEST", weights=path, inputs={"data": x})
    got.blobs["prob"], got.params["conv1"][0], got.loaded["conv1"][0]
"""
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np


class Result:
    """Real Caffe's numbers: ``loaded`` (params right after loading), ``blobs`` and ``params``
    (after forward), each in the net's order; ``outputs`` (net.outputs)."""

    def __init__(self, npz, meta):
        self.outputs = meta["outputs"]
        self.blobs = collections.OrderedDict((n, npz[f"blob/{n}"]) for n in meta["blobs"])
        self.loaded = collections.OrderedDict()
        self.params = collections.OrderedDict()
        for layer, count in meta["params"]:
            self.loaded[layer] = [npz[f"loaded/{layer}/{i}"] for i in range(count)]
            self.params[layer] = [npz.get(f"param/{layer}/{i}", self.loaded[layer][i])
                                  for i in range(count)]


def run(prototxt, phase, *, weights=None, inputs=None, seed=None, save=None, timeout=600):
    """Build ``prototxt`` in ``phase`` ("TRAIN"/"TEST") with real Caffe (CPU), load ``weights``,
    seed its fillers with ``seed``, write its weights to ``save`` (a .caffemodel), reshape the
    inputs to ``inputs``' arrays, set them and forward once."""
    with tempfile.TemporaryDirectory(prefix="real_caffe_") as tmp:
        tmp = pathlib.Path(tmp)
        if inputs:
            np.savez(tmp / "inputs.npz", **{k: np.asarray(v, np.float32) for k, v in inputs.items()})
        job = {"prototxt": str(prototxt), "phase": phase, "seed": seed,
               "weights": str(weights) if weights else None, "save": str(save) if save else None,
               "inputs": str(tmp / "inputs.npz") if inputs else None, "out": str(tmp)}
        env = dict(os.environ)
        env.setdefault("GLOG_minloglevel", "2")
        proc = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True,
                              text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"real Caffe failed (exit {proc.returncode}) on {prototxt}"
                                 f"{' with ' + str(weights) if weights else ''}:\n"
                                 f"{proc.stderr[-3000:]}")
        meta = json.loads((tmp / "result.json").read_text())
        with np.load(tmp / "result.npz") as npz:
            return Result({k: npz[k] for k in npz.files}, meta)


def _child(job):
    import caffe
    caffe.set_mode_cpu()
    if job["seed"] is not None:
        caffe.set_random_seed(job["seed"])
    phase = caffe.TRAIN if job["phase"] == "TRAIN" else caffe.TEST
    if job["weights"]:
        net = caffe.Net(job["prototxt"], job["weights"], phase)
    else:
        net = caffe.Net(job["prototxt"], phase)
    if job["save"]:
        net.save(job["save"])
    arrays = {}
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            arrays[f"loaded/{layer}/{i}"] = b.data.copy()
    if job["inputs"]:
        with np.load(job["inputs"]) as inputs:
            for name in inputs.files:
                net.blobs[name].reshape(*inputs[name].shape)
                net.blobs[name].data[...] = inputs[name]
        net.reshape()
    net.forward()
    for name, b in net.blobs.items():
        arrays[f"blob/{name}"] = b.data
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            if not np.array_equal(b.data, arrays[f"loaded/{layer}/{i}"]):   # (BatchNorm in TRAIN)
                arrays[f"param/{layer}/{i}"] = b.data
    out = pathlib.Path(job["out"])
    np.savez(out / "result.npz", **arrays)
    meta = {"outputs": list(net.outputs), "blobs": list(net.blobs),
            "params": [[layer, len(blobs)] for layer, blobs in net.params.items()]}
    (out / "result.json").write_text(json.dumps(meta))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
