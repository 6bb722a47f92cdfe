"""The data layers on databases and images the tests make: Caffe's transform order (TRAIN random
crop and mirror, TEST center crop, mean_file at the crop offset, mean_value, scale), encoded vs
raw Datum, ImageData over a list file of real images, MemoryData, DummyData, wrap-around,
prefetching with several decode workers, and the errors a user can cause."""
import io
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from skimage import data as skdata

import models.caffe as caffe
from models.caffe import db, glog, prefetch, protoio, rng
from models.caffe import image as cvimage
from models.caffe.errors import CaffeError
from models.caffe.io import array_to_datum
from models.caffe.proto import caffe_pb2
from models.caffe.transformer import DataTransformer


# ---------------------------------------------------------------- helpers

def write_datum_lmdb(path, datums):
    return db.write_lmdb(path, ((f"{i:08d}".encode(), d.SerializeToString())
                                for i, d in enumerate(datums)))


def raw_datums(images, labels=None):
    """C x H x W uint8 arrays -> raw Datums."""
    labels = range(len(images)) if labels is None else labels
    return [array_to_datum(im, label) for im, label in zip(images, labels)]


def encoded_datum(blob: bytes, label: int):
    return caffe_pb2.Datum(encoded=True, data=blob, label=label)


def position_images(n, h, w):
    """Channel 0 holds the row, 1 the column, 2 the image index: a crop shows where it came
    from."""
    rows, cols = np.mgrid[0:h, 0:w]
    return [np.stack([rows, cols, np.full((h, w), i)]).astype(np.uint8) for i in range(n)]


def data_net(tmp_path, source, transform="", batch=2, phase="TRAIN", extra="", tops=2):
    top = 'top: "data" top: "label"' if tops == 2 else 'top: "data"'
    text = f"""name: "t"
layer {{ name: "data" type: "Data" {top}
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" backend: LMDB batch_size: {batch} {extra} }} }}
"""
    path = tmp_path / f"net_{abs(hash(text))}.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)


def batches(net, n):
    out = []
    for _ in range(n):
        net.forward()
        out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    return out


def skimage_rgb(name, size=None):
    im = Image.fromarray(getattr(skdata, name)())
    return im.resize(size, Image.BILINEAR) if size else im


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _reset_workers():
    yield
    prefetch.set_decode_workers(None)


@pytest.fixture
def position_db(tmp_path):
    path = tmp_path / "pos_db"
    write_datum_lmdb(path, raw_datums(position_images(6, 20, 24)))
    return path


# ---------------------------------------------------------------- Caffe's random streams

def test_generator_is_caffes_mt19937():
    """boost::mt19937, like std::mt19937, gives 4123659995 as its 10000th number for the
    default seed 5489; and caffe.set_random_seed seeds the stream the layers draw seeds from."""
    assert int(rng.Stream(5489).draws(10000)[-1]) == 4123659995
    caffe.set_random_seed(5489)
    assert rng.caffe_rng_rand() == int(rng.Stream(5489).draw())
    items = list(range(50))
    rng.shuffle(items, rng.Stream(3))
    assert sorted(items) == list(range(50)) and items != list(range(50))


# ---------------------------------------------------------------- TRAIN / TEST transforms

def _crop_offsets(batch):
    """(h0, w0, mirrored, index) for each item of a position-image batch."""
    out = []
    for item in batch:
        rows, cols, idx = item[0], item[1], item[2]
        assert (rows == rows[:, :1]).all() and (np.diff(rows[:, 0]) == 1).all()
        step = np.diff(cols[0])
        assert (step == 1).all() or (step == -1).all()
        mirrored = bool(step[0] == -1)
        out.append((int(rows[0, 0]), int(cols[0].min()), mirrored, int(idx[0, 0])))
    return out


def test_train_random_crop_and_mirror_are_seeded_and_in_bounds(tmp_path, position_db):
    transform = "crop_size: 16 mirror: true"
    caffe.set_random_seed(7)
    a = batches(data_net(tmp_path, position_db, transform, batch=3), 8)
    caffe.set_random_seed(7)
    b = batches(data_net(tmp_path, position_db, transform, batch=3), 8)
    caffe.set_random_seed(8)
    c = batches(data_net(tmp_path, position_db, transform, batch=3), 8)
    for (da, la), (db_, lb) in zip(a, b):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))

    offsets = [o for d, _ in a for o in _crop_offsets(d)]
    assert all(0 <= h <= 20 - 16 and 0 <= w <= 24 - 16 for h, w, _, _ in offsets)
    assert {m for _, _, m, _ in offsets} == {True, False}
    assert len({(h, w) for h, w, _, _ in offsets}) > 5
    # records in key order, wrapping around (6 records, 24 items), labels follow the records
    assert [i for *_, i in offsets] == [k % 6 for k in range(24)]
    assert [int(v) for _, lab in a for v in lab] == [k % 6 for k in range(24)]


def test_train_draws_follow_caffes_recipe(tmp_path, position_db):
    """The transformer's generator is seeded by the second caffe_rng_rand() after
    set_random_seed (Caffe's prefetching data layer calls InitRand when it makes the transformer
    and again before its thread starts; the second seed is the one kept, as the golden
    round2/data/train_crop_mirror case shows), and each image takes Rand(2) for the mirror, then
    Rand(H - crop + 1) and Rand(W - crop + 1)."""
    caffe.set_random_seed(1234)
    net = data_net(tmp_path, position_db, "crop_size: 16 mirror: true", batch=4)
    got = [o[:3] for d, _ in batches(net, 3) for o in _crop_offsets(d)]
    mt = np.random.RandomState(1234)
    mt.randint(0, 2**32, dtype=np.uint32)            # the first InitRand's seed, replaced
    stream = np.random.RandomState(int(mt.randint(0, 2**32, dtype=np.uint32)))
    draws = stream.randint(0, 2**32, size=3 * 12, dtype=np.uint32).astype(np.int64)
    want = [(int(draws[3 * k + 1] % 5), int(draws[3 * k + 2] % 9), bool(draws[3 * k] % 2))
            for k in range(12)]
    assert got == want


@pytest.mark.parametrize("transform", ["mirror: true", "crop_size: 4", "crop_size: 4 mirror: true",
                                       "crop_size: 4 mirror: true phase: TEST", ""])
def test_a_batch_of_draws_is_the_draws_one_by_one(transform):
    """The layer draws a batch's random numbers in one read of its generator: the same numbers
    as one image after another (mirror, then h and w), in every configuration."""
    phase = caffe.TEST if "TEST" in transform else caffe.TRAIN
    param = caffe_pb2.TransformationParameter()
    text_format.Parse(transform.replace("phase: TEST", ""), param)
    caffe.set_random_seed(11)
    one = DataTransformer(param, phase, None)
    caffe.set_random_seed(11)
    many = DataTransformer(param, phase, None)
    want = [one.draw() for _ in range(7)] + [one.draw() for _ in range(5)]
    assert many.draw_many(7) + many.draw_many(5) == want
    assert (want[0] == (None, None, None)) == (transform == "")


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("transform", ["", "mirror: true mean_value: 104.5 scale: 0.25",
                                       "crop_size: 5 mean_value: 104 mean_value: 117.25 "
                                       "mean_value: 123 mean_value: 9",
                                       "crop_size: 5 mirror: true mean_file: MEAN scale: 0.5",
                                       "crop_size: 5 mean_value: 7 phase: TEST"])
def test_a_decoded_image_transforms_as_the_same_pixels_in_any_layout(tmp_path, transform,
                                                                     channels):
    """OpenCV's H x W x C pixels take a faster path (flip and split into planes) than a raw
    Datum's C x H x W ones; both give the same float32 values, for every draw."""
    phase = caffe.TEST if "TEST" in transform else caffe.TRAIN
    rs = np.random.RandomState(channels)
    mean = rs.uniform(0, 255, (channels, 7, 9)).astype(np.float32)
    protoio.write_binary(tmp_path / "mean.binaryproto", protoio.array_to_blobproto(mean[None]))
    text = transform.replace("phase: TEST", "").replace("MEAN", f'"{tmp_path}/mean.binaryproto"')
    if channels == 1 and "mean_value: 117.25" in text:
        text = text.replace("mean_value: 117.25 mean_value: 123 mean_value: 9", "")
    if channels == 3:
        text = text.replace(" mean_value: 9", "")
    param = caffe_pb2.TransformationParameter()
    text_format.Parse(text, param)
    t = DataTransformer(param, phase, lambda message, field=None: ValueError(message))
    hwc = rs.randint(0, 256, (7, 9, channels)).astype(np.uint8)
    decoded = hwc.transpose(2, 0, 1)                       # the view decode gives
    raw = np.ascontiguousarray(decoded)                    # a raw Datum's layout
    shape = t.output_shape(raw.shape)
    for draws in [(0, 0, 0), (1, 2, 3), (3, 10, 7), (2, 1, 4)]:
        fast, general = np.full(shape, np.nan, np.float32), np.full(shape, -1, np.float32)
        t.transform(decoded, draws, fast)
        t.transform(raw, draws, general)
        np.testing.assert_array_equal(fast, general)
    if not transform:
        np.testing.assert_array_equal(fast, raw.astype(np.float32))


def test_a_decoded_shape_from_the_header_is_the_decoded_shape(tmp_path):
    """The batch's shape can be read off its first image's header (the layer's thread then
    decodes nothing); where the header cannot be sure, decoded_shape says None."""
    rgb = np.asarray(skimage_rgb("coffee", (30, 20)))
    gray = rgb[:, :, 0]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    files = {"rgb.jpg": encode(Image.fromarray(rgb), "JPEG"),
             "gray.jpg": encode(Image.fromarray(gray), "JPEG"),
             "rgb.png": encode(Image.fromarray(rgb), "PNG"),
             "gray.png": encode(Image.fromarray(gray), "PNG"),
             "rgba.png": encode(Image.fromarray(rgba), "PNG"),
             "cmyk.jpg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
             "palette.png": encode(Image.fromarray(rgb).convert("P"), "PNG"),
             "rgb.bmp": encode(Image.fromarray(rgb), "BMP")}
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", exif=exif.tobytes())
    files["rotated.jpg"] = buf.getvalue()
    sure = set()
    for name, data in files.items():
        for flag in (cvimage.COLOR, cvimage.GRAYSCALE, cvimage.UNCHANGED):
            got = cvimage.decoded_shape(data, flag)
            if got is not None:
                sure.add(name)
                assert got == cvimage.decode(data, flag).shape, (name, flag)
    assert sure == {"rgb.jpg", "gray.jpg", "rgb.png", "gray.png", "rgba.png"}
    assert cvimage.decoded_shape(b"\xff\xd8 not a jpeg") is None


def test_decode_workers_do_not_change_the_batches(tmp_path):
    images = [np.asarray(skimage_rgb(n, (40, 36)))[:, :, ::-1].transpose(2, 0, 1).copy()
              for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    path = tmp_path / "db"
    write_datum_lmdb(path, [encoded_datum(encode(Image.fromarray(im[::-1].transpose(1, 2, 0)),
                                                 "JPEG", quality=90), i)
                            for i, im in enumerate(images)])
    runs = []
    for workers in (1, 2, 3):
        prefetch.set_decode_workers(workers)
        caffe.set_random_seed(3)
        net = data_net(tmp_path, path, "crop_size: 30 mirror: true mean_value: 110 scale: 0.5",
                       batch=4)
        runs.append(batches(net, 4))
        assert len(net.layers[0].decode_pool.worker_pids()) == workers - 1  # + the layer's thread
    for run in runs[1:]:
        for (d1, l1), (d2, l2) in zip(runs[0], run):
            np.testing.assert_array_equal(d1, d2)
            np.testing.assert_array_equal(l1, l2)


def test_test_phase_center_crop_with_mean_file_at_the_crop_offset(tmp_path):
    rs = np.random.RandomState(0)
    images = [rs.randint(0, 256, (3, 11, 14)).astype(np.uint8) for _ in range(3)]
    write_datum_lmdb(tmp_path / "db", raw_datums(images, [5, 6, 7]))
    mean = rs.uniform(0, 255, (1, 3, 11, 14)).astype(np.float32)
    protoio.write_binary(tmp_path / "mean.binaryproto", protoio.array_to_blobproto(mean))
    net = data_net(tmp_path, tmp_path / "db",
                   f'crop_size: 8 mean_file: "{tmp_path / "mean.binaryproto"}" scale: 0.25',
                   batch=3, phase="TEST")
    (data, label), = batches(net, 1)
    h0, w0 = (11 - 8) // 2, (14 - 8) // 2
    want = [(im[:, h0:h0 + 8, w0:w0 + 8].astype(np.float32) - mean[0, :, h0:h0 + 8, w0:w0 + 8])
            * np.float32(0.25) for im in images]
    np.testing.assert_array_equal(data, np.stack(want))
    np.testing.assert_array_equal(label, [5, 6, 7])


def test_mirror_flips_after_subtracting_the_mean_at_the_source_position(tmp_path):
    """A mirrored item is the flipped (pixel - mean) of the same crop, even in TEST."""
    rs = np.random.RandomState(1)
    image = rs.randint(0, 256, (3, 9, 9)).astype(np.uint8)
    write_datum_lmdb(tmp_path / "db", raw_datums([image]))
    mean = rs.uniform(0, 255, (1, 3, 9, 9)).astype(np.float32)
    protoio.write_binary(tmp_path / "m.binaryproto", protoio.array_to_blobproto(mean))
    caffe.set_random_seed(0)
    net = data_net(tmp_path, tmp_path / "db",
                   f'mirror: true mean_file: "{tmp_path / "m.binaryproto"}"', batch=8,
                   phase="TEST")
    (data, _), = batches(net, 1)
    plain = image.astype(np.float32) - mean[0]
    flipped = [bool(np.array_equal(d, plain[:, :, ::-1])) for d in data]
    assert all(f or np.array_equal(d, plain) for f, d in zip(flipped, data))
    assert 0 < sum(flipped) < 8


def test_mean_value_one_for_all_channels_or_one_each(tmp_path):
    rs = np.random.RandomState(2)
    images = [rs.randint(0, 256, (3, 6, 5)).astype(np.uint8) for _ in range(2)]
    write_datum_lmdb(tmp_path / "db", raw_datums(images))
    stack = np.stack(images).astype(np.float32)
    (one, _), = batches(data_net(tmp_path, tmp_path / "db", "mean_value: 100 scale: 0.5",
                                 phase="TEST"), 1)
    np.testing.assert_array_equal(one, (stack - np.float32(100)) * np.float32(0.5))
    (three, _), = batches(data_net(tmp_path, tmp_path / "db",
                                   "mean_value: 104 mean_value: 117 mean_value: 123",
                                   phase="TEST"), 1)
    mv = np.array([104, 117, 123], np.float32)[None, :, None, None]
    np.testing.assert_array_equal(three, stack - mv)
    with pytest.raises(CaffeError, match=r"layer 'data'.*mean_value.*2 mean_value\(s\) for "
                                        r"3-channel"):
        data_net(tmp_path, tmp_path / "db", "mean_value: 1 mean_value: 2")


def test_each_batch_takes_the_size_of_its_first_image(tmp_path):
    small, large = (np.full((3, 4, 5), 1, np.uint8), np.full((3, 6, 7), 2, np.uint8))
    write_datum_lmdb(tmp_path / "db", raw_datums([small, large]))
    net = data_net(tmp_path, tmp_path / "db", batch=1, phase="TEST")
    shapes = []
    for _ in range(3):
        net.forward()
        shapes.append(net.blobs["data"].data.shape)
    assert shapes == [(1, 3, 4, 5), (1, 3, 6, 7), (1, 3, 4, 5)]
    assert (net.blobs["data"].data == 1).all()


def test_float_data_datums(tmp_path):
    values = np.random.RandomState(3).normal(size=(2, 4, 5)).astype(np.float32)
    write_datum_lmdb(tmp_path / "db", raw_datums([values], [1]))
    (data, label), = batches(data_net(tmp_path, tmp_path / "db", "scale: 2", batch=1,
                                      phase="TEST"), 1)
    np.testing.assert_array_equal(data[0], values * np.float32(2))
    assert label.tolist() == [1.0]


# ---------------------------------------------------------------- encoded Datum

def test_encoded_jpeg_matches_the_raw_datum_of_its_pixels(tmp_path):
    jpegs = [encode(skimage_rgb(n, (48, 40)), "JPEG", quality=85)
             for n in ("astronaut", "coffee", "chelsea")]
    write_datum_lmdb(tmp_path / "enc", [encoded_datum(b, i) for i, b in enumerate(jpegs)])
    raw = [cvimage.decode(b, cvimage.COLOR).transpose(2, 0, 1) for b in jpegs]
    write_datum_lmdb(tmp_path / "raw", raw_datums(raw))
    transform = "crop_size: 32 mirror: true mean_value: 104 mean_value: 117 mean_value: 123"
    caffe.set_random_seed(11)
    enc = batches(data_net(tmp_path, tmp_path / "enc", transform), 3)
    caffe.set_random_seed(11)
    ref = batches(data_net(tmp_path, tmp_path / "raw", transform), 3)
    for (d1, l1), (d2, l2) in zip(enc, ref):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    # BGR: the blue channel comes first
    rgb = np.asarray(Image.open(io.BytesIO(jpegs[0])).convert("RGB"))
    np.testing.assert_array_equal(raw[0][0], rgb[:, :, 2])


def test_encoded_force_gray_and_force_color(tmp_path):
    png_rgb = encode(skimage_rgb("coffee", (30, 20)), "PNG")
    png_gray = encode(Image.fromarray(skdata.camera()).resize((30, 20)), "PNG")
    write_datum_lmdb(tmp_path / "db", [encoded_datum(png_rgb, 0), encoded_datum(png_gray, 1)])
    net = data_net(tmp_path, tmp_path / "db", "force_gray: true", batch=2, phase="TEST")
    (gray, _), = batches(net, 1)
    assert gray.shape == (2, 1, 20, 30)
    np.testing.assert_array_equal(gray[0, 0], cvimage.decode(png_rgb, cvimage.GRAYSCALE)[:, :, 0])
    net = data_net(tmp_path, tmp_path / "db", "force_color: true", batch=2, phase="TEST")
    (color, _), = batches(net, 1)
    assert color.shape == (2, 3, 20, 30)
    assert (color[1, 0] == color[1, 1]).all() and (color[1, 1] == color[1, 2]).all()
    # without a force flag a batch takes the channels of its first image: the mix fails
    net = data_net(tmp_path, tmp_path / "db", "", batch=2, phase="TEST")
    with pytest.raises(CaffeError, match=r"layer 'data'.*is 1x20x30.*first image is 3x20x30"):
        net.forward()


# ---------------------------------------------------------------- prefetching

def _wait_for(condition, seconds=20.0):
    import time
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_batches_are_made_ahead_in_the_background_and_the_thread_ends_with_the_net(
        tmp_path, position_db):
    import gc
    net = data_net(tmp_path, position_db, "crop_size: 8", batch=2, extra="prefetch: 3")
    layer = net.layer_dict["data"]
    ready = layer._prefetcher._ready
    assert _wait_for(lambda: ready.qsize() == 3), "the prefetch thread did not fill its queue"
    net.forward()                           # takes one ready batch; the thread makes another
    assert _wait_for(lambda: ready.qsize() == 3)
    thread = layer._prefetcher._thread
    assert thread.is_alive()
    del net, layer
    gc.collect()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the prefetch thread outlived its net"


# ---------------------------------------------------------------- wrap-around, V1, training

def test_wrap_around_restarts_from_the_first_record_and_logs_it(tmp_path, position_db):
    log = io.StringIO()
    glog.log_to(log)
    try:
        net = data_net(tmp_path, position_db, "", batch=4, phase="TEST", extra="prefetch: 1")
        labels = [int(v) for _, lab in batches(net, 3) for v in lab]
    finally:
        glog.log_to()
    assert labels == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    assert "data_layer.cpp:73] Restarting data prefetching from start." in log.getvalue()
    assert "] output data size: 4,3,20,24" in log.getvalue()


def test_rand_skip_starts_at_a_seeded_offset(tmp_path, position_db):
    firsts = []
    for _ in range(2):
        caffe.set_random_seed(99)
        net = data_net(tmp_path, position_db, "", batch=2, phase="TEST", extra="rand_skip: 5")
        firsts.append(batches(net, 1)[0][1].tolist())
    assert firsts[0] == firsts[1]
    skip = int(np.random.RandomState(99).randint(0, 2**32, dtype=np.uint32)) % 5
    assert firsts[0] == [skip, skip + 1]


def test_v1_data_layer_with_transform_fields_in_data_param(tmp_path, position_db):
    (tmp_path / "v1.prototxt").write_text(f"""name: "v1"
layers {{ name: "data" type: DATA top: "data" top: "label"
  data_param {{ source: "{position_db}" backend: LMDB batch_size: 2 crop_size: 10 scale: 2 }}
  include {{ phase: TEST }} }}
""")
    net = caffe.Net(str(tmp_path / "v1.prototxt"), caffe.TEST)
    net.forward()
    assert net.blobs["data"].data.shape == (2, 3, 10, 10)
    assert net.blobs["data"].data[0, 0, 0, 0] == 2 * 5     # row 5 (center crop), doubled


def test_train_net_and_test_net_on_one_lmdb_learn(tmp_path, position_db):
    (tmp_path / "tv.prototxt").write_text(f"""name: "tv"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 16 mirror: true scale: 0.00390625 }}
  data_param {{ source: "{position_db}" backend: LMDB batch_size: 3 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ crop_size: 16 scale: 0.00390625 }}
  data_param {{ source: "{position_db}" backend: LMDB batch_size: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 6 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
""")
    caffe.set_random_seed(0)
    train = caffe.Net(str(tmp_path / "tv.prototxt"), caffe.TRAIN)
    test = caffe.Net(str(tmp_path / "tv.prototxt"), caffe.TEST)
    loss = train.forward_backward()
    assert np.isfinite(loss) and np.abs(train.params["fc"][0].diff).sum() > 0
    test.forward()
    assert test.blobs["label"].data.tolist() == [0, 1]


# ---------------------------------------------------------------- ImageData

@pytest.fixture
def image_folder(tmp_path):
    """Real photographs (scikit-image's data) as JPEG and PNG files of several sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    specs = [("astronaut", "a.jpg", (64, 60)), ("coffee", "b.png", (70, 50)),
             ("chelsea", "c.jpg", (45, 44)), ("rocket", "d.png", (40, 66)),
             ("immunohistochemistry", "e.jpg", (52, 52)), ("coffee", "f.jpg", (61, 43))]
    for name, file, size in specs:
        im = skimage_rgb(name, size)
        im.save(folder / file, quality=90) if file.endswith("jpg") else im.save(folder / file)
    (tmp_path / "list.txt").write_text("".join(f"{f} {i % 3}\n"
                                               for i, (_, f, _) in enumerate(specs)))
    return tmp_path


def image_data_net(root, params, transform="", phase="TEST"):
    text = f"""name: "img"
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  transform_param {{ {transform} }}
  image_data_param {{ source: "list.txt" root_folder: "images/" {params} }} }}
"""
    (root / "img.prototxt").write_text(text)
    return caffe.Net(str(root / "img.prototxt"), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)


@pytest.mark.parametrize("workers", [1, 2])
def test_image_data_reads_resizes_and_wraps(image_folder, monkeypatch, workers):
    """The same with the images read by worker processes (relative paths: their working
    directory follows the layer's process)."""
    prefetch.set_decode_workers(workers)
    monkeypatch.chdir(image_folder)
    net = image_data_net(image_folder, "batch_size: 4 new_height: 32 new_width: 40",
                         "mean_value: 100")
    got = batches(net, 3)
    names = [line.split()[0] for line in (image_folder / "list.txt").read_text().splitlines()]
    order = [k % 6 for k in range(12)]
    for b, (data, label) in enumerate(got):
        for j in range(4):
            name = names[order[4 * b + j]]
            im = cvimage.resize(cvimage.read(image_folder / "images" / name), 32, 40)
            np.testing.assert_array_equal(
                data[j], im.transpose(2, 0, 1).astype(np.float32) - np.float32(100))
        assert label.tolist() == [order[4 * b + j] % 3 for j in range(4)]


def test_image_data_gray_and_crop(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder)
    caffe.set_random_seed(5)
    net = image_data_net(image_folder, "batch_size: 2 new_height: 30 new_width: 30 "
                         "is_color: false", "crop_size: 24 mirror: true", phase="TRAIN")
    (data, _), = batches(net, 1)
    assert data.shape == (2, 1, 24, 24)
    full = cvimage.resize(cvimage.read(image_folder / "images/a.jpg", cvimage.GRAYSCALE),
                          30, 30)[:, :, 0].astype(np.float32)
    crops = {(h, w, m) for h in range(7) for w in range(7) for m in (0, 1)
             if np.array_equal(data[0, 0], (full[h:h + 24, w:w + 24][:, ::-1] if m
                                            else full[h:h + 24, w:w + 24]))}
    assert crops, "the item is not a crop of the resized gray image"


@pytest.mark.parametrize("workers", [1, 2])
def test_image_data_shuffle_is_seeded_and_reshuffles_each_epoch(image_folder, monkeypatch,
                                                                 workers):
    prefetch.set_decode_workers(workers)
    monkeypatch.chdir(image_folder)

    def epochs(seed):
        caffe.set_random_seed(seed)
        net = image_data_net(image_folder, "batch_size: 6 shuffle: true new_height: 8 "
                             "new_width: 8")
        return [tuple(int(v) for v in d[:, 0, 0, 0]) for d, _ in batches(net, 4)]

    a, b = epochs(21), epochs(21)
    assert a == b
    firsts = {}
    for name in "abcdef":
        path = next((image_folder / "images").glob(name + ".*"))
        firsts[int(cvimage.resize(cvimage.read(path), 8, 8)[0, 0, 0])] = name
    assert all(sorted(e) == sorted(firsts) for e in a)       # each epoch: every image once
    assert len(set(a)) > 1                                  # reshuffled at the wrap-around
    assert epochs(22) != a


def test_image_data_errors(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder)
    (image_folder / "list.txt").write_text("a.jpg 0\nmissing.jpg 1\n")
    net = image_data_net(image_folder, "batch_size: 2")
    with pytest.raises(CaffeError, match=r"images/missing\.jpg.*layer 'data'.*image not found"):
        net.forward()
    (image_folder / "list.txt").write_text("a.jpg zero\n")
    with pytest.raises(CaffeError, match=r"list\.txt:1.*integer label"):
        image_data_net(image_folder, "batch_size: 2")
    (image_folder / "list.txt").write_text("a.jpg 0\nb.jpg 99999999999999999999999999\n")
    with pytest.raises(CaffeError, match=r"list\.txt:2: label 9999.* does not fit Caffe's 32-bit"):
        image_data_net(image_folder, "batch_size: 2")
    with pytest.raises(CaffeError, match=r"new_height and new_width must be set together"):
        image_data_net(image_folder, "batch_size: 2 new_height: 5")


# ---------------------------------------------------------------- MemoryData and DummyData

def test_memory_data_serves_arrays_in_turn(tmp_path):
    (tmp_path / "mem.prototxt").write_text("""name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 4 width: 5 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")
    net = caffe.Net(str(tmp_path / "mem.prototxt"), caffe.TRAIN)
    with pytest.raises(CaffeError, match=r"layer 'data'.*set_input_arrays"):
        net.forward()
    x = np.random.RandomState(0).normal(size=(6, 3, 4, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0], np.float32)
    net.set_input_arrays(x, y)
    for k in (0, 1, 2, 0):
        loss = net.forward_backward()
        np.testing.assert_array_equal(net.blobs["data"].data, x[2 * k:2 * k + 2])
        np.testing.assert_array_equal(net.blobs["label"].data.ravel(), y[2 * k:2 * k + 2])
        assert net.blobs["label"].data.shape == (2, 1, 1, 1)    # as Caffe reshapes it
        assert np.isfinite(loss)
    with pytest.raises(CaffeError, match=r"multiple of batch_size 2"):
        net.set_input_arrays(x[:3], y[:3])
    with pytest.raises(CaffeError, match=r"data must be N x 3 x 4 x 5"):
        net.set_input_arrays(x[:, :, :2], y)
    with pytest.raises(CaffeError, match=r"labels must be N"):
        net.set_input_arrays(x, y[:4])


def test_set_input_arrays_needs_a_memory_data_layer(tmp_path, position_db):
    net = data_net(tmp_path, position_db)
    with pytest.raises(CaffeError, match=r"set_input_arrays needs a MemoryData layer"):
        net.set_input_arrays(np.zeros((2, 3, 20, 24)), np.zeros(2))


def test_dummy_data_constant_and_random_tops(tmp_path):
    (tmp_path / "dummy.prototxt").write_text("""name: "dummy"
layer { name: "d" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
    data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 1 } } }
""")
    net = caffe.Net(str(tmp_path / "dummy.prototxt"), caffe.TEST)
    net.forward()
    b1 = net.blobs["b"].data.copy()
    net.forward()
    assert (net.blobs["a"].data == 7).all() and net.blobs["a"].data.shape == (2, 3)
    assert net.blobs["b"].data.shape == (4,) and not np.array_equal(b1, net.blobs["b"].data)


# ---------------------------------------------------------------- LevelDB

def test_leveldb_backend(tmp_path, position_db):
    plyvel = pytest.importorskip("plyvel")
    ldb = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for key, value in db.open_db(position_db).items():
        ldb.put(key, value)
    ldb.close()
    (tmp_path / "l.prototxt").write_text(f"""name: "l"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{tmp_path / 'ldb'}" backend: LEVELDB batch_size: 4 }} }}
""")
    got = batches(caffe.Net(str(tmp_path / "l.prototxt"), caffe.TEST), 2)
    want = batches(data_net(tmp_path, position_db, batch=4, phase="TEST"), 2)
    for (d1, l1), (d2, l2) in zip(got, want):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)


def test_leveldb_without_plyvel_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "ldb").mkdir()
    monkeypatch.setitem(sys.modules, "plyvel", None)
    (tmp_path / "l.prototxt").write_text(f"""name: "l"
layer {{ name: "data" type: "Data" top: "data"
  data_param {{ source: "{tmp_path / 'ldb'}" backend: LEVELDB batch_size: 4 }} }}
""")
    with pytest.raises(CaffeError, match=r"layer 'data' \(Data\).*LEVELDB needs the plyvel"):
        caffe.Net(str(tmp_path / "l.prototxt"), caffe.TEST)


# ---------------------------------------------------------------- errors

def test_missing_not_an_lmdb_and_empty_databases(tmp_path):
    with pytest.raises(CaffeError, match=r"nope: layer 'data' \(Data\) data_param.source: no "
                                        r"LMDB database here"):
        data_net(tmp_path, tmp_path / "nope")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CaffeError, match=r"folder: layer 'data'.*not an LMDB"):
        data_net(tmp_path, tmp_path / "folder")
    db.write_lmdb(tmp_path / "empty", [])
    with pytest.raises(CaffeError, match=r"empty: layer 'data'.*holds no records"):
        data_net(tmp_path, tmp_path / "empty")


def test_mean_file_of_another_size_names_the_layer(tmp_path, position_db):
    protoio.write_binary(tmp_path / "m.binaryproto",
                         protoio.array_to_blobproto(np.zeros((1, 3, 16, 16), np.float32)))
    with pytest.raises(CaffeError, match=r"layer 'data' \(Data\): transform_param.mean_file: "
                                        r"mean_file .*m.binaryproto is 3x16x16 but the images "
                                        r"are 3x20x24"):
        data_net(tmp_path, position_db, f'mean_file: "{tmp_path / "m.binaryproto"}"')
    with pytest.raises(CaffeError, match=r"mean_file and mean_value"):
        data_net(tmp_path, position_db,
                 f'mean_file: "{tmp_path / "m.binaryproto"}" mean_value: 3')
    with pytest.raises(CaffeError, match=r"missing.binaryproto: file not found"):
        data_net(tmp_path, position_db, 'mean_file: "missing.binaryproto"')


def test_crop_larger_than_the_image_and_bad_records(tmp_path, position_db):
    with pytest.raises(CaffeError, match=r"layer 'data'.*crop_size 32 is larger than the 20x24"):
        data_net(tmp_path, position_db, "crop_size: 32")
    good = encode(skimage_rgb("coffee", (20, 20)), "PNG")
    write_datum_lmdb(tmp_path / "bad", [encoded_datum(good, 0), encoded_datum(good, 1),
                                        encoded_datum(b"\xff\xd8 not a jpeg", 2)])
    net = data_net(tmp_path, tmp_path / "bad", batch=2, phase="TEST")
    net.forward()                                     # records 0 and 1 are fine
    for _ in range(2):                                # the broken record fails every time
        with pytest.raises(CaffeError, match=r"layer 'data'.*record '00000002' of .*bad: "
                                            r"cannot decode its image"):
            net.forward()


def test_decode_worker_processes_raise_what_the_inline_path_raises(tmp_path):
    """A batch with a record of the wrong size (row 2) and an undecodable one (row 3): with
    worker processes, the layer raises the same error as without, the earliest bad row's, and
    keeps raising it."""
    good = encode(skimage_rgb("coffee", (20, 20)), "PNG")
    small = encode(skimage_rgb("coffee", (16, 16)), "PNG")
    write_datum_lmdb(tmp_path / "bad", [encoded_datum(good, 0), encoded_datum(good, 1),
                                        encoded_datum(small, 2),
                                        encoded_datum(b"\xff\xd8 not a jpeg", 3)])
    messages = []
    for workers in (1, 3):
        prefetch.set_decode_workers(workers)
        net = data_net(tmp_path, tmp_path / "bad", batch=4, phase="TEST")
        for _ in range(2):
            with pytest.raises(CaffeError) as e:
                net.forward()
            messages.append(str(e.value))
    assert len(set(messages)) == 1, messages
    assert "record '00000002'" in messages[0] and "is 3x16x16 (C x H x W)" in messages[0]


def test_a_decode_worker_that_dies_fails_the_next_batch_with_its_name(tmp_path, position_db):
    """A killed worker process does not hang the layer: the batch it was to help make raises
    an error naming it (and every later one does); closing the net ends the other worker."""
    import os
    import signal
    prefetch.set_decode_workers(3)
    net = data_net(tmp_path, position_db, "crop_size: 8", batch=3, extra="prefetch: 1")
    net.forward()
    pool = net.layers[0].decode_pool
    victim, other = pool.worker_pids()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=rf"decode worker decode-data-0 \(pid {victim}\) "
                                           r"ended unexpectedly"):
        for _ in range(4):              # batches made before the kill come out first
            net.forward()
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        net.forward()
    pool.close()
    assert _wait_for(lambda: not os.path.exists(f"/proc/{other}") or
                     open(f"/proc/{other}/stat").read().split()[2] == "Z")


@pytest.mark.parametrize("workers", [1, 2])
def test_the_data_blob_takes_each_batch_without_a_copy(tmp_path, position_db, workers):
    """As Caffe's prefetching layers hand their buffer to the top, the blob takes the batch
    the layer made: no copy per pass. An array of the blob taken earlier keeps the batch it
    showed while it is held (its memory is not given to a later batch), and the net's later
    layers see the new batch."""
    prefetch.set_decode_workers(workers)
    net = data_net(tmp_path, position_db, batch=2, phase="TEST", extra="prefetch: 1")
    net.forward()
    first = net.blobs["data"].data
    kept = first.copy()
    for _ in range(5):
        net.forward()
        now = net.blobs["data"].data
        assert not np.shares_memory(now, first)
        np.testing.assert_array_equal(first, kept)
    assert now[:, 2, 0, 0].tolist() == [(2 * 5 + j) % 6 for j in range(2)]


def test_a_database_still_closing_in_another_thread_is_waited_for(position_db):
    """py-lmdb allows one handle per database per process; a net dropped while its prefetch
    thread ends may still be closing its handle when the next net opens the database: the
    reader waits for it (a few seconds at most) instead of failing, and still says so when
    the handle never goes."""
    import threading

    import lmdb
    other = lmdb.open(str(position_db), readonly=True, lock=True)
    closer = threading.Timer(0.3, other.close)
    closer.start()
    reader = db.LMDBReader(position_db)
    closer.join()
    assert len(reader) == 6 and reader.first()
    lmdb_copy = position_db.parent / "copy"
    lmdb_copy.mkdir()
    (lmdb_copy / "data.mdb").write_bytes((position_db / "data.mdb").read_bytes())
    held = lmdb.open(str(lmdb_copy), readonly=True, lock=False)
    try:
        with pytest.raises(lmdb.Error, match="already open"):
            db._open_lmdb_when_closed(lmdb, str(lmdb_copy), wait_s=0.2)
    finally:
        held.close()


def test_leveldb_backend_on_an_lmdb_says_so(tmp_path, position_db):
    (tmp_path / "n.prototxt").write_text(f"""name: "n"
layer {{ name: "data" type: "Data" top: "data"
  data_param {{ source: "{position_db}" backend: LEVELDB batch_size: 4 }} }}
""")
    with pytest.raises(CaffeError, match=r"is an LMDB database: set backend: LMDB"):
        caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)


def test_data_layer_with_only_a_data_top(tmp_path, position_db):
    net = data_net(tmp_path, position_db, batch=2, phase="TEST", tops=1)
    net.forward()
    assert net.blobs["data"].tensor.dtype == torch.float32
    assert net.outputs == ["data"]
