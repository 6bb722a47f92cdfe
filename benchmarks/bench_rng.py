"""Filling VGG16's parameter shapes (138M weights) with Caffe's own random numbers (after
``caffe.set_random_seed``: boost mt19937 + boost's ziggurat gaussian / uniform_real, as real
Caffe draws them) against torch's generator (what unseeded runs use), printed side by side.

    python benchmarks/bench_rng.py [--filler gaussian|xavier] [--fraction 1.0]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.caffe import filler, rng  # noqa: E402
from models.caffe.proto import caffe_pb2  # noqa: E402

# VGG16's learnable blobs (weights; the biases are constant-filled), as its prototxt makes them
VGG16 = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3),
         (256, 256, 3, 3), (256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3),
         (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
         (4096, 25088), (4096, 4096), (1000, 4096)]


def fill_all(shapes, param) -> float:
    start = time.perf_counter()
    for shape in shapes:
        filler.fill(shape, param)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filler", default="gaussian", choices=["gaussian", "xavier"])
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="scale each blob's first axis (1.0 = the real VGG16)")
    args = ap.parse_args()
    shapes = [(max(1, int(s[0] * args.fraction)),) + s[1:] for s in VGG16]
    count = sum(int(__import__("math").prod(s)) for s in shapes)
    param = caffe_pb2.FillerParameter(type=args.filler, std=0.01)
    rng._seeded = False
    torch_s = fill_all(shapes, param)
    rng.seed(1)
    caffe_s = fill_all(shapes, param)
    print(f"{args.filler} over {count / 1e6:.1f}M weights: Caffe's RNG {caffe_s:.2f} s "
          f"({count / caffe_s / 1e6:.1f}M/s), torch's {torch_s:.2f} s; "
          f"ratio {caffe_s / torch_s:.1f}x")


if __name__ == "__main__":
    main()
