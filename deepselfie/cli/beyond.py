"""CLI past the article: ``deepselfie crop``, ``deepselfie tsne`` and ``deepselfie serve``. Each
builds the Scorer the same way ``deepselfie score`` does (deepselfie.cli.score.make_scorer)."""
from __future__ import annotations

import sys

from .score import add_model_options, make_scorer
from .settings import add_setting


def register(sub, common):
    c = sub.add_parser("crop", parents=[common], help="find the crop of each image the net "
                       "likes best", description="Search crops of the net's input aspect over "
                       "scale and position (a coarse grid, then refinement around the best) and "
                       "write the best crop, an original|crop comparison and JSON per image.")
    c.add_argument("source", metavar="IMAGE|DIR", help="an image or a folder (recursive)")
    add_setting(c, "--out", key="crop.out_dir", metavar="DIR",
                help="output folder (default <data_dir>/crops)")
    add_setting(c, "--seed", key="crop.seed", help="random seed of the search")
    add_setting(c, "--min-scale", key="crop.min_scale",
                help="smallest crop, relative to the largest")
    add_setting(c, "--rounds", key="crop.rounds", help="refinement rounds")
    add_model_options(c)
    c.set_defaults(func=run_crop)

    t = sub.add_parser("tsne", parents=[common], help="a t-SNE map of the net's features",
                       description="Features of one blob (fc7 by default) for every image, PCA "
                       "then t-SNE to 2-D: a grid image of thumbnails (tsne_grid.jpg) and an "
                       "interactive HTML map (index.html).")
    t.add_argument("source", metavar="DIR|scores.csv", help="a folder of images, or the CSV "
                   "from deepselfie score")
    add_setting(t, "--blob", key="tsne.blob", help="which blob's values are the features")
    add_setting(t, "--out", key="tsne.out_dir", metavar="DIR",
                help="output folder (default <data_dir>/tsne)")
    add_setting(t, "--perplexity", key="tsne.perplexity", help="t-SNE perplexity")
    add_setting(t, "--seed", key="tsne.seed", help="random seed")
    add_model_options(t)
    t.set_defaults(func=run_tsne)

    s = sub.add_parser("serve", parents=[common], help="a web page that scores your selfie",
                       description="Serve a page (drop a photo, see its score, percentile and "
                       "best crop) and a JSON API: POST /api/score, GET /api/health.")
    add_setting(s, "--host", key="serve.host", help="address to listen on")
    add_setting(s, "--port", key="serve.port", help="port, 0 = any free one")
    add_setting(s, "--reference", key="serve.reference", metavar="CSV|DIR",
                help="percentiles among these scores")
    add_model_options(s)
    s.set_defaults(func=run_serve)


def run_crop(args, cfg):
    from deepselfie.console import summary
    from models.selfie.crop import CropSearch, crop_images

    search = CropSearch.from_config(cfg.crop)
    out = cfg.crop.out_dir or cfg.data_dir / "crops"
    scorer = make_scorer(cfg)
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
    out = t.out_dir or cfg.data_dir / "tsne"
    scorer = make_scorer(cfg)
    res = tsne_map(scorer, args.source, out, blob=t.blob,
                   cache_dir=t.cache_dir or cfg.data_dir / "cache" / "features",
                   pca_dims=t.pca_dims, perplexity=t.perplexity, method=t.method, seed=t.seed,
                   thumb=t.thumb, exact_max=t.exact_max, threads=t.threads)
    print(f"wrote {res['grid']}\nwrote {res['page']}", file=sys.stderr)
    cached = " (features from the cache)" if res["cached"] else ""
    summary("tsne", f"{res['images']} images mapped with {res['method']} from "
                    f"{res['dims']}-d {t.blob} features{cached}, "
                    f"{res['skipped']} skipped; {res['page']}")
    return 0


def run_serve(args, cfg):
    import signal

    from deepselfie.console import summary
    from models.selfie.crop import CropSearch
    from deepselfie.serve.server import App, Reference, make_server

    sv = cfg.serve
    scorer = make_scorer(cfg)
    reference = Reference.load(sv.reference, scorer)
    app = App(scorer, reference, CropSearch.from_config(cfg.crop) if sv.crop else None,
              max_bytes=sv.max_bytes, max_pixels=sv.max_pixels, concurrent=sv.concurrent,
              memory_mb=sv.memory_mb, body_memory_mb=sv.body_memory_mb,
              read_seconds=sv.read_seconds)
    server = make_server(app, sv.host, sv.port, backlog=sv.backlog)

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
