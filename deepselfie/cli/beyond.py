"""CLI past the article: ``deepselfie crop``, ``deepselfie tsne`` and ``deepselfie serve``. Each
builds the Scorer the same way ``deepselfie score`` does (deepselfie.cli.score.make_scorer)."""
from __future__ import annotations

import sys

from .score import add_model_options, make_scorer


def register(sub, common):
    c = sub.add_parser("crop", parents=[common], help="find the crop of each image the net "
                       "likes best", description="Search crops of the net's input aspect over "
                       "scale and position (a coarse grid, then refinement around the best) and "
                       "write the best crop, an original|crop comparison and JSON per image.")
    c.add_argument("source", metavar="IMAGE|DIR", help="an image or a folder (recursive)")
    c.add_argument("--out", metavar="DIR", help="output folder (crop.out_dir; default "
                   "<data_dir>/crops)")
    c.add_argument("--seed", type=int, help="random seed of the search (crop.seed)")
    c.add_argument("--min-scale", type=float, help="smallest crop, relative to the largest "
                   "(crop.min_scale)")
    c.add_argument("--rounds", type=int, help="refinement rounds (crop.rounds)")
    add_model_options(c)
    c.set_defaults(func=run_crop)

    t = sub.add_parser("tsne", parents=[common], help="a t-SNE map of the net's features",
                       description="Features of one blob (fc7 by default) for every image, PCA "
                       "then t-SNE to 2-D: a grid image of thumbnails (tsne_grid.jpg) and an "
                       "interactive HTML map (index.html).")
    t.add_argument("source", metavar="DIR|scores.csv", help="a folder of images, or the CSV "
                   "from deepselfie score")
    t.add_argument("--blob", help="which blob's values are the features (tsne.blob)")
    t.add_argument("--out", metavar="DIR", help="output folder (tsne.out_dir; default "
                   "<data_dir>/tsne)")
    t.add_argument("--perplexity", type=float, help="t-SNE perplexity (tsne.perplexity)")
    t.add_argument("--seed", type=int, help="random seed (tsne.seed)")
    add_model_options(t)
    t.set_defaults(func=run_tsne)

    s = sub.add_parser("serve", parents=[common], help="a web page that scores your selfie",
                       description="Serve a page (drop a photo, see its score, percentile and "
                       "best crop) and a JSON API: POST /api/score, GET /api/health.")
    s.add_argument("--host", help="address to listen on (serve.host)")
    s.add_argument("--port", type=int, help="port, 0 = any free one (serve.port)")
    s.add_argument("--reference", metavar="CSV|DIR", help="percentiles among these scores "
                   "(serve.reference)")
    add_model_options(s)
    s.set_defaults(func=run_serve)


def run_crop(args, cfg):
    from deepselfie.console import summary
    from models.selfie.crop import CropSearch, crop_images

    search = CropSearch.from_config(cfg.crop, seed=args.seed, min_scale=args.min_scale,
                                    rounds=args.rounds)
    out = args.out or cfg.crop.out_dir or cfg.data_dir / "crops"
    scorer = make_scorer(args, cfg)
    records, failed = crop_images(scorer, args.source, out, search)
    for r in records:
        b = r["box"]
        print(f"{r['path']}\t{r['original_score']:.4f} -> {r['score']:.4f}\t"
              f"box {b['x']},{b['y']} {b['width']}x{b['height']}")
    gains = [r["gain"] for r in records]
    mean_gain = f"; mean gain {sum(gains) / len(gains):+.4f}" if gains else ""
    summary("crop", f"{len(records)} cropped, {len(failed)} skipped{mean_gain}; in {out}")
    return 0 if records or not failed else 2


def run_tsne(args, cfg):
    from deepselfie.console import summary
    from deepselfie.report.tsne_map import tsne_map

    t = cfg.tsne
    out = args.out or t.out_dir or cfg.data_dir / "tsne"
    scorer = make_scorer(args, cfg)
    res = tsne_map(scorer, args.source, out, blob=args.blob or t.blob,
                   cache_dir=t.cache_dir or cfg.data_dir / "cache" / "features",
                   pca_dims=t.pca_dims,
                   perplexity=args.perplexity if args.perplexity is not None else t.perplexity,
                   method=t.method, seed=args.seed if args.seed is not None else t.seed,
                   thumb=t.thumb, exact_max=t.exact_max, threads=t.threads)
    print(f"wrote {res['grid']}\nwrote {res['page']}", file=sys.stderr)
    cached = " (features from the cache)" if res["cached"] else ""
    summary("tsne", f"{res['images']} images mapped with {res['method']} from "
                    f"{res['dims']}-d {args.blob or t.blob} features{cached}, "
                    f"{res['skipped']} skipped; {res['page']}")
    return 0


def run_serve(args, cfg):
    import signal

    from deepselfie.console import summary
    from models.selfie.crop import CropSearch
    from deepselfie.serve.server import App, Reference, make_server

    sv = cfg.serve
    scorer = make_scorer(args, cfg)
    reference = Reference.load(args.reference or sv.reference, scorer)
    app = App(scorer, reference, CropSearch.from_config(cfg.crop) if sv.crop else None,
              max_bytes=sv.max_bytes, max_pixels=sv.max_pixels, concurrent=sv.concurrent,
              memory_mb=sv.memory_mb, body_memory_mb=sv.body_memory_mb,
              read_seconds=sv.read_seconds)
    server = make_server(app, args.host or sv.host, args.port if args.port is not None
                         else sv.port, backlog=sv.backlog)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ref = f"percentiles among {len(reference.scores)} scores" if reference.scores else \
        "no reference set"
    print(f"serving on {server.url} ({ref}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    summary("serve", f"stopped; served {server.url}")
    return 0
