"""Every golden data case (tests/data/caffe-golden/data and round2/data) (LMDBs written by Caffe's convert_imageset, batches
computed by real Caffe's Data layer) reproduced by the runtime, and the images behind them
decoded and resized exactly as Caffe's OpenCV did. Cases are discovered from the folder."""
import json

import numpy as np
import pytest

import models.caffe as caffe
from conftest import golden_cases
from models.caffe import db, prefetch, protoio
from models.caffe import image as cvimage
from models.caffe.proto import caffe_pb2

CASES = golden_cases("data")            # "data/NAME" and "round2/data/NAME"


def test_golden_data_cases_are_present(golden):
    assert CASES, "no cases under caffe-golden/data"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_data_case_matches_caffe(golden, name, workers, monkeypatch):
    """Inline (1 worker) and on 2 decode worker processes: the same records, draws and
    pixels."""
    case = golden / name
    monkeypatch.setattr(prefetch, "_decode_workers", workers)
    meta = json.loads((case / "meta.json").read_text())
    expected = np.load(case / "expected.npz")
    monkeypatch.chdir(case)                 # Caffe resolves source and mean_file from here
    phase = caffe.TRAIN if meta.get("phase") == "TRAIN" else caffe.TEST
    if phase == caffe.TRAIN:                # crops and mirrors come from Caffe's seeded RNG
        caffe.set_random_seed(meta["random_seed"])
    net = caffe.Net("net.prototxt", phase)
    for k in range(meta["passes"]):
        net.forward()
        for blob in ("data", "label"):
            want = expected[f"pass{k}/{blob}"]
            got = net.blobs[blob].data
            assert got.shape == want.shape, (k, blob)
            np.testing.assert_allclose(got, want, rtol=0, atol=meta["atol"],
                                       err_msg=f"pass {k} {blob}")
    mean = protoio.read_blobproto(case / "mean.binaryproto")
    np.testing.assert_allclose(mean.reshape(expected["mean"].shape), expected["mean"],
                               rtol=0, atol=meta["atol"])


def _records(case):
    for key, value in db.open_db(case / "db").items():
        datum = caffe_pb2.Datum()
        datum.ParseFromString(value)
        yield key.decode(), datum


@pytest.mark.parametrize("name", CASES)
def test_golden_images_decode_and_resize_like_caffes_opencv(golden, name):
    """convert_imageset read each image with cv::imread (JPEG through libjpeg, PNG through
    libpng) and resized it with cv::resize; reading and resizing the same files here gives the
    same pixels, bit for bit."""
    case = golden / name
    formats = set()
    for key, datum in _records(case):
        image = case / "images" / key.split("_", 1)[1]
        formats.add(image.suffix)
        if datum.encoded:
            stored = cvimage.decode(datum.data, cvimage.COLOR)
        else:
            stored = np.frombuffer(datum.data, np.uint8).reshape(
                datum.channels, datum.height, datum.width).transpose(1, 2, 0)
        ours = cvimage.resize(cvimage.read(image, cvimage.COLOR), *stored.shape[:2])
        np.testing.assert_array_equal(ours, stored, err_msg=str(image))
    assert formats == {".jpg", ".png"}
