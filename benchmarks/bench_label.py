"""LMDB build speed: 640x480 JPEGs -> 256x256 JPEG-encoded Datum records (squash).

Measured side by side in one run on the same files:
  label x1          label.lmdb_writer.build_lmdb with 1 worker (OpenCV decode, resize, encode)
  label x2          the same with 2 workers (threads: OpenCV releases the GIL)
  convert_imageset  Caffe's own tool, ``--resize_height/width 256 --encoded --encode_type jpg``,
                    when it is on PATH (the column is skipped otherwise)
Prints images per second, x2 / x1, and each against convert_imageset; with the machine's load
average, since a shared machine makes the figures noisy. Not a test: run it by hand,

    python benchmarks/bench_label.py [--images 400] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import pathlib
import shutil
import subprocess
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


def convert_imageset(tool, folder: pathlib.Path, paths, out: pathlib.Path, size=256):
    listing = folder.parent / "list.txt"
    listing.write_text("".join(f"{p.name} {i % 2}\n" for i, p in enumerate(paths)))
    subprocess.run([tool, f"--resize_height={size}", f"--resize_width={size}", "--encoded",
                    "--encode_type=jpg", "--backend=lmdb", f"{folder}/", str(listing), str(out)],
                   check=True, capture_output=True)


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
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per contender")
    args = ap.parse_args(argv)
    tool = shutil.which("convert_imageset")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "img").mkdir()
        paths = make_photos(tmp / "img", args.images)
        contenders = [("label x1", lambda out: ours(paths, out, 1)),
                      ("label x2", lambda out: ours(paths, out, 2))]
        if tool:
            contenders.append(("convert_imageset",
                               lambda out: convert_imageset(tool, tmp / "img", paths, out)))
        load_before = os.getloadavg()
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
        rate = {name: args.images / best[name] for name, _ in contenders}
        print(f"{args.images} JPEGs 640x480 -> 256x256 JPEG Datum LMDB, best of {args.repeat} "
              f"(wall clock; CPU time of all processes per image beside it); "
              f"{len(os.sched_getaffinity(0))} CPUs, load average "
              f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
        for name, _ in contenders:
            print(f"  {name:16s} {rate[name]:7.1f} img/s   "
                  f"{cpu[name] / args.images * 1000:5.2f} CPU ms/img")
        print(f"  label x2 / label x1: x{rate['label x2'] / rate['label x1']:.2f}")
        if tool:
            for name in ("label x1", "label x2"):
                print(f"  {name} / convert_imageset: x{rate[name] / rate['convert_imageset']:.2f}")
        else:
            print("  convert_imageset: not on PATH, column skipped")


if __name__ == "__main__":
    main()
