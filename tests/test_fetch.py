"""deepselfie fetch-weights against a real HTTP server on 127.0.0.1: resume, checksum, offline."""
import hashlib
import socket

import pytest

from deepselfie.errors import UserError
from httpserver import FileServer
from models.selfie import weights as fetch

WEIGHTS = bytes(range(256)) * 4096          # 1 MiB of "weights"
SHA1 = hashlib.sha1(WEIGHTS).hexdigest()


def test_download_resumes_a_broken_transfer_with_range(tmp_path):
    with FileServer({"/w.caffemodel": WEIGHTS}, cut_after=300_000, cut_times=1) as srv:
        dest = fetch.download(srv.url("/w.caffemodel"), tmp_path / "w.caffemodel", sha1=SHA1,
                              retries=3)
        ranges = [r for _, r in srv.requests]
    assert dest.read_bytes() == WEIGHTS
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1][6:-1]) <= 300_000      # the second request only asks for the rest
    assert not (tmp_path / "w.caffemodel.part").exists()


def test_checksum_mismatch_keeps_nothing(tmp_path):
    with FileServer({"/w": WEIGHTS}) as srv:
        with pytest.raises(UserError, match="checksum mismatch"):
            fetch.download(srv.url("/w"), tmp_path / "w", sha1="0" * 40)
    assert not (tmp_path / "w").exists() and not (tmp_path / "w.part").exists()


def test_offline_is_one_clear_line_saying_where_to_put_the_file(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    with pytest.raises(UserError) as e:
        fetch.download(f"http://127.0.0.1:{port}/w", tmp_path / "w", retries=1)
    msg = str(e.value)
    assert "offline?" in msg and str(tmp_path / "w") in msg and "--path" in msg


def test_fetch_model_with_mirror_url_and_local_path(tmp_path, monkeypatch):
    proto = b'name: "VGG_ILSVRC_16_layers"\n'
    monkeypatch.setitem(fetch.MODELS, "vgg16", [
        fetch.RemoteFile("VGG_ILSVRC_16_layers.caffemodel", "http://unused/", SHA1),
        fetch.RemoteFile("VGG_ILSVRC_16_layers_deploy.prototxt", "",
                         hashlib.sha1(proto).hexdigest())])
    with FileServer({"/w": WEIGHTS, "/p": proto}) as srv:
        fetch.MODELS["vgg16"][1] = fetch.RemoteFile(
            "VGG_ILSVRC_16_layers_deploy.prototxt", srv.url("/p"), hashlib.sha1(proto).hexdigest())
        files = fetch.fetch_model("vgg16", tmp_path / "m", url=srv.url("/w"))
    assert [f.name for f in files] == ["VGG_ILSVRC_16_layers.caffemodel",
                                       "VGG_ILSVRC_16_layers_deploy.prototxt"]
    assert files[0].read_bytes() == WEIGHTS
    local = tmp_path / "mine.caffemodel"
    local.write_bytes(WEIGHTS)
    out = fetch.fetch_model("vgg16", tmp_path / "m2", path=local, retries=0)
    assert out[0].read_bytes() == WEIGHTS      # the prototxt was skipped with a warning
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch.fetch_model("vgg16", tmp_path / "m3", path=bad, retries=0)


def test_cli_fetch_weights_offline_exit_2(cli, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = cli("fetch-weights", "vgg16", "--url", f"http://127.0.0.1:{port}/w", "--retries", "0",
            "--data-dir", tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "VGG_ILSVRC_16_layers.caffemodel" in r.stderr
