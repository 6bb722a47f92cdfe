"""LMDB build speed: 640x480 JPEGs -> 256x256 JPEG-encoded Datum records.

Measured side by side in one run on the same files:
  pil-loop   the naive single-process loop: PIL open, resize (PIL bilinear), encode, put
  label x1   label.lmdb_writer.build_lmdb with 1 process (OpenCV-exact resize, batched commits)
  label x2   the same with 2 processes
Prints images per second and the ratios to the PIL loop. Not a test: run it by hand,

    python benchmarks/bench_label.py [--images 500] [--repeat 2]
"""
from __future__ import annotations

import argparse
import io
import resource
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Everything else is imported inside the functions: worker processes are spawned and re-import
# this file, and a real run's workers do not pay for the benchmark's imports.


def make_photos(folder: pathlib.Path, n: int) -> list[pathlib.Path]:
    """n distinct 640x480 JPEGs cut from scikit-image's sample photographs."""
    import numpy as np
    from PIL import Image
    from skimage import data
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.cat()]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        box = (int(rng.integers(0, w // 8)), int(rng.integers(0, h // 8)),
               w - int(rng.integers(0, w // 8)), h - int(rng.integers(0, h // 8)))
        img = src.crop(box).resize((640, 480), Image.BICUBIC)
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        p = folder / f"{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def pil_loop(paths, out: pathlib.Path, size=256, commit_every=1000):
    import lmdb
    from PIL import Image

    from label.lmdb_writer import record_key
    from models.caffe.proto import caffe_pb2
    env = lmdb.open(str(out), map_size=1 << 30)
    txn = env.begin(write=True)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            small = im.convert("RGB").resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=95)
        datum = caffe_pb2.Datum(data=buf.getvalue(), label=i % 2, encoded=True)
        txn.put(record_key(i, p.name).encode(), datum.SerializeToString())
        if (i + 1) % commit_every == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.close()


def ours(paths, out: pathlib.Path, processes: int, size=256):
    from label.image import EncodeSettings
    from label.lmdb_writer import Record, build_lmdb, publish, record_key
    records = [Record(record_key(i, p.name), str(p), i % 2, p.name) for i, p in enumerate(paths)]
    build_lmdb(out, records, EncodeSettings(size, size, "squash", "jpg"), plan="bench",
               processes=processes)
    publish(out)


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs per contender")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "img").mkdir()
        paths = make_photos(tmp / "img", args.images)
        contenders = [("pil-loop", lambda out: pil_loop(paths, out)),
                      ("label x1", lambda out: ours(paths, out, 1)),
                      ("label x2", lambda out: ours(paths, out, 2))]
        best, cpu = {}, {}
        for _ in range(args.repeat):          # interleaved, so drift hits all alike
            for name, fn in contenders:
                out = tmp / "db"
                shutil.rmtree(out, ignore_errors=True)
                c, t = _cpu_seconds(), time.perf_counter()
                fn(out)
                wall, used = time.perf_counter() - t, _cpu_seconds() - c
                best[name] = min(best.get(name, 1e9), wall)
                cpu[name] = min(cpu.get(name, 1e9), used)
        base = args.images / best["pil-loop"]
        print(f"{args.images} JPEGs 640x480 -> 256x256 JPEG Datum LMDB, best of {args.repeat} "
              f"(wall clock; CPU time of all processes per image beside it)")
        for name, _ in contenders:
            rate = args.images / best[name]
            print(f"  {name:9s} {rate:7.1f} img/s   x{rate / base:.2f} vs pil-loop   "
                  f"{cpu[name] / args.images * 1000:5.2f} CPU ms/img")


if __name__ == "__main__":
    main()
