"""Scrape throughput against the loopback Mastodon-API server: posts/s and images/s with 1 and 8
concurrent downloads, and the scraper's CPU seconds per 1000 images.

The server runs in a child process (so the CPU time measured here is the scraper's alone) and
serves N posts with one real photo each (scikit-image's sample images, cropped and re-encoded as
JPEG). Each configuration starts from an empty data dir. Two network conditions: loopback as is,
and with a per-request latency (closer to a real server, where concurrency pays).

    python benchmarks/bench_scrape.py [--posts 600] [--latency 0.02] [--size 480x360]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the loopback Mastodon server (tests/mastodon_server.py)


def _photo(i: int, size) -> bytes:
    import numpy as np
    import skimage.data
    from PIL import Image
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel"]
    arr = getattr(skimage.data, names[i % len(names)])()[..., :3]
    img = Image.fromarray(np.ascontiguousarray(arr))
    w, h = img.size
    x, y = (i * 7) % (w // 4), (i * 11) % (h // 4)
    buf = io.BytesIO()
    img.crop((x, y, x + w * 3 // 4, y + h * 3 // 4)).resize(size).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _serve(n_posts, latency, size, ready, stop):
    import mastodon_server as ts
    srv = ts.MastodonAPIServer(latency=latency).start()
    for i in range(n_posts):
        acc = ts.account(srv.url, f"user{i % 50}", followers=100 + i, account_id=str(i % 50))
        url = srv.add_file(f"/media/{i}.jpg", _photo(i, size))
        srv.add_status(ts.status(srv.url, str(10_000 + i), acc, likes=i % 97, tags=["selfie"],
                                 created_at="2026-01-01T00:00:00.000Z",
                                 media=[ts.attachment(url, width=size[0], height=size[1])]))
    ready.put(srv.url)
    stop.wait()
    srv.stop()


def run_once(url: str, concurrency: int) -> dict:
    from deepselfie.config import load_config
    from scrape.counters import IMAGES_KEPT, POSTS_NEW
    from scrape.stage import run_scrape
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(None, data_dir=d, overrides=["scrape.min_side=64",
                                                            "scrape.page_interval=0"])
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = run_scrape(cfg, servers=[url], tags=["selfie"], concurrency=concurrency)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    posts, images = result.get(POSTS_NEW, 0), result.get(IMAGES_KEPT, 0)
    return dict(wall=wall, cpu=cpu, posts=posts, images=images, posts_s=posts / wall,
                images_s=images / wall, cpu_per_1000=1000 * cpu / max(images, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=600)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    ap.add_argument("--size", default="480x360", help="photo size, WxH")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    import contextlib
    from deepselfie.console import summary
    print(f"bench_scrape: {args.posts} posts, one {args.size} JPEG each, pages of 40; "
          f"{mp.cpu_count()} CPUs")
    rows = []
    for latency in (0.0, args.latency):
        ready, stop = mp.Queue(), mp.Event()
        server = mp.Process(target=_serve, args=(args.posts, latency, size, ready, stop),
                            daemon=True)
        server.start()
        url = ready.get(timeout=300)
        try:
            for concurrency in (1, 8):
                with contextlib.redirect_stdout(io.StringIO()):   # the stage's summary line
                    r = run_once(url, concurrency)
                rows.append((latency, concurrency, r))
                print(f"  latency {latency * 1000:4.0f} ms  concurrency {concurrency}:  "
                      f"{r['posts_s']:7.1f} posts/s  {r['images_s']:7.1f} images/s  "
                      f"{r['cpu_per_1000']:5.2f} CPU s / 1000 images  "
                      f"({r['images']} images in {r['wall']:.2f} s)", flush=True)
        finally:
            stop.set()
            server.join(10)
    for latency in (0.0, args.latency):
        one = next(r for lat, c, r in rows if lat == latency and c == 1)
        eight = next(r for lat, c, r in rows if lat == latency and c == 8)
        print(f"  latency {latency * 1000:4.0f} ms: 8 vs 1 concurrent downloads = "
              f"{eight['images_s'] / one['images_s']:.2f}x images/s")
    summary("bench_scrape", "done")


if __name__ == "__main__":
    main()
