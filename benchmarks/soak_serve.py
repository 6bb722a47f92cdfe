"""Soak test of `deepselfie serve` on 127.0.0.1 (not CI, not a pytest test; issue 15).

Starts the server as its own process (the small selfie net with random weights), then:
  1. 200 mixed requests, 16 at a time: valid JPEGs (raw and multipart), oversized bodies
     (413), EPS files (400, Ghostscript never runs: a fake `gs` on PATH leaves a marker if it
     does), slow clients that finish within serve.read_seconds (200) and stalled ones (408);
  2. 16 concurrent uploads of a 49-megapixel RGBA PNG (about 190 KB, padded to 19 MB) while a
     health check is asked every 0.5 s.
Reports p50/p99 latency, requests whose answer was not the expected one, and the server's peak
RSS (VmHWM), per phase. Bounded: 200 + 16 requests, each with a client timeout.

    python benchmarks/soak_serve.py [--requests 200] [--concurrency 16] [--big 16]
"""
import argparse
import concurrent.futures as cf
import http.client
import io
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models.caffe as caffe  # noqa: E402

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"{ } loop\nshowpage\n%%EOF\n")
READ_SECONDS = 5


def small_net(folder: pathlib.Path):
    deploy = ROOT / "prototxt" / "selfie_small_deploy.prototxt"
    caffe.set_random_seed(0)
    net = caffe.Net(str(deploy), caffe.TEST)
    rs = np.random.RandomState(1)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rs.normal(0, 0.01, b.shape)
    weights = folder / "small.caffemodel"
    net.save(str(weights))
    return deploy, weights


def photos(n=8):
    from skimage import data
    out = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket") * (n // 4)):
        img = getattr(data, name)()[:, :, :3]
        buf = io.BytesIO()
        Image.fromarray(img).resize((320 + 40 * i, 240 + 30 * i)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def big_rgba_png(side=7000, pad_to=19_000_000) -> bytes:
    a = np.zeros((side, side, 4), np.uint8)
    a[::7, :, 0] = 200
    a[:, :, 3] = 255
    a[: side // 2, :, 3] = 128
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=9)
    del a
    data = buf.getvalue()
    return data + b"\0" * max(0, pad_to - len(data))      # junk after IEND, as in the issue


def start_server(tmp: pathlib.Path, deploy, weights):
    bindir = tmp / "bin"
    bindir.mkdir()
    marker = tmp / "gs-was-run"
    (bindir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bindir / "gs").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepselfie", "serve", "--port", "0", "--host", "127.0.0.1",
         "--model", str(deploy), "--weights", str(weights), "--mean", "104,117,123",
         "--set", f"serve.read_seconds={READ_SECONDS}", "--data-dir", str(tmp / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    port = int(line.split("serving on http://127.0.0.1:", 1)[1].split("/", 1)[0])
    return proc, port, marker


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of the process in MB."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmHWM"], fields["VmRSS"]


def reset_peak(pid: int) -> None:
    try:     # Linux >= 4.0: writing 5 to clear_refs resets VmHWM
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def post(port, body: bytes, *, ctype="image/jpeg", chunks=1, gap=0.0, stall=False,
         timeout=120) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", "/api/score")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if stall:
            conn.send(body[: len(body) // 2])          # and never the rest
        else:
            step = -(-len(body) // chunks)
            for i in range(0, len(body), step):
                try:
                    conn.send(body[i:i + step])
                except (BrokenPipeError, ConnectionResetError):
                    break                               # refused early (413): read the answer
                if gap:
                    time.sleep(gap)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def multipart(data: bytes, name="me.jpg", ctype="image/jpeg") -> tuple[bytes, str]:
    b = "soakboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def plan(n, jpegs, rng):
    """(kind, expected status, thunk) for n requests in a shuffled mix."""
    kinds = (["valid"] * 10 + ["form"] * 4 + ["oversized"] * 2 + ["eps"] * 2 + ["slow"] * 1
             + ["stalled"] * 1)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        jpeg = jpegs[i % len(jpegs)]
        if kind == "valid":
            out.append((kind, 200, dict(body=jpeg)))
        elif kind == "form":
            body, ctype = multipart(jpeg)
            out.append((kind, 200, dict(body=body, ctype=ctype)))
        elif kind == "oversized":
            out.append((kind, 413, dict(body=b"\xff" * 25_000_000)))
        elif kind == "eps":
            body, ctype = multipart(EPS, "me.eps", "application/postscript")
            out.append((kind, 400, dict(body=EPS) if i % 2 else dict(body=body, ctype=ctype)))
        elif kind == "slow":
            out.append((kind, 200, dict(body=jpeg, chunks=8, gap=0.25)))
        else:
            out.append((kind, 408, dict(body=jpeg, stall=True)))
    rng.shuffle(out)
    return out


def timed(port, kind, expected, kw):
    t = time.perf_counter()
    try:
        status = post(port, **kw)
    except (OSError, http.client.HTTPException) as e:
        status = f"{type(e).__name__}"
    return kind, expected, status, time.perf_counter() - t


def report(name, results, pid, wall):
    lat = sorted(r[3] for r in results)
    bad = [r for r in results if r[2] != r[1]]
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]
    hwm, rss = peak_rss_mb(pid)
    by_kind = {}
    for kind, expected, status, _ in results:
        by_kind.setdefault(kind, []).append(str(status))
    print(f"{name}: {len(results)} requests in {wall:.1f} s; p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms; {len(bad)} unexpected answers; server peak RSS "
          f"{hwm:.0f} MB (now {rss:.0f} MB)")
    for kind, statuses in sorted(by_kind.items()):
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"    {kind:9s} {counts}")
    for r in bad[:5]:
        print(f"    unexpected: {r[0]} wanted {r[1]}, got {r[2]}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--big", type=int, default=16, help="concurrent 49 MP RGBA uploads (0: skip)")
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        deploy, weights = small_net(tmp)
        proc, port, marker = start_server(tmp, deploy, weights)
        try:
            idle, _ = peak_rss_mb(proc.pid)
            print(f"server pid {proc.pid} on 127.0.0.1:{port}; idle RSS {idle:.0f} MB")
            jobs = plan(args.requests, photos(), rng)
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda j: timed(port, *j), jobs))
            bad = report("mixed", results, proc.pid, time.perf_counter() - t0)

            if args.big:
                big = big_rgba_png()
                reset_peak(proc.pid)
                health, done = [], threading.Event()

                def watch():
                    while not done.is_set():
                        t = time.perf_counter()
                        try:
                            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                            c.request("GET", "/api/health")
                            ok = c.getresponse().status == 200
                            c.close()
                        except OSError:
                            ok = False
                        health.append((ok, time.perf_counter() - t))
                        done.wait(0.5)

                watcher = threading.Thread(target=watch)
                watcher.start()
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(args.big) as pool:
                    big_results = list(pool.map(
                        lambda _: timed(port, "49MP RGBA", 200,
                                        dict(body=big, ctype="image/png", timeout=600)),
                        range(args.big)))
                done.set()
                watcher.join()
                bad += report(f"{args.big} concurrent 49 MP RGBA PNGs", big_results, proc.pid,
                              time.perf_counter() - t0)
                slow = max(t for _, t in health)
                print(f"    health checks meanwhile: {sum(ok for ok, _ in health)}/{len(health)}"
                      f" answered, slowest {slow * 1000:.0f} ms")
            print(f"Ghostscript started: {'YES' if marker.exists() else 'no'}")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 1 if bad or marker.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
