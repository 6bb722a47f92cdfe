"""``deepselfie demo``: the whole pipeline on an embedded synthetic corpus (deepselfie.demo)."""
from __future__ import annotations

import pathlib

from . import TORCH_ENGINE


def register(subparsers, common):
    p = subparsers.add_parser(
        "demo", parents=[common], help="the whole pipeline on an embedded synthetic corpus",
        description="Scrape a synthetic #selfie corpus from an embedded Mastodon-API server on "
                    "127.0.0.1, filter faces, label, train the small net on the CPU, score a "
                    "held-out folder and write a report. Default data dir: data/demo.")
    p.add_argument("--quick", action="store_true", help="a small corpus and few iterations")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.set_defaults(func=_run, nets=TORCH_ENGINE)   # the demo's nets run on the torch engine


def _run(args, cfg):
    if args.data_dir is None:
        cfg["paths"]["data_dir"] = str(pathlib.Path(cfg["paths"]["data_dir"]) / "demo")
    from deepselfie.demo.run import run_demo
    run_demo(cfg, quick=args.quick, seed=args.seed)
    return 0
