"""The LMDB and mean formats against what real Caffe wrote (../shared/caffe-golden/data).

Each golden case is images/ + list.txt run through Caffe's convert_imageset (resized, raw or
PNG-encoded) into db/, and compute_image_mean into mean.binaryproto. Our writer on the same list
must give the same keys, labels and pixels (raw: the same bytes), and our mean the same file.
"""
import numpy as np
import pytest
from labelkit import lmdb_items

from label.image import EncodeSettings, decode_payload
from label.lmdb_writer import Record, build_lmdb, iter_lmdb, publish, record_key
from label.mean import compute_mean, mean_to_binaryproto, read_binaryproto

CASES = [("raw_meanfile_crop", "raw", 40), ("encoded_meanvalue", "png", 36)]


def _pixels(payload):
    return decode_payload(payload.data, payload.encoded, payload.channels, payload.height,
                          payload.width)


@pytest.mark.parametrize("case,encoding,size", CASES)
def test_our_writer_matches_convert_imageset(golden, tmp_path, case, encoding, size):
    folder = golden / "data" / case
    lines = [line.split() for line in (folder / "list.txt").read_text().splitlines()]
    records = [Record(record_key(i, name), str(folder / "images" / name), int(label))
               for i, (name, label) in enumerate(lines)]
    out = tmp_path / "db"
    build_lmdb(out, records, EncodeSettings(size, size, "squash", encoding), plan="golden",
               processes=1, commit_every=4)
    publish(out)
    ours, theirs = list(iter_lmdb(out)), list(iter_lmdb(folder / "db"))
    assert [(k, lab) for k, lab, _ in ours] == [(k, lab) for k, lab, _ in theirs]
    for (key, _, mine), (_, _, real) in zip(ours, theirs):
        assert mine.encoded == real.encoded
        assert (mine.channels, mine.height, mine.width) == \
            (real.channels, real.height, real.width)
        assert np.array_equal(_pixels(mine), _pixels(real)), key
    if encoding == "raw":
        assert lmdb_items(out) == lmdb_items(folder / "db")      # byte for byte


@pytest.mark.parametrize("case,encoding,size", CASES)
def test_our_mean_is_compute_image_mean_byte_for_byte(golden, case, encoding, size):
    folder = golden / "data" / case
    mean = compute_mean(folder / "db", processes=1)
    assert mean_to_binaryproto(mean.mean) == (folder / "mean.binaryproto").read_bytes()
    np.testing.assert_array_equal(read_binaryproto(folder / "mean.binaryproto"), mean.mean)
    expected = np.load(folder / "expected.npz")["mean"]
    np.testing.assert_array_equal(mean.mean, expected)
    np.testing.assert_allclose(mean.channel_means, expected.mean(axis=(1, 2)), atol=1e-4)
