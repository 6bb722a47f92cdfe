"""Face detection speed: images/s on 640x480 photos, fp32 vs fast mode (bf16 + channels-last),
and batched vs one image at a time, measured side by side in one run (rounds interleaved, so a
busy machine slows every mode alike).

    python benchmarks/bench_faces.py [--device cpu] [--rounds 3] [--threads N]

The photos are the real ones shipped with scikit-image, matplotlib and scikit-learn, cropped to
4:3 and resized to 640x480. Weights come from <models-dir>/faces (converted on first use, from
.whl/ when the wheel is there, else downloaded with pip).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ["astronaut", "grace_hopper", "coffee", "chelsea", "china", "flower", "rocket",
          "motorcycle"]


def load_photo(name: str) -> np.ndarray:
    from PIL import Image
    if name == "grace_hopper":
        import matplotlib.cbook
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            im = Image.open(f).convert("RGB")
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        im = Image.fromarray(load_sample_image(f"{name}.jpg"))
    else:
        import skimage.data
        a = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else \
            getattr(skimage.data, name)()
        im = Image.fromarray(a).convert("RGB")
    w, h = im.size                      # crop the middle 4:3, then 640x480
    if w * 3 > h * 4:
        cw = h * 4 // 3
        im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    else:
        ch = w * 3 // 4
        im = im.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    return np.asarray(im.resize((640, 480), Image.BILINEAR))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="the photo set this many times a round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    ap.add_argument("--compiled", action="store_true",
                    help="also fp32 and fast with runtime.compile: on (a fresh inductor cache "
                    "folder: the warm-up round's extra time is the cold compile)")
    args = ap.parse_args(argv)

    import torch

    from deepselfie.config import SCHEMA
    from models.faces.convert import WHEEL, ensure_weights
    from models.faces.detect import FaceDetector
    if args.threads:
        torch.set_num_threads(args.threads)
    local = ROOT / ".whl" / WHEEL
    folder = ensure_weights(args.models_dir, wheel=local if local.is_file() else None)
    f = {k: key.default for k, key in SCHEMA["faces"].items()}
    settings = dict(min_face_size=f["min_face_size"], scale_factor=f["scale_factor"],
                    thresholds=tuple(f["thresholds"]), max_side=f["max_side"],
                    device=args.device)
    images = [load_photo(n) for n in PHOTOS] * args.repeat
    modes = {
        f"fp32, batch {args.batch}": (FaceDetector(folder, fast=False, **settings), args.batch),
        "fp32, batch 1": (FaceDetector(folder, fast=False, **settings), 1),
        f"fast, batch {args.batch}": (FaceDetector(folder, fast=True, **settings), args.batch),
    }
    if args.compiled:
        import tempfile
        cache = tempfile.mkdtemp(prefix="bench-faces-inductor-")
        for fast in (False, True):
            modes[f"{'fast' if fast else 'fp32'} compiled, batch {args.batch}"] = (
                FaceDetector(folder, fast=fast, compile="on", compile_cache=cache, **settings),
                args.batch)

    def run(det, batch):
        n_faces = 0
        for i in range(0, len(images), batch):
            n_faces += sum(len(x) for x in det.detect(images[i:i + batch]))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return n_faces

    warm = {}
    for m, (det, batch) in modes.items():      # warm up (and compile)
        t = time.perf_counter()
        run(det, batch)
        warm[m] = time.perf_counter() - t
    best = {m: float("inf") for m in modes}
    faces = {}
    for _ in range(args.rounds):
        for m, (det, batch) in modes.items():
            t = time.perf_counter()
            faces[m] = run(det, batch)
            best[m] = min(best[m], time.perf_counter() - t)
    base = f"fp32, batch {args.batch}"
    print(f"face detection, {len(images)} photos of 640x480 ({len(PHOTOS)} distinct), "
          f"device {args.device}, torch threads {torch.get_num_threads()}, "
          f"best of {args.rounds} rounds")
    for m in modes:
        rate = len(images) / best[m]
        extra = f", first round {warm[m]:.1f} s (compiles)" if "compiled" in m else ""
        print(f"  {m:<16} {rate:7.2f} images/s   x{best[base] / best[m]:.2f} vs {base}   "
              f"({faces[m]} faces{extra})")


if __name__ == "__main__":
    main()
