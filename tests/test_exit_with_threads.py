"""A process that ends while background threads are busy in OpenCV's C++ code exits cleanly.

Before ``models.caffe.background``, a script that built a TRAIN net with an ImageData layer,
ran one forward and ended aborted (exit status 134, "terminate called without an active
exception") every time its prefetch thread was still decoding the next batch, and so did one
that left a scoring run (``PreparedBatches``) unfinished. Each script runs in a fresh
interpreter, three times (the abort needs the thread to be inside OpenCV at the exit)."""
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, process_alive

import models.caffe as caffe
from models.caffe import image as cvimage
from models.caffe import prefetch


def run_script(tmp_path, code, times=3):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for _ in range(times):
        t = time.monotonic()
        res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "terminate called" not in res.stderr
        assert time.monotonic() - t < 60
        assert "forward done" in res.stdout


@pytest.fixture
def image_list(tmp_path):
    """A list file of 12 real 640 x 480 JPEGs (a photo from scikit-image, shifted)."""
    from skimage import data
    photo = data.astronaut()[:, :, ::-1]
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(12):
        img = np.roll(photo, 37 * i, axis=1)
        img = cvimage.resize(np.ascontiguousarray(img), 480, 640)
        (tmp_path / "images" / f"{i}.jpg").write_bytes(cvimage.encode(img, ".jpg", 90))
        lines.append(f"{i}.jpg {i % 2}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


NET = """
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  transform_param {{ crop_size: 32 mirror: true mean_value: 100 }}
  image_data_param {{ source: "list.txt" root_folder: "images/" batch_size: 16
                     new_height: 1200 new_width: 1600 }}
  data_param {{ prefetch: 4 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_script_ending_after_one_forward_exits_cleanly(image_list, workers):
    """The prefetch thread is upscaling the next batches' images to 1600 x 1200 when the
    script ends."""
    (image_list / "net.prototxt").write_text(NET.format())
    run_script(image_list, f"""
        import models.caffe as caffe
        from models.caffe import prefetch
        prefetch.set_decode_workers({workers})
        net = caffe.Net("net.prototxt", caffe.TRAIN)
        net.forward()
        print("forward done", flush=True)
    """)


def test_a_script_leaving_a_scoring_run_unfinished_exits_cleanly(tmp_path):
    run_script(tmp_path, """
        import numpy as np
        from models.caffe import image
        from models.selfie.pipeline import PreparedBatches
        photo = np.random.RandomState(0).randint(0, 256, (1200, 1600, 3), np.uint8)

        def prepare(path, out):
            out[...] = image.resize(image.resize(photo, 2400, 3200), 8, 8).transpose(2, 0, 1)

        batches = iter(PreparedBatches(list(range(400)), prepare, (3, 8, 8), 4, workers=2))
        next(batches)
        print("forward done", flush=True)
    """)


def test_next_after_close_says_the_layer_was_closed(image_list, monkeypatch):
    """A prefetch thread closed while making a batch stops at its next row; a later next()
    raises instead of waiting for a batch that will never come."""
    (image_list / "net.prototxt").write_text(NET.format())
    monkeypatch.chdir(image_list)
    prefetch.set_decode_workers(1)
    try:
        net = caffe.Net("net.prototxt", caffe.TRAIN)
    finally:
        prefetch.set_decode_workers(None)
    prefetcher = net.layers[0]._prefetcher
    net.forward()
    prefetcher.close()
    prefetcher._thread.join(30)
    assert not prefetcher._thread.is_alive()
    raised = []

    def drain():        # the batches finished before the close, then the error
        try:
            while True:
                prefetcher.next()
        except RuntimeError as e:
            raised.append(e)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "next() after close waits for ever"
    assert "the data layer was closed" in str(raised[0])


def test_a_script_leaving_a_pooled_scoring_run_unfinished_exits_cleanly(image_list):
    """The same with the preparing in worker processes (Scorer prepare="processes"): the script
    ends cleanly, and its workers end with it (their pipe closes) instead of living on."""
    deploy = ROOT / "prototxt" / "selfie_small_deploy.prototxt"
    pids = image_list / "pids.txt"
    run_script(image_list, f"""
        import models.caffe as caffe
        from models.selfie.score import Scorer
        caffe.Net({str(deploy)!r}, caffe.TEST).save("small.caffemodel")
        scorer = Scorer({str(deploy)!r}, "small.caffemodel", mean="104,117,123", batch_size=4,
                        workers=2, prepare="processes")
        paths = [f"images/{{i % 12}}.jpg" for i in range(400)]
        batches = scorer.iter_batches(paths, show_progress=False)
        next(batches)
        with open("pids.txt", "a") as f:
            f.write(" ".join(map(str, scorer._pool.worker_pids())) + "\\n")
        print("forward done", flush=True)
    """)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 6                      # two for each of the three runs
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(process_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(process_alive(p) for p in workers)
