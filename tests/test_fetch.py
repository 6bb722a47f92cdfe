"""deepselfie fetch-weights against a real HTTP server on 127.0.0.1: resume, checksum, offline,
and a hostile server: trickled headers or body (deadline), oversized bodies (byte cap), a
redirect to another scheme, a 206 that does not continue the partial file."""
import dataclasses
import hashlib
import socket

import pytest

from deepselfie.download import Checksum, Limits, download
from deepselfie.errors import UserError
from httpserver import FileServer
from models.selfie import weights as fetch

WEIGHTS = bytes(range(256)) * 4096          # 1 MiB of "weights"
SHA1 = Checksum("sha1", hashlib.sha1(WEIGHTS).hexdigest())
FAST = Limits(timeout=5, deadline=60, retries=3, backoff=0.01)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    return port


def nothing_in(folder):
    return not folder.exists() or not any(folder.iterdir())


def test_download_resumes_a_broken_transfer_with_range(tmp_path):
    with FileServer({"/w.caffemodel": WEIGHTS}, cut_after=300_000, cut_times=1) as srv:
        dest = download(srv.url("/w.caffemodel"), tmp_path / "w.caffemodel", checksum=SHA1,
                        limits=FAST)
        ranges = [r for _, r in srv.requests]
    assert dest.read_bytes() == WEIGHTS
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1][6:-1]) <= 300_000      # the second request only asks for the rest
    assert not (tmp_path / "w.caffemodel.part").exists()


def test_checksum_mismatch_keeps_nothing(tmp_path):
    with FileServer({"/w": WEIGHTS}) as srv:
        with pytest.raises(UserError, match="checksum mismatch"):
            download(srv.url("/w"), tmp_path / "w", checksum=Checksum("sha1", "0" * 40))
    assert nothing_in(tmp_path)


def test_sha256_prefix_is_checked(tmp_path):
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    with FileServer({"/w": WEIGHTS}) as srv:
        with pytest.raises(UserError, match="expected prefix 00000000"):
            download(srv.url("/w"), tmp_path / "w", checksum=Checksum("sha256", "00000000"))
        assert nothing_in(tmp_path)
        download(srv.url("/w"), tmp_path / "w", checksum=Checksum("sha256", digest[:8]))
    assert (tmp_path / "w").read_bytes() == WEIGHTS
    with pytest.raises(UserError, match="8 to 64 hex digits"):
        Checksum("sha256", "3979")


def test_offline_is_one_clear_line_saying_where_to_put_the_file(tmp_path):
    with pytest.raises(UserError) as e:
        download(f"http://127.0.0.1:{free_port()}/w", tmp_path / "w",
                 limits=dataclasses.replace(FAST, retries=1))
    msg = str(e.value)
    assert "offline?" in msg and str(tmp_path / "w") in msg and "--path" in msg


def test_a_body_trickled_one_byte_at_a_time_ends_at_the_deadline(tmp_path):
    with FileServer({"/w": WEIGHTS}, trickle=0.2) as srv:
        with pytest.raises(UserError, match="deadline of 1 s") as e:
            download(srv.url("/w"), tmp_path / "w",
                     limits=dataclasses.replace(FAST, deadline=1.0))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "w").exists()           # a few bytes may wait in w.part for a rerun
    assert (tmp_path / "w.part").stat().st_size < len(WEIGHTS)


def test_headers_trickled_one_byte_at_a_time_end_at_the_deadline(tmp_path):
    with FileServer({"/w": WEIGHTS}, trickle_headers=0.2) as srv:
        with pytest.raises(UserError, match="deadline"):
            download(srv.url("/w"), tmp_path / "w",
                     limits=dataclasses.replace(FAST, deadline=1.0))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("no_length", [False, True])
def test_never_more_than_the_published_size_is_written(tmp_path, monkeypatch, no_length):
    big = WEIGHTS * 3                             # the server sends 3 MiB for a 1 MiB file
    written = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def write(self, b):
            written.append(len(b))
            return self.f.write(b)

    monkeypatch.setattr("builtins.open", lambda p, m="r", *a, **k: Spy(real_open(p, m, *a, **k))
                        if str(p).endswith(".part") and "b" in m and "r" not in m.replace(
                            "r+", "") else real_open(p, m, *a, **k))
    with FileServer({"/w": big}, no_length=no_length) as srv:
        with pytest.raises(UserError, match=("more than the 1048576 bytes allowed"
                                             if no_length else "announces 3145728 bytes")):
            download(srv.url("/w"), tmp_path / "w", size=len(WEIGHTS), limits=FAST)
    assert sum(written) <= len(WEIGHTS)
    assert nothing_in(tmp_path)


def test_max_bytes_caps_a_download_of_unknown_size(tmp_path):
    with FileServer({"/w": WEIGHTS}, no_length=True) as srv:
        with pytest.raises(UserError, match="more than the 1000 bytes allowed"):
            download(srv.url("/w"), tmp_path / "w",
                     limits=dataclasses.replace(FAST, max_bytes=1000))
    assert nothing_in(tmp_path)


def test_a_206_from_byte_0_on_resume_restarts_instead_of_appending(tmp_path):
    """Under --no-verify (no checksum) the file must still come out right."""
    (tmp_path / "w.part").write_bytes(WEIGHTS[:300_000])
    with FileServer({"/w": WEIGHTS}, range_from_zero=True) as srv:
        dest = download(srv.url("/w"), tmp_path / "w", checksum=None, limits=FAST)
        ranges = [r for _, r in srv.requests]
    assert dest.read_bytes() == WEIGHTS
    assert ranges == ["bytes=300000-", None]      # the bad 206 was dropped, then a plain GET
    assert not (tmp_path / "w.part").exists()


def test_a_206_whose_total_is_not_the_published_size_restarts(tmp_path):
    (tmp_path / "w.part").write_bytes(WEIGHTS[:1000])
    other = WEIGHTS + b"x"                        # a different, larger file at the URL
    with FileServer({"/w": other}) as srv:
        with pytest.raises(UserError, match="announces 1048577 bytes, more than the 1048576"):
            download(srv.url("/w"), tmp_path / "w", size=len(WEIGHTS), limits=FAST)
        assert [r for _, r in srv.requests] == ["bytes=1000-", None]
    assert nothing_in(tmp_path)


def test_a_stale_part_longer_than_the_file_starts_over(tmp_path):
    (tmp_path / "w.part").write_bytes(b"z" * (len(WEIGHTS) + 10))   # 416 from the server
    with FileServer({"/w": WEIGHTS}) as srv:
        dest = download(srv.url("/w"), tmp_path / "w", limits=FAST)
    assert dest.read_bytes() == WEIGHTS


def test_redirects_are_followed_but_only_to_http(tmp_path):
    with FileServer({"/w": WEIGHTS}, redirects={"/a": "/w", "/ftp": "ftp://127.0.0.1/w",
                                                "/file": "file:///etc/passwd"}) as srv:
        assert download(srv.url("/a"), tmp_path / "w", limits=FAST).read_bytes() == WEIGHTS
        for path in ("/ftp", "/file"):
            with pytest.raises(UserError, match="redirect to .* is not http"):
                download(srv.url(path), tmp_path / "x", limits=FAST)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_fetch_model_with_mirror_url_and_local_path(tmp_path, monkeypatch):
    proto = b'name: "VGG_ILSVRC_16_layers"\n'
    proto_sum = Checksum("sha1", hashlib.sha1(proto).hexdigest())
    with FileServer({"/w": WEIGHTS, "/p": proto}) as srv:
        monkeypatch.setitem(fetch.MODELS, "vgg16", [
            fetch.RemoteFile("VGG_ILSVRC_16_layers.caffemodel", "http://unused/", SHA1,
                             size=len(WEIGHTS)),
            fetch.RemoteFile("VGG_ILSVRC_16_layers_deploy.prototxt", srv.url("/p"), proto_sum)])
        files = fetch.fetch_model("vgg16", tmp_path / "m", url=srv.url("/w"), limits=FAST)
    assert [f.name for f in files] == ["VGG_ILSVRC_16_layers.caffemodel",
                                       "VGG_ILSVRC_16_layers_deploy.prototxt"]
    assert files[0].read_bytes() == WEIGHTS
    local = tmp_path / "mine.caffemodel"
    local.write_bytes(WEIGHTS)
    no_retry = dataclasses.replace(FAST, retries=0)
    monkeypatch.setitem(fetch.MODELS, "vgg16", [
        fetch.MODELS["vgg16"][0],
        fetch.RemoteFile("VGG_ILSVRC_16_layers_deploy.prototxt",
                         f"http://127.0.0.1:{free_port()}/p", proto_sum)])
    out = fetch.fetch_model("vgg16", tmp_path / "m2", path=local, limits=no_retry)
    assert out[0].read_bytes() == WEIGHTS      # the prototxt was skipped with a warning
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch.fetch_model("vgg16", tmp_path / "m3", path=bad, limits=no_retry)


def test_cli_fetch_weights_offline_exit_2(cli, tmp_path):
    r = cli("fetch-weights", "vgg16", "--url", f"http://127.0.0.1:{free_port()}/w",
            "--retries", "0", "--data-dir", tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "VGG_ILSVRC_16_layers.caffemodel" in r.stderr


def test_cli_redirect_to_another_scheme_is_one_line_exit_2(cli, tmp_path):
    with FileServer({}, redirects={"/w": "gopher://127.0.0.1/w"}) as srv:
        r = cli("fetch-weights", "vgg16", "--url", srv.url("/w"), "--no-verify",
                "--data-dir", tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "gopher://" in r.stderr and "not http(s)" in r.stderr
    assert nothing_in(tmp_path / "models")


def test_cli_trickling_server_ends_at_the_deadline_option(cli, tmp_path):
    with FileServer({"/w": WEIGHTS}, trickle=0.5) as srv:
        r = cli("fetch-weights", "vgg16", "--url", srv.url("/w"), "--no-verify",
                "--deadline", "1.5", "--data-dir", tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "deadline of 1.5 s" in r.stderr
    assert not (tmp_path / "models" / "VGG_ILSVRC_16_layers.caffemodel").exists()


def test_cli_resume_answered_from_byte_0_installs_the_right_file_under_no_verify(cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "VGG_ILSVRC_16_layers.caffemodel.part").write_bytes(WEIGHTS[:200_000])
    (models / "VGG_ILSVRC_16_layers_deploy.prototxt").write_text("# there: never fetched\n")
    with FileServer({"/w": WEIGHTS}, range_from_zero=True) as srv:
        r = cli("fetch-weights", "vgg16", "--url", srv.url("/w"), "--no-verify",
                "--data-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (models / "VGG_ILSVRC_16_layers.caffemodel").read_bytes() == WEIGHTS
    assert not (models / "VGG_ILSVRC_16_layers.caffemodel.part").exists()


def test_a_mirror_of_the_published_file_is_capped_at_the_published_size(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.MODELS, "vgg16", [
        fetch.RemoteFile("VGG_ILSVRC_16_layers.caffemodel", "http://unused/", SHA1,
                         size=len(WEIGHTS))])
    with FileServer({"/w": WEIGHTS * 2}, no_length=True) as srv:
        with pytest.raises(UserError, match="more than the 1048576 bytes allowed "
                                            r"\(the published size\)"):
            fetch.fetch_model("vgg16", tmp_path / "m", url=srv.url("/w"), verify=False,
                              limits=FAST)
    assert nothing_in(tmp_path / "m")
