"""Data layer throughput: images per second out of an encoded LMDB of 256x256 JPEGs (TRAIN,
crop 224, mirror, per-channel mean), with 1 decode worker (the layer's prefetch thread) and 2
(that thread and a worker process), side by side with a plain PIL decode loop over the same JPEG
bytes, in one run: img/s, 2 workers / 1, CPU ms per image (the layer's process and its workers)
and img/s per core (images per CPU second), from which the workers a GPU needs can be read off.
Then how long the trainer waits per batch when its own step (simulated: the CPU is idle, as
while a GPU computes) takes longer than decoding. The load average is printed before and after.

    python benchmarks/bench_data.py [--images 256] [--batch 32] [--batches 150] [--rounds 5]
                                    [--torch-threads 1] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import models.caffe as caffe  # noqa: E402
from models.caffe import db, prefetch  # noqa: E402
from models.caffe.proto import caffe_pb2  # noqa: E402


def make_jpegs(n: int, size: int = 256, quality: int = 90) -> list[bytes]:
    """n JPEGs of real photographs (scikit-image's data), random crops resized to size x size."""
    from skimage import data
    photos = [getattr(data, name)() for name in
              ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat")]
    rs = np.random.RandomState(0)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = rs.randint(min(h, w) // 2, min(h, w) + 1)
        y, x = rs.randint(0, h - side + 1), rs.randint(0, w - side + 1)
        im = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def pil_decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def pil_loop(jpegs: list[bytes], count: int, threads: int = 1) -> tuple[float, float]:
    """(img/s, CPU ms per image) of the plain loop bytes -> PIL decode -> RGB numpy array, on
    one thread or split over ``threads`` (what the machine allows at the moment)."""
    def loop(k):
        for i in range(k, count, threads):
            arr = pil_decode(jpegs[i % len(jpegs)])
        assert arr.shape == (256, 256, 3)
    c, t = time.process_time(), time.perf_counter()
    if threads == 1:
        loop(0)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(loop, range(threads)))
    return count / (time.perf_counter() - t), 1e3 * (time.process_time() - c) / count


def net_file(folder: pathlib.Path, source: pathlib.Path, batch: int) -> pathlib.Path:
    path = folder / "bench.prototxt"
    path.write_text(f"""name: "bench"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 224 mirror: true
    mean_value: 104 mean_value: 117 mean_value: 123 }}
  data_param {{ source: "{source}" backend: LMDB batch_size: {batch} prefetch: 4 }} }}
""")
    return path


def layer_rate(prototxt, workers: int, batches: int, step_s: float = 0.0):
    """(img/s, CPU ms per image in all processes, CPU ms per row a worker process made, ms per
    batch forward() waited for a batch) in steady state. The net is built, its queue left to
    fill and then emptied (with ``step_s``, the trainer's step, a few steps more), ``batches``
    are timed, and its threads and workers are stopped before returning, so nothing runs
    behind another measurement. The workers' CPU time is what they report per batch made, over
    the rows they made in the same time."""
    prefetch.set_decode_workers(workers)
    caffe.set_random_seed(0)
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    layer = net.layers[0]
    prefetcher, pool = layer._prefetcher, layer.decode_pool
    while prefetcher._ready.qsize() < layer.param.data_param.prefetch:
        time.sleep(0.01)
    while prefetcher._ready.qsize():
        net.forward()
    for _ in range(5 if step_s else 0):     # with a slower trainer: reach its steady state
        net.forward()
        time.sleep(step_s)
    waited = 0.0
    take = prefetcher.next

    def timed_next():
        nonlocal waited
        t0 = time.perf_counter()
        try:
            return take()
        finally:
            waited += time.perf_counter() - t0
    prefetcher.next = timed_next
    rows0, wcpu0 = pool.worker_cpu()
    c, t = time.process_time(), time.perf_counter()
    for _ in range(batches):
        net.forward()
        if step_s:
            time.sleep(step_s)              # the trainer's step, CPU idle (a GPU computing)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    rows1, wcpu1 = pool.worker_cpu()
    n = net.blobs["data"].data.shape[0] * batches
    prefetcher.close()
    prefetcher._thread.join()
    pool.close()
    worker_ms = 1e3 * (wcpu1 - wcpu0) / (rows1 - rows0) if rows1 > rows0 else 0.0
    return n / elapsed, 1e3 * (cpu + wcpu1 - wcpu0) / n, worker_ms, 1e3 * waited / batches


def loadavg() -> str:
    try:
        return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="JPEGs in the LMDB")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=150,
                    help="batches timed per round (under a second with 2 workers; shorter "
                         "rounds measure the shared machine's hiccups more than the layer)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of side-by-side timing; the best round of each counts")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's CPU threads (1: as when a GPU computes; more, and OpenMP "
                         "workers spinning after each batch copy take CPU from the decoders)")
    ap.add_argument("--workers", default="1,2",
                    help="decode worker counts to compare, the first one is the base (on a "
                         "machine with more cores: 1,2,4,8)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    import torch
    torch.set_num_threads(args.torch_threads)

    jpegs = make_jpegs(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        db.write_lmdb(tmp / "db", ((f"{i:08d}".encode(), caffe_pb2.Datum(
            encoded=True, data=b, label=i % 2).SerializeToString()) for i, b in enumerate(jpegs)))
        prototxt = net_file(tmp, tmp / "db", args.batch)
        count = args.batch * args.batches
        pil_loop(jpegs, 64)                                  # warm up
        load_before = loadavg()
        best = {"pil": (0, 0), "pil2": (0, 0), **{w: (0, 0, 0) for w in counts}}
        per_round = []                                       # each round's most / first
        for _ in range(args.rounds):                         # interleaved: load hits all alike
            runs = {"pil": pil_loop(jpegs, count), "pil2": pil_loop(jpegs, count, threads=2)}
            for workers in counts:
                runs[workers] = layer_rate(prototxt, workers, args.batches)[:3]
            best = {k: max(best[k], runs[k]) for k in best}
            per_round.append(runs[max(counts)][0] / runs[counts[0]][0])
        (base, base_cpu), (base2, base2_cpu) = best["pil"], best["pil2"]
        print(f"encoded LMDB of {args.images} JPEGs 256x256; Data layer TRAIN, crop 224, mirror, "
              f"mean_value, batch {args.batch}; best of {args.rounds} interleaved rounds of "
              f"{count} images; torch threads {args.torch_threads}; load average {load_before} "
              f"before, {loadavg()} after ({os.cpu_count()} cores)")
        print(f"  plain PIL decode loop   {base:7.1f} img/s             {base_cpu:5.2f} CPU ms/img")
        print(f"  plain PIL, 2 threads    {base2:7.1f} img/s  {base2 / base:5.2f}x 1 thread  "
              f"{base2_cpu:5.2f} CPU ms/img   (what 2 threads get on this machine now)")
        print(f"  Data layer     img/s   x {counts[0]} worker  CPU ms/img (all processes)  "
              "img/s per core")
        one = best[counts[0]][0]
        for workers in counts:
            rate, cpu_ms, _ = best[workers]
            print(f"  {workers} worker{'s' if workers > 1 else ' '}   {rate:7.1f}   "
                  f"{rate / one:6.2f}x     {cpu_ms:5.2f}                        "
                  f"{1e3 / cpu_ms:7.1f}")
        most = max(counts)
        if len(counts) > 1:
            print(f"  {most} / {counts[0]} round by round: "
                  + ", ".join(f"{r:.2f}x" for r in per_round)
                  + f" (median {float(np.median(per_round)):.2f}x)")
        pools = [best[w] for w in counts if w > 1]
        if pools:                       # the least contended figures: what a core does
            worker_ms = min(r[2] for r in pools)
            print(f"  -> a worker process makes {1e3 / worker_ms:.0f} img/s per core; a GPU "
                  f"that takes R img/s needs about R / {1e3 / worker_ms:.0f} workers "
                  "(set_decode_workers; the layer's own thread is one of them)")
        # the trainer's view: a step 1.5x as long as making a batch with the most workers
        step = 1.5 * args.batch / best[most][0]
        wait = layer_rate(prototxt, most, args.batches, step_s=step)[3]
        print(f"  trainer step of {1e3 * step:.1f} ms per batch (CPU idle, as while a GPU "
              f"computes): forward() waited {wait:.2f} ms per batch for data")


if __name__ == "__main__":
    main()
