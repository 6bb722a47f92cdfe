"""serve against abusive uploads (issue 15 items 1-3): no PostScript decoding (Ghostscript is
never started), a listen backlog that holds a burst of clients, bodies and decoding inside a
memory budget (health checks answered while uploads wait), bounded multipart parsing, slow
clients cut off."""
import concurrent.futures as cf
import http.client
import io
import json
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest
import requests
from PIL import Image

from deepselfie.serve.server import App, Reference, make_server, start_in_thread
from deepselfie.serve.uploads import MAX_PARTS, ApiError, Body, find_file_part
from models.selfie.score import Scorer, load_bgr
from nets import bright_net

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"{ } loop\nshowpage\n%%EOF\n")


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    deploy, weights = bright_net(tmp_path_factory.mktemp("net"))
    return Scorer(deploy, weights, mean="128,128,128")


def serve(app, **kw):
    srv, thread = start_in_thread(app, "127.0.0.1", 0, **kw)
    return srv, thread


def stop(srv, thread):
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def photo_png(w=640, h=480) -> bytes:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (h, w, 4), np.uint8)
    return png(a)



def test_an_eps_upload_never_starts_ghostscript(scorer, fake_gs):
    # the trap is real: Pillow left to itself runs `gs` on this file
    try:
        with Image.open(io.BytesIO(EPS)) as im:
            im.load()
    except Exception:
        pass
    assert fake_gs.exists(), "the fake gs was not run: the control failed"
    fake_gs.unlink()

    srv, thread = serve(App(scorer, Reference([]), None))
    try:
        url = srv.url + "api/score"
        r = requests.post(url, data=EPS, timeout=30)
        assert r.status_code == 400 and "not an image" in r.json()["error"]
        r = requests.post(url, files={"image": ("me.eps", EPS, "application/postscript")},
                          timeout=30)
        assert r.status_code == 400 and "not an image" in r.json()["error"]
        assert requests.get(srv.url + "api/health", timeout=10).status_code == 200
    finally:
        stop(srv, thread)
    assert not fake_gs.exists()


def test_the_loader_makes_no_extra_full_size_copy():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (700, 300, 4), np.uint8)
    alpha = rgba[:, :, 3:].astype(np.uint16)
    white = (rgba[:, :, 2::-1].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    assert np.array_equal(load_bgr(io.BytesIO(png(rgba))), white.astype(np.uint8))
    big = png(np.zeros((2000, 2000, 4), np.uint8))          # 4 MP RGBA
    tracemalloc.start()
    out = load_bgr(io.BytesIO(big))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (2000, 2000, 3) and (out == 255).all()
    # the decoded BGRA (4 bytes a pixel), the BGR result (3) and the file: no other full copy
    assert peak < 2000 * 2000 * 8, peak
    assert peak > 2000 * 2000 * 3      # the measure sees the pixels at all


def test_a_burst_of_60_clients_waits_in_the_backlog(scorer):
    app = App(scorer, Reference([]), None)
    srv = make_server(app, "127.0.0.1", 0)      # not accepting yet: every client must queue
    port = srv.server_address[1]
    socks = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            socks.append(s)
        for s in socks:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        answers = []
        for s in socks:
            s.settimeout(30)
            answers.append(s.makefile("rb").readline())
        assert all(a.startswith(b"HTTP/1.0 200") or a.startswith(b"HTTP/1.1 200")
                   for a in answers), answers[:3]
        srv.shutdown()
        thread.join(5)
    finally:
        for s in socks:
            s.close()
        srv.server_close()


def test_a_form_of_four_million_parts_is_refused_cheaply(scorer):
    body = b"--x\r\n" * 4_000_000           # 20 MB, every part empty
    tracemalloc.start()
    with pytest.raises(ApiError, match=f"more than {MAX_PARTS} parts"):
        find_file_part(body, "multipart/form-data; boundary=x")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000
    srv, thread = serve(App(scorer, Reference([]), None))
    try:
        r = requests.post(srv.url + "api/score", data=body, timeout=60,
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 400 and "parts" in r.json()["error"]
    finally:
        stop(srv, thread)


def test_spooled_bodies_and_multipart_from_disk(scorer, tmp_path):
    data = photo_png()
    app = App(scorer, Reference([]), None, body_memory_mb=0)   # every body goes to disk
    srv, thread = serve(app)
    try:
        raw = requests.post(srv.url + "api/score", data=data, timeout=60)
        form = requests.post(srv.url + "api/score", timeout=60,
                             files={"image": ("me.png", data, "image/png")},
                             data={"note": "a field first"})
    finally:
        stop(srv, thread)
    expected = float(scorer.score_images([load_bgr(io.BytesIO(data))])[0])
    assert raw.status_code == 200 and form.status_code == 200, (raw.text, form.text)
    assert raw.json()["score"] == pytest.approx(expected, abs=1e-5)
    assert form.json()["score"] == raw.json()["score"]
    with open(tmp_path / "f.bin", "wb") as f:    # a Body over a file reads what it was given
        f.write(b"0123456789")
    with open(tmp_path / "f.bin", "rb") as f, Body(file=f, size=10).open(3, 8) as w:
        assert w.read() == b"34567" and w.seek(1) == 1 and w.read(2) == b"45"


def test_uploads_wait_for_memory_and_health_is_answered_meanwhile(scorer):
    data = photo_png()                                    # 640 x 480: about 3.4 MB to decode
    app = App(scorer, Reference([]), None, memory_mb=8, concurrent=8)
    srv, thread = serve(app)
    try:
        held = app.memory.take(app.memory.capacity)       # the budget is full
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(requests.post, srv.url + "api/score", data=data, timeout=120)
                       for _ in range(6)]
            time.sleep(0.5)
            assert not any(f.done() for f in futures)      # they wait for room ...
            h = requests.get(srv.url + "api/health", timeout=10)   # ... the server answers
            assert h.status_code == 200 and h.json()["status"] == "ok"
            app.memory.give(held)
            codes = [f.result().status_code for f in futures]
        assert codes == [200] * 6
        assert app.memory.peak <= app.memory.capacity     # never more than the budget at once
        assert app.memory.used == 0 and app.bodies.used == 0
    finally:
        stop(srv, thread)


def test_a_slow_client_is_cut_off(scorer):
    app = App(scorer, Reference([]), None, read_seconds=1.0)
    srv, thread = serve(app)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
        conn.putrequest("POST", "/api/score")
        conn.putheader("Content-Length", "100000")
        conn.endheaders()
        conn.send(b"\x89PNG" + b"\0" * 100)              # then nothing more
        resp = conn.getresponse()
        assert resp.status == 408 and "longer than 1 s" in json.loads(resp.read())["error"]
        conn.close()
        assert app.bodies.used == 0
        assert requests.get(srv.url + "api/health", timeout=10).status_code == 200
    finally:
        stop(srv, thread)
