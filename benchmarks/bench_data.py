"""Data layer throughput: images per second out of an encoded LMDB of 256x256 JPEGs (TRAIN,
crop 224, mirror, per-channel mean), with 1 and 2 decode workers, side by side with a plain PIL
decode loop over the same JPEG bytes, in one run. Then how long the trainer waits per batch when
its own step (simulated: the CPU is idle, as while a GPU computes) takes longer than decoding.

    python benchmarks/bench_data.py [--images 256] [--batch 32] [--batches 10] [--rounds 5]
                                    [--torch-threads 1]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
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
    """(img/s, CPU ms per image, ms per batch forward() waited for a batch) in steady state.
    The net is built, its queue left to fill and then emptied (with ``step_s``, the trainer's
    step, a few steps more), ``batches`` are timed, and its threads are stopped before
    returning, so nothing runs behind another measurement."""
    prefetch.set_decode_workers(workers)
    caffe.set_random_seed(0)
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    prefetcher = net.layers[0]._prefetcher
    while prefetcher._ready.qsize() < net.layers[0].param.data_param.prefetch:
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
    c, t = time.process_time(), time.perf_counter()
    for _ in range(batches):
        net.forward()
        if step_s:
            time.sleep(step_s)              # the trainer's step, CPU idle (a GPU computing)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    n = net.blobs["data"].data.shape[0] * batches
    prefetcher.close()
    prefetcher._thread.join()
    return n / elapsed, 1e3 * cpu / n, 1e3 * waited / batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="JPEGs in the LMDB")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=10, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of side-by-side timing; the best round of each counts")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's CPU threads (1: as when a GPU computes; more, and OpenMP "
                         "workers spinning after each batch copy take CPU from the decoders)")
    args = ap.parse_args()
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
        best = {"pil": (0, 0), "pil2": (0, 0), 1: (0, 0), 2: (0, 0)}
        for _ in range(args.rounds):                         # interleaved: load hits all alike
            runs = {"pil": pil_loop(jpegs, count), "pil2": pil_loop(jpegs, count, threads=2)}
            for workers in (1, 2):
                runs[workers] = layer_rate(prototxt, workers, args.batches)[:2]
            best = {k: max(best[k], runs[k]) for k in best}
        (base, base_cpu), (one, one_cpu), (two, two_cpu) = best["pil"], best[1], best[2]
        base2, base2_cpu = best["pil2"]
        print(f"encoded LMDB of {args.images} JPEGs 256x256; Data layer TRAIN, crop 224, mirror, "
              f"mean_value, batch {args.batch}; best of {args.rounds} interleaved rounds of "
              f"{count} images; torch threads {args.torch_threads}")
        print(f"  plain PIL decode loop   {base:7.1f} img/s            "
              f"{base_cpu:5.2f} CPU ms/img")
        print(f"  plain PIL, 2 threads    {base2:7.1f} img/s  {base2 / base:5.2f}x PIL   "
              f"{base2_cpu:5.2f} CPU ms/img   (what 2 threads get on this machine now)")
        print(f"  Data layer, 1 worker    {one:7.1f} img/s  {one / base:5.2f}x PIL   "
              f"{one_cpu:5.2f} CPU ms/img")
        print(f"  Data layer, 2 workers   {two:7.1f} img/s  {two / base:5.2f}x PIL   "
              f"{two_cpu:5.2f} CPU ms/img   {two / one:5.2f}x 1 worker, "
              f"{two / base2:5.2f}x PIL on 2 threads")
        # the trainer's view: a step 1.5x as long as making a batch with 2 workers
        step = 1.5 * args.batch / two
        _, _, wait = layer_rate(prototxt, 2, args.batches, step_s=step)
        print(f"  trainer step of {1e3 * step:.1f} ms per batch (CPU idle, as while a GPU "
              f"computes): forward() waited {wait:.2f} ms per batch for data")


if __name__ == "__main__":
    main()
