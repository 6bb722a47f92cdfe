"""The one image loader (models.caffe.image): what every stage reads files with.

PostScript is the trap: Pillow opens EPS by running Ghostscript. A fake ``gs`` on PATH writes a
marker when it is run, so the tests see whether any stage started it."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skdata

from deepselfie.errors import UserError
from models.caffe.errors import CaffeError
from models.caffe import image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n")



def test_the_fake_gs_catches_pillows_own_eps_path(fake_gs, tmp_path):
    """Control: a plain Image.open(...).load() of the EPS does start gs (so the test below can
    fail)."""
    eps = tmp_path / "x.eps"
    eps.write_bytes(EPS)
    code = textwrap.dedent(f"""
        from PIL import Image
        try:
            Image.open({str(eps)!r}).load()
        except Exception:
            pass
    """)
    subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), timeout=60)
    assert fake_gs.exists()


def test_every_stage_refuses_eps_without_starting_anything(fake_gs, tmp_path):
    from label.image import EncodeSettings, encode_file
    from models.faces.image import load_rgb
    from models.selfie.score import load_bgr
    from scrape.images import Rejected, inspect_image
    eps = tmp_path / "selfie.jpg"            # the name does not matter, the bytes do
    eps.write_bytes(EPS)
    for load in (lambda: image.load(eps), lambda: load_bgr(io.BytesIO(EPS)),
                 lambda: encode_file(eps, EncodeSettings(8, 8)),
                 lambda: image.decode(EPS, image.COLOR), lambda: image.read(eps)):
        with pytest.raises(image.ImageError, match="not an allowed image format"):
            load()
    with pytest.raises(UserError, match="not an allowed image format"):
        load_rgb(eps)                                       # faces
    from models.caffe import io as caffe_io
    with pytest.raises(CaffeError, match="not an allowed image format"):
        caffe_io.load_image(str(eps))                       # pycaffe's caffe.io
    with pytest.raises(Rejected, match="not an allowed image format"):
        inspect_image(EPS, max_pixels=10**6, min_side=1)    # scrape
    assert not fake_gs.exists()


def test_score_cli_skips_eps_and_starts_no_process(fake_gs, tmp_path, cli):
    from nets import bright_net
    deploy, weights = bright_net(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.eps").write_bytes(EPS)
    Image.new("RGB", (20, 20), (200, 200, 200)).save(folder / "b.png")
    r = cli("score", folder, "--model", deploy, "--weights", weights, "--mean", "128,128,128",
            "--out", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert "a.eps: not an allowed image format (PostScript" in r.stderr
    assert "b.png" in (tmp_path / "s.csv").read_text()
    assert not fake_gs.exists()


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_loader_flattens_every_kind_of_file_to_upright_bgr():
    rgb = skdata.chelsea()
    im = Image.fromarray(rgb)
    want = rgb[:, :, ::-1]
    for fmt in ("PNG", "BMP", "TIFF", "WEBP"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        np.testing.assert_array_equal(image.load(_encode(im, fmt, **kw)), want, err_msg=fmt)
    # gray -> 3 equal channels; 16-bit -> its high byte
    gray = skdata.camera()
    out = image.load(_encode(Image.fromarray(gray), "PNG"))
    assert out.shape == gray.shape + (3,) and (out == gray[:, :, None]).all()
    g16 = gray.astype(np.uint16) * 256 + 3
    assert (image.load(_encode(Image.fromarray(g16), "PNG")) == gray[:, :, None]).all()
    # alpha composited on white: transparent -> 255, opaque -> the colour
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 2] = 100
    rgba[:, 3:, 3] = 255
    out = image.load(_encode(Image.fromarray(rgba), "PNG"))
    assert (out[:, :3] == 255).all() and (out[:, 3:] == [100, 0, 0]).all()
    # CMYK JPEG -> BGR close to the colour it stands for
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))       # red
    out = image.load(_encode(cmyk, "JPEG", quality=95)).astype(int)
    assert out[..., 2].min() > 200 and out[..., :2].max() < 60
    # GIF: the first frame
    frames = [Image.new("RGB", (10, 10), c) for c in ((0, 0, 255), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert (image.load(buf.getvalue()) == [255, 0, 0]).all()
    # EXIF orientation: as ImageOps.exif_transpose shows it
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        blob = _encode(im, "JPEG", quality=95, exif=exif.tobytes())
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(blob))))[:, :, ::-1]
        np.testing.assert_array_equal(image.load(blob), shown, err_msg=str(orientation))


def test_one_error_type_with_the_reason(tmp_path):
    jpeg = _encode(Image.fromarray(skdata.chelsea()), "JPEG")
    cases = [(b"", "format", "empty file"),
             (b"<html><body>hi</body></html>", "format", "not an allowed image format (HTML"),
             (jpeg[:len(jpeg) // 2], "corrupt", "corrupt or truncated JPEG"),
             (_encode(Image.new("L", (9000, 9000)), "PNG"), "too_large",
              "too many pixels (9000 x 9000 = 81,000,000 pixels; the limit is 1,000,000)")]
    for blob, kind, reason in cases:
        with pytest.raises(image.ImageError) as e:
            image.load(blob, max_pixels=1_000_000)
        assert e.value.kind == kind and e.value.reason.startswith(reason), e.value.reason
    with pytest.raises(image.ImageError, match="file not found") as e:
        image.load(tmp_path / "nope.png")
    assert e.value.kind == "missing"
    # a small image header followed by megabytes: refused before the rest is read
    padded = tmp_path / "padded.png"
    padded.write_bytes(_encode(Image.new("RGB", (10, 10)), "PNG") + b"\0" * (2 << 20))
    with pytest.raises(image.ImageError, match="far larger than its 10 x 10 pixels need"):
        image.load(padded)


def test_fast_decode_is_dct_scaling_and_only_on_request():
    photo = Image.fromarray(skdata.astronaut()).resize((1024, 1024))
    blob = _encode(photo, "JPEG", quality=90)
    assert image.load(blob).shape == (1024, 1024, 3)
    assert image.load(blob, min_side=200).shape == (256, 256, 3)      # 1/4: both sides >= 200
    assert image.load(blob, min_side=600).shape == (1024, 1024, 3)    # 1/2 would be too small
