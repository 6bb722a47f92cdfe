"""Decode before keep, limits, and the content-addressed store."""
import hashlib
import io

import pytest
from PIL import Image

from scrape.images import ImageStore, Rejected, inspect_image
from scrape_corpus import HTML, bomb_png, photo


def test_keep_stores_once_by_content(tmp_path):
    store = ImageStore(tmp_path, min_side=64)
    data = photo(1)
    a = store.keep(data)
    sha = hashlib.sha256(data).hexdigest()
    assert (a.sha256, a.path, a.width, a.height, a.format) == (
        sha, f"images/{sha[:2]}/{sha}.jpg", 192, 160, "JPEG")
    assert (tmp_path / a.path).read_bytes() == data
    assert store.keep(data) == a
    png = store.keep(photo(1, fmt="PNG"))
    assert png.path.endswith(".png") and png.sha256 != sha
    assert sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file()) == sorted(
        [f"{sha}.jpg", f"{png.sha256}.png"])
    assert not list((tmp_path / "images" / ".tmp").iterdir())


def test_a_damaged_file_in_the_store_is_rewritten(tmp_path):
    store = ImageStore(tmp_path, min_side=64)
    a = store.keep(photo(2))
    (tmp_path / a.path).write_bytes(b"half")
    store.keep(photo(2))
    assert (tmp_path / a.path).read_bytes() == photo(2)


def test_leftover_temporary_files_are_cleaned(tmp_path):
    store = ImageStore(tmp_path)
    store.tmp.mkdir(parents=True)
    (store.tmp / "abc.part").write_bytes(b"partial")
    assert store.clean_temp() == 1 and not list(store.tmp.iterdir())


def _encode(fmt, size=(200, 150), **kw):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (HTML, "not an image (HTML)"),
    (b'{"error": "not found"}', "not an image (JSON)"),
    (bomb_png(), "too many pixels (900000000 > 50000000)"),
    (bomb_png(9000, 9000), "too many pixels (9000x9000 > 50000000)"),
    (photo(3)[:3000], "undecodable image (corrupt or truncated JPEG"),
    (photo(3, fmt="PNG")[:5000], "undecodable image"),
    (photo(3, size=(300, 60)), "too small (300x60, min side 128)"),
    (_encode("BMP"), "not an allowed image format (BMP"),    # an image, not a format we keep
    (_encode("TIFF"), "not an allowed image format (TIFF"),
], ids=["empty", "html", "json", "png_bomb", "png_9000", "truncated_jpeg", "truncated_png",
        "too_small", "bmp", "tiff"])
def test_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as e:
        inspect_image(data, max_pixels=50_000_000, min_side=128)
    assert e.value.reason.startswith(reason)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_the_formats_kept(fmt):
    assert inspect_image(_encode(fmt), max_pixels=10**6, min_side=100) == (fmt, 200, 150)


def test_a_corrupt_middle_is_found_by_decoding():
    data = bytearray(photo(4, size=(400, 300), fmt="PNG"))
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    with pytest.raises(Rejected, match="undecodable"):
        inspect_image(bytes(data), max_pixels=10**7, min_side=10)
