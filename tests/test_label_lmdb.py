"""The LMDB writer, the image payloads and the resize modes on images made here."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deepselfie.errors import UserError
from label import lmdb_writer
from label.image import EncodeSettings, decode_payload, encode_array
from label.lmdb_writer import Record, build_lmdb, iter_lmdb, partial_path, publish, record_key
from label.mean import compute_mean
from label.resize import RESIZE_MODES, cv_resize_linear, resize_image
from models.caffe import db
from labelkit import image_bytes, lmdb_items


def _images(tmp_path, n, size=(64, 48), fmt="JPEG"):
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"{i:03d}.{fmt.lower()}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(image_bytes(i, (size[0] + i % 5, size[1] + i % 3), fmt))
        paths.append(p)
    return [Record(record_key(i, f"img/{p.name}"), str(p), i % 2, str(i))
            for i, p in enumerate(paths)]


def test_squash_is_cv_resize_and_other_modes_keep_the_aspect(tmp_path):
    img = np.asarray(Image.open(io.BytesIO(image_bytes(1, (60, 30)))).convert("RGB"))
    assert np.array_equal(resize_image(img, 20, 20, "squash"), cv_resize_linear(img, 20, 20))
    # crop: scale to 40x20 (height 20), cut the middle 20 columns
    crop = resize_image(img, 20, 20, "crop")
    assert np.array_equal(crop, cv_resize_linear(img, 40, 20)[:, 10:30])
    # fill: scale to 20x10, noise rows 5 above and 5 below, the same rows both sides
    fill = resize_image(img, 20, 20, "fill", np.random.default_rng(0))
    assert np.array_equal(fill[5:15], cv_resize_linear(img, 20, 10))
    assert np.array_equal(fill[:5], fill[15:])
    # half_crop: ratio (3 + 1.5) / 2 = 2.25 -> 27x13, +1 row to pad evenly: 27x14;
    # cut the middle 20 columns, noise rows 3 above and 3 below
    half = resize_image(img, 20, 20, "half_crop", np.random.default_rng(0))
    assert np.array_equal(half[3:17], cv_resize_linear(img, 27, 14)[:, 4:24])
    for mode in RESIZE_MODES:
        for shape in [(30, 60), (60, 30), (17, 91), (40, 40)]:
            out = resize_image(np.zeros(shape + (3,), np.uint8), 24, 32, mode)
            assert out.shape == (24, 32, 3)


def test_padding_noise_is_fixed_by_seed_and_key():
    img = np.zeros((10, 40, 3), np.uint8)
    s = EncodeSettings(16, 16, "fill", "raw", seed=3)
    assert encode_array(img, s, "k1") == encode_array(img, s, "k1")
    assert encode_array(img, s, "k1") != encode_array(img, s, "k2")


def test_raw_payload_is_bgr_chw_and_encoded_payload_is_a_file():
    bgr = np.zeros((8, 6, 3), np.uint8)             # the loader's order: B, G, R
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 30, 20, 10
    raw = encode_array(bgr, EncodeSettings(8, 6, "squash", "raw"))
    assert (raw.channels, raw.height, raw.width, raw.encoded) == (3, 8, 6, False)
    chw = decode_payload(raw.data, False, 3, 8, 6)
    assert chw[0].max() == chw[0].min() == 30 and chw[2].min() == 10      # B first
    png = encode_array(bgr, EncodeSettings(8, 6, "squash", "png"))
    assert png.encoded and png.data.startswith(b"\x89PNG")
    assert np.array_equal(decode_payload(png.data, True), chw)


def test_parallel_build_equals_serial_build(tmp_path):
    records = _images(tmp_path, 40)
    settings = EncodeSettings(32, 32, "half_crop", "jpg")
    for name, procs in [("one", 1), ("two", 2)]:
        build_lmdb(tmp_path / name, records, settings, plan="p", processes=procs,
                   commit_every=7)
        publish(tmp_path / name)
    one, two = lmdb_items(tmp_path / "one"), lmdb_items(tmp_path / "two")
    assert one == two and len(one) == 40
    assert [k.decode() for k, _ in one] == [r.key for r in records]
    for _, label, payload in iter_lmdb(tmp_path / "one"):
        assert decode_payload(payload.data, True).shape == (3, 32, 32)


def test_resume_continues_after_the_last_commit_and_a_new_plan_starts_over(tmp_path,
                                                                           monkeypatch):
    records = _images(tmp_path, 10, fmt="PNG")
    settings = EncodeSettings(16, 16, "squash", "raw")
    build_lmdb(tmp_path / "ref", records, settings, plan="a", commit_every=3)
    publish(tmp_path / "ref")

    real, seen, stop_at = lmdb_writer.encode_chunk, [], [8]

    def flaky(task):
        seen.append(task[1][0][0])
        if len(seen) == stop_at[0]:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(lmdb_writer, "CHUNK", 1)
    monkeypatch.setattr(lmdb_writer, "encode_chunk", flaky)
    db = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        build_lmdb(db, records, settings, plan="a", commit_every=3)
    assert len(lmdb_items(partial_path(db))) == 6          # two whole batches of 3
    seen.clear()
    stop_at[0] = None
    assert build_lmdb(db, records, settings, plan="a", commit_every=3) == 6
    assert seen == [r.source for r in records[6:]]
    publish(db)
    assert lmdb_items(db) == lmdb_items(tmp_path / "ref")
    assert not partial_path(db).exists() and not (db / "PLAN").exists()

    # a partial database made for another plan is not resumed
    seen.clear()
    stop_at[0] = 5
    with pytest.raises(KeyboardInterrupt):
        build_lmdb(tmp_path / "db2", records, settings, plan="a", commit_every=3)
    assert len(lmdb_items(partial_path(tmp_path / "db2"))) == 3
    seen.clear()
    stop_at[0] = None
    assert build_lmdb(tmp_path / "db2", records, settings, plan="b", commit_every=3) == 0
    assert len(seen) == 10


def test_the_map_grows_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "INITIAL_MAP_SIZE", 64 << 10)   # the runtime's LMDB writer
    records = _images(tmp_path, 12, fmt="PNG")
    build_lmdb(tmp_path / "db", records, EncodeSettings(64, 64, "squash", "raw"), plan="p",
               commit_every=5)
    publish(tmp_path / "db")
    assert len(lmdb_items(tmp_path / "db")) == 12          # 12 x 12 KiB > 64 KiB


def test_a_corrupt_file_names_itself_and_keeps_committed_batches(tmp_path):
    records = _images(tmp_path, 6, fmt="PNG")
    pathlib_bad = records[4].source
    open(pathlib_bad, "wb").write(b"not an image at all")
    with pytest.raises(UserError, match="not an allowed image format") as e:
        build_lmdb(tmp_path / "db", records, EncodeSettings(8, 8), plan="p", commit_every=2)
    assert pathlib_bad in str(e.value)
    assert len(lmdb_items(partial_path(tmp_path / "db"))) == 4


def test_mean_of_an_lmdb_matches_numpy(tmp_path):
    records = _images(tmp_path, 9)
    build_lmdb(tmp_path / "db", records, EncodeSettings(12, 10, "crop", "jpg"), plan="p")
    publish(tmp_path / "db")
    decoded = [decode_payload(p.data, True).astype(np.float64)
               for _, _, p in iter_lmdb(tmp_path / "db")]
    for procs in (1, 2):
        mean = compute_mean(tmp_path / "db", processes=procs)
        assert mean.count == 9 and mean.mean.shape == (3, 12, 10)
        np.testing.assert_allclose(mean.mean, np.mean(decoded, axis=0), atol=1e-4)
        np.testing.assert_allclose(mean.channel_means, np.mean(decoded, axis=(0, 2, 3)),
                                   atol=1e-6)


def _reference_resize(img, width, height):
    """cv::resize INTER_LINEAR on uint8, pixel by pixel, straight from OpenCV's description."""
    src_h, src_w, channels = img.shape

    def taps(src, dst, i, clamp):
        scale = 1.0 / (dst / src)
        f = np.float32((i + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - np.float32(s))
        if clamp and s < 0:
            s, f = 0, np.float32(0)
        if clamp and s >= src - 1:
            s, f = src - 1, np.float32(0)
        w0 = int(np.rint((np.float32(1) - f) * np.float32(2048)))
        w1 = int(np.rint(f * np.float32(2048)))
        return min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1), w0, w1

    out = np.zeros((height, width, channels), np.uint8)
    for y in range(height):
        ya, yb, b0, b1 = taps(src_h, height, y, clamp=False)
        for x in range(width):
            xa, xb, a0, a1 = taps(src_w, width, x, clamp=True)
            for c in range(channels):
                top = int(img[ya, xa, c]) * a0 + int(img[ya, xb, c]) * a1
                bottom = int(img[yb, xa, c]) * a0 + int(img[yb, xb, c]) * a1
                v = (((top >> 4) * b0) >> 16) + (((bottom >> 4) * b1) >> 16)
                out[y, x, c] = (v + 2) >> 2
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.integers(1, 14), st.integers(1, 14), st.integers(1, 14),
       st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_vectorized_resize_equals_the_pixel_by_pixel_definition(sw, sh, w, h, channels, seed):
    img = np.random.default_rng(seed).integers(0, 256, (sh, sw, channels), dtype=np.uint8)
    got = cv_resize_linear(img, w, h)
    want = _reference_resize(img, w, h) if (sh, sw) != (h, w) else img
    assert np.array_equal(got, want)
