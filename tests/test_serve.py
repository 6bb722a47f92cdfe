"""deepselfie serve: the JSON API on 127.0.0.1 (scores, percentiles, crops, limits, concurrency)
and the command that starts it."""
import base64
import concurrent.futures as cf
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from models.selfie.crop import CropSearch
from models.selfie.score import Scorer, load_bgr, write_scores
from deepselfie.serve.server import App, Reference, parse_multipart, start_in_thread
from conftest import ROOT
from nets import bright_net, skimage_photos

REFERENCE = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.99]


def jpeg_bytes(rgb, quality=90):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    deploy, weights = bright_net(tmp_path_factory.mktemp("net"))
    return Scorer(deploy, weights, mean="128,128,128")


@pytest.fixture(scope="module")
def server(scorer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    write_scores([(f"ref{i}.jpg", s) for i, s in enumerate(REFERENCE)], folder / "scores.csv")
    app = App(scorer, Reference.load(folder / "scores.csv"), CropSearch(seed=0))
    srv, thread = start_in_thread(app, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def photos():
    """A few real photos as JPEG bytes, each with the score the scorer gives it."""
    return {name: jpeg_bytes(rgb[::2, ::2].copy()) for name, rgb in skimage_photos()}


def expected_score(scorer, data):
    return float(scorer.score_images([load_bgr(io.BytesIO(data))])[0])


def test_health(server):
    r = requests.get(server.url + "api/health", timeout=10)
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["reference"] == len(REFERENCE)
    assert h["max_bytes"] == 20_000_000 and h["crop"] is True


def test_score_raw_and_multipart(server, scorer, photos):
    data = photos["astronaut"]
    raw = requests.post(server.url + "api/score", data=data,
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    j = raw.json()
    assert j["score"] == pytest.approx(expected_score(scorer, data), abs=1e-5)
    below = sum(s < j["score"] for s in REFERENCE)
    assert j["percentile"] == pytest.approx(100 * below / len(REFERENCE))
    assert j["reference"] == len(REFERENCE) and (j["width"], j["height"]) == (256, 256)
    crop = j["crop"]
    assert crop["score"] >= j["score"]
    box = crop["box"]
    assert box["x"] + box["width"] <= 256 and box["y"] + box["height"] <= 256
    head, b64 = crop["image"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "JPEG" and im.width == im.height

    form = requests.post(server.url + "api/score",
                         files={"image": ("me.jpg", data, "image/jpeg")},
                         data={"note": "a text field before or after the file is ignored"},
                         timeout=60)
    assert form.status_code == 200, form.text
    assert form.json()["score"] == j["score"] and form.json()["crop"] == crop

    quick = requests.post(server.url + "api/score?crop=0", data=data, timeout=60).json()
    assert quick["score"] == j["score"] and "crop" not in quick


def test_big_upload_is_refused_and_the_server_keeps_serving(server, photos):
    t = time.perf_counter()
    r = requests.post(server.url + "api/score", data=b"\xff" * 50_000_000, timeout=60)
    assert r.status_code == 413
    msg = r.json()["error"]
    assert "too large" in msg and "50,000,000" in msg and "20,000,000" in msg
    print(f"\n50 MB upload refused in {time.perf_counter() - t:.2f} s")
    assert requests.get(server.url + "api/health", timeout=10).status_code == 200
    ok = requests.post(server.url + "api/score", data=photos["coffee"], timeout=60)
    assert ok.status_code == 200 and 0 <= ok.json()["score"] <= 1


def test_the_limit_is_told_before_the_body_when_the_client_asks(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.putrequest("POST", "/api/score")
    conn.putheader("Content-Length", str(50_000_000))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()                                  # no body sent at all
    resp = conn.getresponse()
    assert resp.status == 413 and "too large" in json.loads(resp.read())["error"]
    conn.close()


def test_non_images_are_refused_clearly(server, photos, tmp_path):
    url = server.url + "api/score"
    for body, words in ((b"hello, this is text", "not an image"),
                        (photos["coffee"][:400], "not an image"),          # truncated JPEG
                        (b"", "empty upload")):
        r = requests.post(url, data=body, timeout=30)
        assert r.status_code == 400, body[:20]
        assert words in r.json()["error"]
    r = requests.post(url, files={"image": ("notes.txt", b"plain text", "text/plain")},
                      timeout=30)
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    # 8000 x 7000 = 56 million pixels (a tiny PNG): refused from its header, never decoded
    big = io.BytesIO()
    Image.new("1", (8000, 7000)).save(big, format="PNG")
    assert len(big.getvalue()) < 1_000_000
    r = requests.post(url, data=big.getvalue(), timeout=30)
    assert r.status_code == 400
    assert "56,000,000 pixels" in r.json()["error"] and "50,000,000" in r.json()["error"]
    assert requests.get(server.url + "nope", timeout=10).status_code == 404
    assert requests.get(url, timeout=10).status_code == 405
    assert requests.get(server.url + "api/health", timeout=10).json()["status"] == "ok"


def test_load_200_requests_8_concurrent(server, scorer, photos):
    """200 requests, 8 at a time: no errors, and every answer is the score of its own image (the
    shared net never mixes two requests up)."""
    names = sorted(photos)
    expected = {n: expected_score(scorer, photos[n]) for n in names}
    port = server.server_address[1]

    def one(i):
        name = names[i % len(names)]
        t = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/api/score", body=photos[name],
                     headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        return name, resp.status, body, time.perf_counter() - t

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    wall = time.perf_counter() - t0
    assert [status for _, status, _, _ in results] == [200] * 200
    for name, _, body, _ in results:
        assert body["score"] == pytest.approx(expected[name], abs=1e-5), name
        assert body["crop"]["score"] >= body["score"]
    lat = sorted(t for *_, t in results)
    p50, p99 = statistics.median(lat), lat[int(0.99 * len(lat)) - 1]
    print(f"\nload: 200 requests, 8 concurrent, with crop search: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, {200 / wall:.1f} req/s")


def test_reference_percentiles_and_multipart_parsing(tmp_path):
    ref = Reference([0.2, 0.4, 0.6, 0.8])
    assert [ref.percentile(s) for s in (0.1, 0.4, 0.5, 0.9)] == [0, 37.5, 50, 100]
    assert Reference([]).percentile(0.5) is None
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nfield\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n\r\n--\x00\xff\r\n\r\n--XyZ--\r\n")
    assert parse_multipart(body, "multipart/form-data; boundary=XyZ") == b"\r\n--\x00\xff\r\n"


def test_a_reference_folder_is_scored_and_its_workers_let_go(tmp_path, photos):
    """serve.reference as a folder: scored at start (in worker processes here), sorted; the
    processes do not stay for the server's lifetime."""
    deploy, weights = bright_net(tmp_path)
    scorer = Scorer(deploy, weights, mean="128,128,128", workers=2, prepare="processes")
    (tmp_path / "ref").mkdir()
    for name, data in photos.items():
        (tmp_path / "ref" / f"{name}.jpg").write_bytes(data)
    ref = Reference.load(tmp_path / "ref", scorer)
    expected = sorted(expected_score(scorer, data) for data in photos.values())
    assert ref.scores == pytest.approx(expected, abs=1e-6) and len(ref.scores) == len(photos)
    assert scorer._pool is None


def test_cli_serve_starts_answers_and_stops(tmp_path, photos):
    deploy, weights = bright_net(tmp_path)
    refdir = tmp_path / "ref"
    refdir.mkdir()
    for name in ("coffee", "chelsea"):
        (refdir / f"{name}.jpg").write_bytes(photos[name])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepselfie", "serve", "--port", "0", "--reference", refdir,
         "--model", deploy, "--weights", weights, "--mean", "128,128,128"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[2]
        assert "among 2 scores" in line
        h = requests.get(url + "api/health", timeout=10).json()
        assert h["reference"] == 2
        r = requests.post(url + "api/score", data=photos["astronaut"], timeout=60)
        assert r.status_code == 200 and r.json()["percentile"] in (0, 50, 100)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serve: stopped" in out


def test_cli_serve_stopped_while_scoring_exits_cleanly(tmp_path, photos):
    """SIGTERM while requests read and decode 12-megapixel uploads: the server lets them finish
    and exits 0. (Before, a request thread inside OpenCV at the exit aborted the process:
    exit status -6, 'terminate called without an active exception'.)"""
    deploy, weights = bright_net(tmp_path)
    noise = np.random.RandomState(0).randint(0, 256, (3000, 4000, 3), dtype=np.uint8)
    buf = io.BytesIO()      # ~14 MB that takes its time to arrive and to decode
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    body = buf.getvalue()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    for delay in (0.3, 0.3, 0.6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepselfie", "serve", "--port", "0", "--model", deploy,
             "--weights", weights, "--mean", "128,128,128"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = proc.stdout.readline()
            assert line.startswith("serving on http://127.0.0.1:"), proc.stderr.read()
            url = line.split()[2]

            def post():
                try:
                    requests.post(url + "api/score", data=body, timeout=60)
                except requests.RequestException:
                    pass        # the server went away mid-request: expected
            clients = [threading.Thread(target=post, daemon=True) for _ in range(4)]
            for c in clients:
                c.start()
            time.sleep(delay)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (delay, err[-2000:])
        assert "terminate called" not in err
