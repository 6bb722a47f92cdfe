"""The face detector through runtime.compile (models.caffe.compiled): compiled, it finds the
boxes, scores and landmarks the eager nets find; R-Net and O-Net crop batches are padded to one
compiled batch; "auto" leaves P-Net (a new input shape at every pyramid level) eager."""
import numpy as np
import pytest
from PIL import Image
from torch._dynamo.utils import counters

from faces_support import models_dir, photo  # noqa: F401,F811
from models.caffe import compiled
from models.faces import convert
from models.faces.detect import FaceDetector

# A small portrait and few pyramid levels (min_face_size 40): each level is one compile.
SETTINGS = dict(min_face_size=40, max_side=1024, device="cpu")


def small_portrait() -> np.ndarray:
    im = Image.fromarray(photo("astronaut")).resize((160, 160), Image.BILINEAR)
    return np.asarray(im)


def test_compiled_detector_finds_the_eager_faces(models_dir, tmp_path):
    weights = convert.weights_dir(models_dir)
    image = small_portrait()
    eager = FaceDetector(weights, compile="off", **SETTINGS)
    fast = FaceDetector(weights, compile="on", compile_cache=tmp_path / "inductor",
                        crop_batch=8, **SETTINGS)
    want = eager.detect([image, image[:, ::-1]])
    before = sum(counters["inductor"].values())
    got = fast.detect([image, image[:, ::-1]])
    assert sum(counters["inductor"].values()) > before, "compile: on did not compile"
    assert [len(f) for f in got] == [len(f) for f in want] == [1, 1]
    for g, w in zip(got, want):
        for fg, fw in zip(g, w):
            np.testing.assert_allclose(fg.box, fw.box, atol=1e-3)
            np.testing.assert_allclose(fg.landmarks, fw.landmarks, atol=1e-3)
            assert abs(fg.score - fw.score) <= 1e-5
    levels = len(fast.pyramid_scales(*image.shape[:2]))
    pnet = compiled.compiled_forward(fast.nets["pnet"], ["prob1", "conv4-2"], "on", None,
                                     tmp_path / "inductor", pad_batch=False)
    assert pnet.builds == levels            # one graph per pyramid level
    for name, outputs in (("rnet", ["prob1", "conv5-2"]), ("onet", ["prob1", "conv6-2",
                                                                    "conv6-3"])):
        fwd = compiled.compiled_forward(fast.nets[name], outputs, "on", None,
                                        tmp_path / "inductor", pad_batch=True)
        assert fwd.builds >= 1 and len(fwd.functions) == fwd.builds
    # the same detector again: nothing new to compile
    builds = {n: sum(f.builds for f in vars(net)[compiled._ATTR].values())
              for n, net in fast.nets.items()}
    again = fast.detect([image, image[:, ::-1]])
    assert [[f.box for f in g] for g in again] == [[f.box for f in g] for g in got]
    assert builds == {n: sum(f.builds for f in vars(net)[compiled._ATTR].values())
                      for n, net in fast.nets.items()}
    assert list((tmp_path / "inductor").rglob("*.so"))


def test_auto_keeps_pnet_eager_and_small_jobs_eager(models_dir, tmp_path):
    weights = convert.weights_dir(models_dir)
    det = FaceDetector(weights, compile="auto", compile_cache=tmp_path / "inductor", **SETTINGS)
    det.work_images = 10**9                 # R-Net and O-Net would pay; P-Net never does here
    assert compiled.should_compile(det.nets["onet"], "auto", det.work_images)
    det.work_images = 1
    before = sum(counters["inductor"].values())
    faces = det.detect([small_portrait()])[0]
    assert len(faces) == 1
    assert sum(counters["inductor"].values()) == before
    assert not (tmp_path / "inductor").exists()
    assert compiled._ATTR not in vars(det.nets["pnet"])


def test_bad_compile_mode_is_refused(models_dir):
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        FaceDetector(convert.weights_dir(models_dir), compile="sometimes", **SETTINGS)
