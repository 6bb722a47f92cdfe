"""Atomic writes: the target appears whole or not at all, and nothing is left behind."""
import os

import pytest

from deepselfie.files import atomic_open, atomic_path, atomic_write


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path):
    p = tmp_path / "sub" / "out.txt"
    atomic_write(p, "first")
    atomic_write(p, b"second")
    assert p.read_text() == "second"
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert os.listdir(p.parent) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "keep.csv"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.csv"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    from PIL import Image
    with atomic_path(tmp_path / "a.png") as tmp:
        assert tmp.suffix == ".png"
        Image.new("RGB", (2, 2)).save(tmp)
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG"


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m
