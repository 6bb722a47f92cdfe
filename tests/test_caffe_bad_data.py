"""Hostile training data ends in one error line and exit 2 (issue 15 item 10): a Datum whose
encoded image is a decompression bomb, a label that is no class of the net."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deepselfie.cli import main
from models.caffe import db, image
from models.caffe.io import array_to_datum, datum_to_array
from models.caffe.proto import caffe_pb2

NET = """name: "badcase"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "db" backend: LMDB batch_size: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = """net: "train_val.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 4
display: 1
snapshot: 0
snapshot_prefix: "snap/bad"
solver_mode: CPU
random_seed: 1
"""


def png_claiming(width, height) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height RGB pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                            0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_case(folder, datums):
    db.write_lmdb(folder / "db", ((f"{i:08d}".encode(), d.SerializeToString())
                                  for i, d in enumerate(datums)))
    (folder / "train_val.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER)


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width,height", [(12000, 10000), (30000, 30000)])
def test_a_decompression_bomb_in_a_datum_is_one_line(tmp_path, monkeypatch, capsys, width,
                                                     height):
    good = caffe_pb2.Datum(encoded=True, data=small_png(), label=0, channels=3, height=6,
                           width=6)
    bomb = caffe_pb2.Datum(encoded=True, data=png_claiming(width, height), label=1)
    write_case(tmp_path, [good, bomb, good, good])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-solver", "solver.prototxt"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "00000001" in lines[0] and "pixels" in lines[0], lines
    with pytest.raises(image.ImageError, match="pixels"):
        datum_to_array(bomb)
    with pytest.raises(image.ImageError, match="pixels"):
        image.decode(bomb.data)


def test_a_label_out_of_range_is_one_line(tmp_path, monkeypatch, capsys):
    images = [np.full((3, 4, 4), i * 10, np.uint8) for i in range(4)]
    write_case(tmp_path, [array_to_datum(im, label) for im, label in
                          zip(images, [0, 1, 2, 7])])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-solver", "solver.prototxt"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "label 7 is out of range for 3 classes" in lines[0], lines
    assert "'loss'" in lines[0]


TRUNCATED_CHILD = """
import sys
import models.caffe as caffe
from models.caffe import db
from models.caffe.errors import CaffeError
for name, open_it in [("Data layer", lambda: caffe.Net("net.prototxt", caffe.TEST)),
                      ("iter_lmdb", lambda: list(db.iter_lmdb("db"))),
                      ("LMDBWriter", lambda: db.LMDBWriter("db"))]:
    try:
        open_it()
        print(name, "opened")
    except CaffeError as e:
        print(name, "refused:", e)
"""


def test_a_truncated_lmdb_is_refused_not_a_sigbus(tmp_path):
    """A data.mdb cut short (a copy that did not finish) is mapped all the same, and reading a
    page past its end killed the process with SIGBUS (real Caffe too). Now its size is checked
    against the page count its meta page records, before any record is read. (In a child
    process: a regression must fail this test, not kill the suite.)"""
    import subprocess
    import sys
    from conftest import ROOT
    db.write_lmdb(tmp_path / "db", ((b"%08d" % i, array_to_datum(
        np.full((1, 4, 4), i % 256, np.uint8), 0).SerializeToString()) for i in range(2000)))
    data = tmp_path / "db" / "data.mdb"
    full = data.read_bytes()
    data.write_bytes(full[:len(full) // 3])
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Data" top: "data" top: "label" '
        'data_param { source: "db" backend: LMDB batch_size: 2 } }\n')
    res = subprocess.run([sys.executable, "-c", TRUNCATED_CHILD], cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    lines = res.stdout.splitlines()
    assert len(lines) == 3, res.stdout
    for line in lines:
        assert "refused:" in line and (f"truncated LMDB: data.mdb has {len(full) // 3:,} bytes "
                                       f"but its pages reach {len(full):,}") in line, line
    assert "layer 'data' (Data) data_param.source" in lines[0]
    assert lines[2].startswith("LMDBWriter refused: db: cannot continue it: truncated")
