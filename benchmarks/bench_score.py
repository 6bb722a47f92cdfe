"""`deepselfie score` throughput vs the runtime's raw forward, side by side in one run.

For each net (the selfie VGG16 deploy at 224 and the small 64x64 net) and each mode (exact fp32,
fast = bf16 + channels_last): score a folder of 640x480 JPEGs with the scoring module (decode,
resize, mean, batches, threads overlapping decoding with the net) and run the same number of
images through net.forward on ready inputs. Goal: score >= 0.9x raw forward.

Then the preprocessing alone (file -> net input, one thread), side by side:
  before       the old default: Pillow decode with DCT scaling, Pillow's antialiased resize to
               224, per-channel mean (not the pixels the net was trained on)
  trained      the new default (model card): full OpenCV decode, squash to the label run's 256
               with cv::resize, the LMDB's JPEG round trip (jpg records), DataTransformer
               (center crop 224, mean image at the crop offset)
  trained png  the same for a lossless (png/raw) label run: no round trip
  fast-decode  trained, with DCT-scaled JPEG decoding (--fast-decode)

    python benchmarks/bench_score.py [--images 32] [--threads 2] [--nets vgg16,small] [--pre-only]
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models.caffe as caffe  # noqa: E402
from models.selfie.score import Scorer  # noqa: E402

NETS = {"vgg16": ("selfie_vgg16_deploy.prototxt", 8), "small": ("selfie_small_deploy.prototxt", 32)}


def make_folder(folder, n):
    rs = np.random.RandomState(0)
    for i in range(n):
        arr = rs.randint(0, 256, (480, 640, 3), dtype=np.uint8)
        arr = (arr // 4 + np.linspace(0, 180, 640, dtype=np.uint8)[None, :, None]).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:03d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


def weights_for(deploy, out):
    caffe.set_random_seed(0)
    net = caffe.Net(str(deploy), caffe.TEST)
    for layer in net.layers:                   # keep activations in range: small random weights
        for b in layer.blobs:
            b.data[...] = np.random.RandomState(1).normal(0, 0.01, b.shape)
    net.save(str(out))
    return out


def bench(deploy, weights, paths, batch, fast, rounds=2):
    scorer = Scorer(deploy, weights, mean="104,117,123", batch_size=batch, device="cpu",
                    fast=fast)
    h, w = scorer.pre.height, scorer.pre.width
    ready = np.random.RandomState(0).normal(0, 50, (batch, 3, h, w)).astype(np.float32)
    scorer.score_arrays(ready)                         # warm up
    best_score = best_raw = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        results, failed = scorer.score_paths(paths, show_progress=False)
        best_score = max(best_score, len(results) / (time.perf_counter() - t))
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(0, len(paths), batch):
                scorer.net.forward(**{scorer.input: ready})
        best_raw = max(best_raw, len(paths) / (time.perf_counter() - t))
    return best_score, best_raw


def old_default(path, h=224, w=224, mean=np.array([104, 117, 123], np.float32)):
    """What `deepselfie score` did before the model card: Pillow, DCT-scaled, antialiased."""
    with Image.open(path) as im:
        im.draft("RGB", (max(h, w), max(h, w)))
        im = im.convert("RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, np.float32)[:, :, ::-1] - mean
    return arr.transpose(2, 0, 1)[None]


def bench_preprocessing(paths, tmp, rounds=3):
    from models.caffe import protoio
    from models.selfie.preprocess import AsTrained
    from models.selfie.score import load_bgr
    mean = tmp / "mean.binaryproto"
    protoio.write_binary(mean, protoio.array_to_blobproto(
        np.full((1, 3, 256, 256), 110, np.float32)))
    card = {"image_size": [256, 256], "resize_mode": "squash", "encoding": "jpg",
            "transform": {"scale": 1.0, "crop_size": 224, "mean_file": str(mean)}}
    trained, trained_png = AsTrained(card), AsTrained({**card, "encoding": "png"})
    ways = {"before": old_default,
            "trained": lambda p: trained(load_bgr(p)),
            "trained png": lambda p: trained_png(load_bgr(p)),
            "fast-decode": lambda p: trained(load_bgr(p, min_side=256))}
    best = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            t = time.perf_counter()
            for p in paths:
                fn(p)
            best[name] = max(best.get(name, 0.0), len(paths) / (time.perf_counter() - t))
    print(f"preprocessing only, one thread, {len(paths)} JPEGs 640x480 -> 3x224x224 "
          f"(load average {os.getloadavg()[0]:.2f})")
    for name in ways:
        print(f"  {name:12} {best[name]:8.1f} img/s   x{best[name] / best['before']:.2f} vs before")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="vgg16,small")
    ap.add_argument("--pre-only", action="store_true", help="only the preprocessing table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "imgs").mkdir()
        paths = make_folder(tmp / "imgs", args.images)
        bench_preprocessing(paths, tmp)
        if args.pre_only:
            return
        print(f"{args.images} JPEGs 640x480, torch threads {args.threads}, CPU")
        print(f"{'net':8} {'mode':5} {'score img/s':>12} {'raw fwd img/s':>14} {'ratio':>6}")
        for name in args.nets.split(","):
            proto, batch = NETS[name]
            deploy = ROOT / "prototxt" / proto
            weights = weights_for(deploy, tmp / f"{name}.caffemodel")
            for fast in (False, True):
                s, r = bench(deploy, weights, paths, batch, fast)
                print(f"{name:8} {'fast' if fast else 'fp32':5} {s:12.2f} {r:14.2f} {s / r:6.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
