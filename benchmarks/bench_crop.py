"""Crop search speed: candidates scored per second by search_crop, beside the same net's raw
forward images per second at the same batch size (one run, side by side).

    python benchmarks/bench_crop.py                 # the small 64x64 selfie net
    python benchmarks/bench_crop.py --net vgg16     # VGG16 at 224 (slow on a CPU)

Two ratios: search over the same forwards replayed on ready-made inputs (what cutting, resizing
and normalizing the crops cost), and search over full-batch forwards (that, plus the smaller
batches of the refinement rounds and the rescore). Weights are the nets' fillers (speed does not
depend on them); photos are scikit-image's.
"""
import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import models.caffe as caffe  # noqa: E402
from models.selfie.crop import CropSearch, search_crop  # noqa: E402
from models.selfie.score import Scorer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NETS = {"small": ROOT / "prototxt" / "selfie_small_deploy.prototxt",
        "vgg16": ROOT / "prototxt" / "selfie_vgg16_deploy.prototxt"}


def photos():
    from skimage import data
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(data, name)()
        out.append(np.ascontiguousarray(rgb[..., :3][:, :, ::-1]))
    return out


def bench(name, repeats, device, fast):
    deploy = NETS[name]
    with tempfile.TemporaryDirectory() as tmp:
        caffe.set_random_seed(0)
        weights = pathlib.Path(tmp) / "w.caffemodel"
        caffe.Net(str(deploy), caffe.TEST).save(str(weights))
        scorer = Scorer(deploy, weights, mean="104,117,123", device=device, fast=fast)
    search = CropSearch()
    images = photos()
    search_crop(scorer, images[0], search)                       # warm up
    sizes = []                                                   # every forward's batch size
    forward = scorer.net.forward

    def recording_forward(*a, **kw):
        sizes.append(len(next(iter(kw.values()))))
        return forward(*a, **kw)

    scorer.net.forward = recording_forward
    cands = 0
    t = time.perf_counter()
    for _ in range(repeats):
        for img in images:
            r = search_crop(scorer, img, search)
            cands += r.candidates + search.rescore + 1           # + the rescore and the original
    t_search = time.perf_counter() - t
    scorer.net.forward = forward
    h, w = scorer.pre.height, scorer.pre.width
    rs = np.random.RandomState(0)
    # the same forwards again on ready-made inputs: what the search costs beyond them
    ready = [rs.normal(0, 50, (n, 3, h, w)).astype(np.float32) for n in sizes]
    t = time.perf_counter()
    for batch in ready:
        scorer.score_arrays(batch)
    t_same = time.perf_counter() - t
    # full batches: the net's best throughput
    batch = rs.normal(0, 50, (search.batch_size, 3, h, w)).astype(np.float32)
    scorer.score_arrays(batch)                                   # warm up
    n_fwd = max(3, len(sizes) // 2)
    t = time.perf_counter()
    for _ in range(n_fwd):
        scorer.score_arrays(batch)
    raw = n_fwd * len(batch) / (time.perf_counter() - t)
    got = cands / t_search
    same = sum(sizes) / t_same
    print(f"{name:6s} {h}x{w} on {scorer.net.device}{' fast' if fast else ''}: "
          f"crop search {got:7.1f} candidates/s ({cands / (repeats * len(images)):.0f} "
          f"candidates in {len(sizes) / (repeats * len(images)):.0f} forwards, "
          f"{t_search / (repeats * len(images)):.2f} s per photo)\n"
          f"       the same forwards on ready inputs {same:7.1f} img/s -> search/forwards "
          f"{got / same:.2f}\n"
          f"       raw forward at batch {len(batch)}     {raw:7.1f} img/s -> search/raw "
          f"{got / raw:.2f}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=["small", "vgg16", "both"], default="small")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the 4 photos")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    for name in (["small", "vgg16"] if args.net == "both" else [args.net]):
        bench(name, args.repeats if name == "small" else 1, args.device, args.fast)


if __name__ == "__main__":
    main()
