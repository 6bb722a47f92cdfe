"""Images decoded and resized as Caffe's OpenCV calls do it: checked against OpenCV itself
(opencv-python-headless, in the test extra) over real photographs, random sizes and the formats
and flags Caffe uses. The golden LMDB test checks the same against real Caffe's output."""
import functools
import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from models.caffe import image as cvimage

FLAGS = {cvimage.COLOR: 1, cvimage.GRAYSCALE: 0, cvimage.UNCHANGED: -1}   # cv2.IMREAD_*


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def photos():
    rgb = Image.fromarray(skdata.chelsea())
    rgba = np.dstack([skdata.astronaut(), (np.arange(512 * 512) % 251).reshape(512, 512)])
    gray16 = Image.fromarray(skdata.camera().astype(np.uint16) * 257 + 3)
    return {
        "rgb.jpg": encode(rgb, "JPEG", quality=90),
        "rgb.png": encode(Image.fromarray(skdata.coffee()), "PNG"),
        "gray.jpg": encode(Image.fromarray(skdata.camera()), "JPEG", quality=80),
        "gray.png": encode(Image.fromarray(skdata.camera()), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba.astype(np.uint8)), "PNG"),
        "palette.png": encode(rgb.convert("P"), "PNG"),
        "gray16.png": encode(gray16, "PNG"),
    }


def test_resize_keeps_a_same_size_image_and_averages_a_halving():
    """Without OpenCV at hand: two properties of its INTER_LINEAR for 8-bit images."""
    img = np.random.RandomState(0).randint(0, 256, (10, 14, 3)).astype(np.uint8)
    np.testing.assert_array_equal(cvimage.resize(img, 10, 14), img)
    half = cvimage.resize(img, 5, 7).astype(np.int64)
    blocks = img.reshape(5, 2, 7, 2, 3).astype(np.int64).sum(axis=(1, 3))
    np.testing.assert_array_equal(half, (blocks + 2) >> 2)
    flat = np.full((3, 4, 1), 77, np.uint8)
    assert (cvimage.resize(flat, 9, 13) == 77).all()


def test_resize_is_opencvs_inter_linear():
    cv2 = pytest.importorskip("cv2")
    rs = np.random.RandomState(1)
    for trial in range(300):
        h, w = rs.randint(1, 70, size=2)
        out_h, out_w = rs.randint(1, 110, size=2)
        img = rs.randint(0, 256, (h, w, (1, 3, 4)[trial % 3])).astype(np.uint8)
        want = cv2.resize(img, (int(out_w), int(out_h)), interpolation=cv2.INTER_LINEAR)
        got = cvimage.resize(img, int(out_h), int(out_w))
        np.testing.assert_array_equal(got, want.reshape(got.shape),
                                      err_msg=f"{img.shape} -> {(out_h, out_w)}")
    photo = np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])
    for size in ((256, 256), (224, 224), (300, 451), (1000, 700)):
        np.testing.assert_array_equal(cvimage.resize(photo, *size),
                                      cv2.resize(photo, size[::-1]))


@pytest.mark.parametrize("name", sorted(photos()))
def test_decode_is_opencvs_imdecode(name):
    cv2 = pytest.importorskip("cv2")
    blob = photos()[name]
    for flag, cv_flag in FLAGS.items():
        want = cv2.imdecode(np.frombuffer(blob, np.uint8), cv_flag)
        if want.dtype != np.uint8:          # 16-bit kept as is: Caffe refuses it, so do we
            with pytest.raises(cvimage.ImageError, match="16-bit"):
                cvimage.decode(blob, flag)
            continue
        got = cvimage.decode(blob, flag)
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=f"{name} {flag}")


def test_decode_applies_exif_orientation_like_opencv():
    cv2 = pytest.importorskip("cv2")
    im = Image.fromarray(skdata.chelsea())
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        blob = encode(im, "JPEG", quality=90, exif=exif.tobytes())
        for flag, cv_flag in FLAGS.items():
            want = cv2.imdecode(np.frombuffer(blob, np.uint8), cv_flag)
            got = cvimage.decode(blob, flag)
            np.testing.assert_array_equal(got, want.reshape(got.shape))


def test_decode_errors():
    with pytest.raises(cvimage.ImageError, match="not an allowed image format"):
        cvimage.decode(b"hello")
    jpeg = encode(Image.fromarray(skdata.chelsea()), "JPEG")
    with pytest.raises(cvimage.ImageError, match="corrupt image"):
        cvimage.decode(jpeg[:200])
