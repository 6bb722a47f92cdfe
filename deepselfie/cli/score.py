"""CLI for scoring and weights: ``deepselfie score`` and ``deepselfie fetch-weights``."""
from __future__ import annotations

import pathlib
import sys

from . import ANY_ENGINE
from .settings import add_setting


def register(sub, common):
    p = sub.add_parser("score", parents=[common], help="rank a folder of images, best first",
                       description="Score every image under DIR with a trained deploy net "
                                   "(probability of 'good'), best first.")
    p.add_argument("dir", metavar="DIR", help="a folder (searched recursively) or one image")
    add_model_options(p)
    p.add_argument("--out", metavar="FILE", help="write scores here (CSV, or JSON with --json)")
    p.add_argument("--json", action="store_true", help="JSON instead of CSV")
    p.add_argument("--grid", metavar="IMG", help="contact sheet of the best --top images")
    add_setting(p, "--top", key="score.top", metavar="N",
                help="how many on the grid and in the report's best section")
    p.add_argument("--worst", type=int, metavar="N", help="also a sheet of the worst N (and N "
                   "in the report's worst section; default there: as many as --top)")
    p.add_argument("--worst-grid", metavar="IMG", help="where the worst sheet goes "
                   "(default: worst.jpg beside the grid or the scores)")
    p.add_argument("--continuum", metavar="IMG", help="every image best to worst, row by row")
    p.add_argument("--report", metavar="DIR", help="an HTML report with all of it")
    p.set_defaults(func=run_score)

    f = sub.add_parser("fetch-weights", parents=[common],
                       help="download published weights (VGG16) into the models directory",
                       description="Download a published model's weights with resume and "
                                   "checksum verification, or install a local copy. Every "
                                   "download has a deadline and a size cap (fetch section).")
    f.add_argument("name", choices=["vgg16"], help="which model")
    f.add_argument("--source", choices=["caffe", "torchvision"], default="caffe",
                   help="caffe: the authors' .caffemodel (default); torchvision: torchvision's "
                        "ImageNet checkpoint, converted exactly to the Caffe layout "
                        "(VGG_ILSVRC_16_layers_torchvision.caffemodel, mean 103.53,116.28,123.675)")
    f.add_argument("--url", help="download the weights from this URL instead")
    f.add_argument("--path", help="use this local file instead of downloading")
    f.add_argument("--sha1", help="expected SHA-1 of the Caffe weights (default: the published one)")
    f.add_argument("--sha256", help="expected SHA-256 (or its first 8+ hex digits) of the "
                                    "torchvision checkpoint (default: the published prefix)")
    f.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    add_setting(f, "--retries", key="fetch.retries", help="retries on a broken connection")
    add_setting(f, "--deadline", key="fetch.deadline", metavar="SECONDS",
                help="most seconds the whole download may take")
    add_setting(f, "--max-bytes", key="fetch.max_bytes", metavar="N",
                help="largest download whose size is not published")
    f.set_defaults(func=run_fetch)


def add_model_options(p):
    """The options that pick the scoring net and its preprocessing (every command that scores);
    each sets a config key. With the model card that deepselfie train writes beside the
    snapshots, --weights is enough; the other options override the card. The command builds
    nets, so runtime.* applies to it."""
    g = p.add_argument_group("model")
    add_setting(g, "--model", "-model", key="score.model", metavar="DEPLOY",
                help="deploy prototxt (default: the model card's)")
    add_setting(g, "--weights", "-weights", key="score.weights", metavar="W", help=".caffemodel")
    add_setting(g, "--mean", key="score.mean",
                help="mean.binaryproto, mean JSON or B,G,R (default: the model card's)")
    add_setting(g, "--resize", key="score.resize",
                help="how images become net input: trained = the TEST phase of the training "
                     "net, from the model card (default); squash, crop, oversample = hand-set, "
                     "with per-channel mean values")
    add_setting(g, "--scale", key="score.scale",
                help="input scale after the mean, as the training net's transform_param "
                     "(default: the model card's)")
    add_setting(g, "--fast-decode", key="score.fast_decode",
                help="decode large JPEGs at reduced size: faster, but not the pixels the net "
                     "was trained on")
    add_setting(g, "--batch-size", key="score.batch_size", metavar="N",
                help="images per forward pass")
    add_setting(g, "--prepare", key="score.prepare")
    add_setting(g, "--device", key="runtime.device", help="cpu, cuda, cuda:N or auto")
    add_setting(g, "--fast", key="runtime.fast", help="bf16 + channels_last (--no-fast: exact)")
    p.set_defaults(nets=ANY_ENGINE)


def make_scorer(cfg):
    """The Scorer that the config's score and runtime sections (flags included) and the model
    card beside the weights ask for; the config's values override the card's."""
    from deepselfie.console import get_logger
    from deepselfie.errors import UserError
    from models.selfie.card import find_card, missing_card_message
    from models.selfie.score import Scorer

    sc = cfg.score
    weights = sc.weights
    if not weights:
        raise UserError("no weights: pass --weights (a .caffemodel from deepselfie train)",
                        path="--weights")
    common = dict(batch_size=sc.batch_size, device=cfg.runtime.device, fast=cfg.runtime.fast,
                  good_class=sc.good_class, fast_decode=sc.fast_decode,
                  prepare=sc.prepare, compile=cfg.runtime.compile,
                  compile_cache=cfg.data_dir / "cache" / "inductor")
    if find_card(weights) is not None:
        return Scorer.from_card(weights, model=sc.model, mean=sc.mean, scale=sc.scale,
                                resize=sc.resize, **common)
    if not (sc.model and sc.mean):
        raise UserError(missing_card_message(weights), path=weights)
    resize = sc.resize
    if resize == "trained":
        get_logger("score").info("no model card beside %s: squashing to the net's input with "
                                 "the given mean", weights)
        resize = "squash"
    return Scorer(sc.model, weights, mean=sc.mean, resize=resize,
                  scale=1.0 if sc.scale is None else sc.scale, **common)


def run_fetch(args, cfg):
    from deepselfie.console import summary
    from deepselfie.download import Checksum, Limits
    from deepselfie.errors import UserError
    from models.selfie.weights import fetch_model

    fc = cfg.fetch
    limits = Limits(timeout=fc.timeout, deadline=fc.deadline, max_bytes=fc.max_bytes,
                    retries=fc.retries)
    if args.sha1 and args.sha256:
        raise UserError("give --sha1 (caffe) or --sha256 (torchvision), not both", path="--sha1")
    checksum = Checksum("sha1", args.sha1) if args.sha1 else \
        Checksum("sha256", args.sha256) if args.sha256 else None
    files = fetch_model(args.name, cfg.models_dir, source=args.source, url=args.url,
                        path=args.path, checksum=checksum, verify=not args.no_verify,
                        limits=limits)
    for f in files:
        print(f)
    summary("fetch-weights", f"{args.name} ({args.source}): {len(files)} file(s) in "
                             f"{cfg.models_dir}")
    return 0


def run_score(args, cfg):
    from deepselfie.console import summary
    from deepselfie.errors import UserError
    from deepselfie.report import pictures
    from models.selfie.score import list_images, write_scores

    top = cfg.score.top
    worst = top if args.worst is None else args.worst     # the report's worst section
    if worst < 0:
        raise UserError(f"must be >= 0, not {worst}", path="--worst")
    scorer = make_scorer(cfg)
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
                                            worst=worst))
    for w in written:
        print(f"wrote {w}", file=sys.stderr)
    best = f"; best {results[0][1]:.3f} ({results[0][0]})" if results else ""
    summary("score", f"{len(results)} scored, {len(failed)} skipped{best}")
    return 0 if results or not paths else 2
