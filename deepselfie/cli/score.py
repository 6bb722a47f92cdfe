"""CLI for scoring and weights: ``deepselfie score`` and ``deepselfie fetch-weights``."""
from __future__ import annotations

import pathlib
import sys


def register(sub, common):
    p = sub.add_parser("score", parents=[common], help="rank a folder of images, best first",
                       description="Score every image under DIR with a trained deploy net "
                                   "(probability of 'good'), best first.")
    p.add_argument("dir", metavar="DIR", help="a folder (searched recursively) or one image")
    add_model_options(p)
    p.add_argument("--out", metavar="FILE", help="write scores here (CSV, or JSON with --json)")
    p.add_argument("--json", action="store_true", help="JSON instead of CSV")
    p.add_argument("--grid", metavar="IMG", help="contact sheet of the best --top images")
    p.add_argument("--top", type=int, help="how many on the grid (score.top)")
    p.add_argument("--worst", type=int, metavar="N", help="also a sheet of the worst N")
    p.add_argument("--worst-grid", metavar="IMG", help="where the worst sheet goes "
                   "(default: worst.jpg beside the grid or the scores)")
    p.add_argument("--continuum", metavar="IMG", help="every image best to worst, row by row")
    p.add_argument("--report", metavar="DIR", help="an HTML report with all of it")
    p.set_defaults(func=run_score)

    f = sub.add_parser("fetch-weights", parents=[common],
                       help="download published weights (VGG16) into the models directory",
                       description="Download a published model's weights with resume and "
                                   "checksum verification, or install a local copy.")
    f.add_argument("name", choices=["vgg16"], help="which model")
    f.add_argument("--url", help="download the weights from this URL instead")
    f.add_argument("--path", help="use this local file instead of downloading")
    f.add_argument("--sha1", help="expected SHA-1 of the weights (default: the published one)")
    f.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    f.add_argument("--retries", type=int, default=5, help="retries on a broken connection")
    f.set_defaults(func=run_fetch)


def add_model_options(p):
    """The options that pick the scoring net and its preprocessing (every stage that scores)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", "-model", metavar="DEPLOY", help="deploy prototxt (score.model)")
    g.add_argument("--weights", "-weights", metavar="W", help=".caffemodel (score.weights)")
    g.add_argument("--mean", help="mean.binaryproto, mean JSON or B,G,R (score.mean)")
    g.add_argument("--resize", choices=("squash", "crop", "oversample"),
                   help="how images become net input (score.resize)")
    g.add_argument("--scale", type=float, help="input scale after the mean, as the training "
                   "net's transform_param (score.scale)")
    g.add_argument("--batch-size", type=int, help="images per forward pass (score.batch_size)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (runtime.device)")
    g.add_argument("--fast", action="store_true", help="bf16 + channels_last (runtime.fast)")


def make_scorer(args, cfg):
    """The Scorer that the options of add_model_options and the config's score section ask
    for."""
    import torch

    from deepselfie.errors import UserError
    from models.selfie.score import Scorer

    sc = cfg.score
    weights = args.weights or sc.weights
    if not weights:
        raise UserError("no weights: pass --weights (a .caffemodel from deepselfie train)",
                        path="--weights")
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    return Scorer(args.model or sc.model, weights, mean=args.mean or sc.mean,
                  resize=args.resize or sc.resize,
                  scale=args.scale if args.scale is not None else sc.scale,
                  batch_size=args.batch_size or sc.batch_size,
                  device=args.device or cfg.runtime.device,
                  fast=args.fast or cfg.runtime.fast, good_class=sc.good_class,
                  compile=cfg.runtime.compile, compile_cache=cfg.data_dir / "cache" / "inductor")


def run_fetch(args, cfg):
    from deepselfie.console import summary
    from models.selfie.weights import fetch_model
    files = fetch_model(args.name, cfg.models_dir, url=args.url, path=args.path, sha1=args.sha1,
                        verify=not args.no_verify, retries=args.retries)
    for f in files:
        print(f)
    summary("fetch-weights", f"{args.name}: {len(files)} file(s) in {cfg.models_dir}")
    return 0


def run_score(args, cfg):
    from deepselfie.console import summary
    from deepselfie.report import pictures
    from models.selfie.score import list_images, write_scores

    sc = cfg.score
    scorer = make_scorer(args, cfg)
    paths = list_images(args.dir)
    results, failed = scorer.score_paths(paths)
    rows = write_scores(results, args.out, as_json=args.json)
    if args.out is None:
        if args.json:
            import json
            json.dump(rows, sys.stdout, indent=1)
            print()
        else:
            import csv
            w = csv.DictWriter(sys.stdout, fieldnames=["path", "score", "rank"])
            w.writeheader()
            w.writerows(rows)
    top = args.top or sc.top
    written = []
    if args.grid:
        written.append(pictures.save_image(pictures.contact_sheet(results[:top]), args.grid))
    if args.worst:
        where = args.worst_grid or pathlib.Path(args.grid or args.out or "scores").with_name(
            "worst.jpg")
        written.append(pictures.save_image(pictures.contact_sheet(results[::-1][:args.worst]),
                                           where))
    if args.continuum:
        written.append(pictures.save_image(pictures.continuum(results), args.continuum))
    if args.report:
        written.append(pictures.html_report(args.report, results, failed, top=top,
                                            worst=args.worst or sc.top))
    for w in written:
        print(f"wrote {w}", file=sys.stderr)
    best = f"; best {results[0][1]:.3f} ({results[0][0]})" if results else ""
    summary("score", f"{len(results)} scored, {len(failed)} skipped{best}")
    return 0 if results or not paths else 2
