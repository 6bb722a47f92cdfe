"""The demo: the whole article, in minutes, on this machine.

An embedded Mastodon-API server on 127.0.0.1 serves a synthetic #selfie corpus (corpus.py); then
every stage runs through the same entry points a real run uses: scrape -> faces -> label ->
train (the small 64x64 net on the CPU) -> score a held-out folder -> report. The report (HTML +
PNGs) and summary.json land in <data dir>/report/.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time

import numpy as np

from deepselfie.console import get_logger, summary
from deepselfie.tally import SECONDS
from label.stage import SUMMARY_TEXT
from models.faces.stage import FACES, SCANNED, WITH_FACES
from scrape.counters import IMAGES_KEPT, POSTS_NEW, POSTS_SEEN_AGAIN

from . import corpus as corpus_mod

log = get_logger("demo")
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_PORT = 47631       # the demo server's port when free (see run())


@dataclasses.dataclass(frozen=True)
class Size:
    posts: int
    group_size: int
    max_iter: int
    heldout: int
    test_interval: int


FULL = Size(posts=1400, group_size=100, max_iter=450, heldout=160, test_interval=75)
QUICK = Size(posts=260, group_size=50, max_iter=60, heldout=40, test_interval=30)


def _configure(cfg, size: Size, server_url: str):
    """The demo's settings on top of the user's config (paths, device, thresholds kept)."""
    cfg.scrape.update(source="mastodon", servers=[server_url], tags=["selfie"], page_interval=0.0,
                      max_posts=0, tokens={}, refresh_home=False)
    cfg.label.update(run_name="demo", group_size=size.group_size, new_height=64, new_width=64,
                     min_faces=1, min_age_days=30, min_followers=10, max_followers=1_000_000,
                     encoding="jpg")


def write_small_net_files(run_dir, out: pathlib.Path, *, max_iter: int, test_interval: int,
                          batch_size: int | None = None) -> pathlib.Path:
    """The small net's train_val and solver pointed at a label run folder, written into ``out``
    (Caffe resolves paths against the working directory, so these are absolute); snapshots go
    to ``out/selfie_small_iter_<max_iter>.caffemodel``. Returns the solver's path.

    The shipped prototxts are read as NetParameter / SolverParameter, changed field by field and
    written back, so a reformatted or commented prototxt changes nothing here."""
    from models.caffe.proto import caffe_pb2
    from models.caffe.protoio import read_prototxt, write_prototxt
    run_dir, out = pathlib.Path(run_dir).resolve(), pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    net = read_prototxt(ROOT / "prototxt" / "selfie_small_train_val.prototxt",
                        caffe_pb2.NetParameter)
    data_layers = [layer for layer in net.layer if layer.HasField("data_param")]
    if not data_layers:
        raise ValueError("selfie_small_train_val.prototxt has no Data layer")
    for layer in data_layers:
        layer.data_param.source = str(run_dir / pathlib.PurePosixPath(
            layer.data_param.source).name)                 # .../train_lmdb, .../val_lmdb
        if layer.transform_param.HasField("mean_file"):
            layer.transform_param.mean_file = str(run_dir / "mean.binaryproto")
        if batch_size is not None:
            layer.data_param.batch_size = batch_size
    train_val = out / "train_val.prototxt"
    write_prototxt(train_val, net)
    # the deploy net beside the train_val, where the model card looks for it
    (out / "deploy.prototxt").write_text(
        (ROOT / "prototxt" / "selfie_small_deploy.prototxt").read_text())

    solver = read_prototxt(ROOT / "prototxt" / "selfie_small_solver.prototxt",
                           caffe_pb2.SolverParameter)
    solver.net = str(train_val)
    solver.max_iter = max_iter
    solver.test_interval = test_interval
    solver.snapshot = 0                                  # only the last iteration's snapshot
    solver.snapshot_prefix = str(out / "selfie_small")
    write_prototxt(out / "solver.prototxt", solver)
    return out / "solver.prototxt"


def _pick(result: dict, keys) -> dict:
    """These counters of a stage's summary (one it did not count is 0)."""
    return {key: result.get(key, 0) for key in keys}


def _score_split(scorer, run_dir: pathlib.Path, data_dir: pathlib.Path, split: str):
    """Scores of a label split's images -> (accuracy at 0.5, [(path, score, label)])."""
    rows = [line.split() for line in (run_dir / f"{split}.txt").read_text().splitlines() if line]
    paths = [data_dir / rel for rel, _ in rows]
    truth = {str(p): int(label) for p, (_, label) in zip(paths, rows)}
    results, _ = scorer.score_paths(paths, show_progress=False)
    scored = [(str(p), s, truth[str(p)]) for p, s in results]
    correct = sum((s > 0.5) == bool(t) for _, s, t in scored)
    return (correct / len(scored) if scored else float("nan")), scored


def _by_cue(results, cues_of):
    """For each cue: mean score of held-out images with it and without it."""
    table = []
    keys = [k for k in corpus_mod.Recipe().cues() if k != "face"]
    for key in keys:
        with_cue = [s for p, s in results if cues_of[str(p)][key]]
        without = [s for p, s in results if not cues_of[str(p)][key]]
        if with_cue and without:
            table.append({"cue": key, "with": float(np.mean(with_cue)),
                          "without": float(np.mean(without)), "n_with": len(with_cue),
                          "effect_on_likes": corpus_mod.EFFECTS.get(key, 0.0)})
    return table


def _cue_chart(table, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    names = [r["cue"] for r in table]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["with"] for r in table], 0.4, label="with the cue", color="#3c9")
    ax.bar(x + 0.2, [r["without"] for r in table], 0.4, label="without", color="#999")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("mean P(good)")
    ax.set_title("What the trained net rewards (held-out images)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run_demo(cfg, *, quick: bool = False, seed: int = 0) -> dict:
    """Run the whole pipeline on the demo corpus; returns summary.json's content."""
    import torch

    from deepselfie.report import pictures
    from label.stage import run_label
    from models.caffe.tool import train
    from models.faces.stage import scan
    from models.selfie.card import write_card
    from models.selfie.score import Scorer
    from scrape.stage import run_scrape

    from . import report
    from .mastodon import MastodonAPIServer

    size = QUICK if quick else FULL
    cfg["paths"]["data_dir"] = str(cfg.data_dir.resolve())   # solver paths must not depend on cwd
    data_dir = cfg.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    report_dir = data_dir / "report"
    timings = {}
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)

    t0 = time.monotonic()
    posts = corpus_mod.make_corpus(size.posts, seed=seed)
    timings["corpus"] = time.monotonic() - t0
    summary("demo", f"made {len(posts)} synthetic #selfie posts by "
                    f"{len({p.author for p in posts})} authors (synthetic engagement)")

    # one port run after run: the posts' URIs carry it, and the label stage orders records by
    # a hash of the URI, so the same port gives the same training order (the same results)
    server = MastodonAPIServer(flavor="mastodon", port=DEMO_PORT).start()
    try:
        for post in posts:
            server.add_file(f"/media/{post.id}.jpg", post.jpeg)
            server.add_status(corpus_mod.to_status(post, server.url))
        _configure(cfg, size, server.url)
        t0 = time.monotonic()
        scraped = run_scrape(cfg)
        timings["scrape"] = time.monotonic() - t0
    finally:
        server.stop()

    t0 = time.monotonic()
    faces = scan(cfg)
    timings["faces"] = time.monotonic() - t0

    t0 = time.monotonic()
    labeled = run_label(cfg)
    timings["label"] = time.monotonic() - t0
    run_dir = cfg.runs_dir / cfg.label.run_name

    t0 = time.monotonic()
    solver_path = write_small_net_files(run_dir, data_dir / "train", max_iter=size.max_iter,
                                        test_interval=size.test_interval)
    train(str(solver_path), default_device=cfg.runtime.device, metrics=True,
          curve_interval_s=5.0, report=summary)
    weights = data_dir / "train" / f"selfie_small_iter_{size.max_iter}.caffemodel"
    timings["train"] = time.monotonic() - t0

    t0 = time.monotonic()
    deploy = ROOT / "prototxt" / "selfie_small_deploy.prototxt"
    write_card(solver_path, deploy=deploy)     # what deepselfie train writes beside snapshots
    scorer = Scorer.from_card(weights, batch_size=32, device=cfg.runtime.device)
    test_acc, test_scored = _score_split(scorer, run_dir, data_dir, "test")
    heldout_dir = data_dir / "heldout"
    heldout_dir.mkdir(exist_ok=True)
    cues_of = {}
    with open(heldout_dir / "cues.csv", "w", newline="") as f:
        writer = None
        for i, (recipe, jpeg) in enumerate(corpus_mod.make_heldout(size.heldout, seed=seed)):
            p = heldout_dir / f"heldout_{i:04d}.jpg"
            p.write_bytes(jpeg)
            cues = recipe.cues()
            cues_of[str(p)] = cues
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=["file", *cues])
                writer.writeheader()
            writer.writerow({"file": p.name, **cues})
    results, failed = scorer.score_paths(sorted(heldout_dir.glob("*.jpg")), show_progress=False)
    timings["score"] = time.monotonic() - t0

    table = _by_cue(results, cues_of)
    report_dir.mkdir(parents=True, exist_ok=True)
    _cue_chart(table, report_dir / "cues.png")
    curve = data_dir / "train" / "selfie_small_curve.png"
    if curve.exists():
        (report_dir / "training_curve.png").write_bytes(curve.read_bytes())

    stages = {
        "scrape": _pick(scraped, (POSTS_NEW, POSTS_SEEN_AGAIN, IMAGES_KEPT, SECONDS)),
        "faces": _pick(faces, (SCANNED, WITH_FACES, FACES)),
        "label": {k: v for k, v in labeled.items() if k != SUMMARY_TEXT},
        "train": {"max_iter": size.max_iter, "weights": str(weights)},
        "score": {"heldout_images": len(results), "skipped": len(failed),
                  "test_split_images": len(test_scored)},
    }
    out = {
        "heldout_accuracy": round(test_acc, 4),
        "heldout": "the label run's test split (authors no training step saw)",
        "deploy": str(deploy),
        "weights": str(weights),
        "mean": str(run_dir / "mean.binaryproto"),
        "quick": quick,
        "posts": len(posts),
        "stages": stages,
        "cues": table,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "report": str(report_dir / "index.html"),
        "engagement": "synthetic: likes follow the article's cues plus noise",
    }
    sections = report.sections(stages, accuracy=test_acc, n_test=len(test_scored),
                               curve=curve.exists(), cues=table)
    pictures.html_report(report_dir, results, failed, title="deepselfie demo: what the net "
                         "thinks about these #selfies", top=24, worst=24, sections=sections)
    (report_dir / "summary.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    summary("demo", f"held-out accuracy {test_acc:.1%} on {len(test_scored)} test images; "
                    f"report: {report_dir / 'index.html'}")
    return out
