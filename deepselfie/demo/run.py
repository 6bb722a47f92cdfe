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

from . import corpus as corpus_mod

log = get_logger("demo")
ROOT = pathlib.Path(__file__).resolve().parents[2]


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
    to ``out/selfie_small_iter_<max_iter>.caffemodel``. Returns the solver's path."""
    run_dir, out = pathlib.Path(run_dir).resolve(), pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tv = (ROOT / "prototxt" / "selfie_small_train_val.prototxt").read_text()
    tv = tv.replace("data/runs/selfie/", f"{run_dir}/")
    if batch_size is not None:
        tv = tv.replace("batch_size: 32", f"batch_size: {batch_size}")
    (out / "train_val.prototxt").write_text(tv)
    # the deploy net beside the train_val, where the model card looks for it
    (out / "deploy.prototxt").write_text(
        (ROOT / "prototxt" / "selfie_small_deploy.prototxt").read_text())
    solver = (ROOT / "prototxt" / "selfie_small_solver.prototxt").read_text()
    solver = solver.replace('"prototxt/selfie_small_train_val.prototxt"',
                            f'"{out / "train_val.prototxt"}"')
    solver = solver.replace("max_iter: 300", f"max_iter: {max_iter}")
    solver = solver.replace("test_interval: 50", f"test_interval: {test_interval}")
    solver = solver.replace("snapshot: 100", "snapshot: 0")
    solver = solver.replace('"data/snapshots/selfie_small"', f'"{out / "selfie_small"}"')
    (out / "solver.prototxt").write_text(solver)
    return out / "solver.prototxt"


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

    from label.stage import run_label
    from deepselfie.report import pictures
    from models.caffe.tool import train
    from models.faces.stage import scan
    from models.selfie.card import write_card
    from models.selfie.score import Scorer
    from scrape.stage import run_scrape
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

    server = MastodonAPIServer(flavor="mastodon").start()
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
          curve_interval_s=5.0)
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
        "scrape": {k: scraped.get(k) for k in ("posts_new", "posts_seen", "images_kept",
                                               "seconds") if k in scraped} or scraped,
        "faces": {k: faces[k] for k in ("scanned", "with_faces", "faces") if k in faces},
        "label": {k: v for k, v in labeled.items() if k != "text"},
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
    sections = [
        ("How this demo was made",
         "<p>The posts, authors, followers, tags, dates and likes are <b>synthetic</b>: images "
         "are made from real portraits (scikit-image's astronaut, matplotlib's Grace Hopper) "
         "and photos without people, and each post's expected likes follow the cues the "
         "article reports (face about a third of the frame, filters, borders, good light, no "
         "groups, not too close) plus noise. Every stage ran through the same code a real run "
         "uses; only the Mastodon server was local.</p>"),
        ("Stages", "<pre>" + json.dumps(stages, indent=1, default=str) + "</pre>"),
        ("Held-out accuracy",
         f"<p><b>{test_acc:.1%}</b> of the {len(test_scored)} test-split images (authors the "
         "net never trained on) are on the right side of 0.5.</p>"),
        ("Training", "<img src='training_curve.png'>" if curve.exists() else "<p>(no curve)</p>"),
        ("Score by cue", "<img src='cues.png'><table><tr><th>cue</th><th>with</th>"
         "<th>without</th><th>images with</th><th>effect on likes (log)</th></tr>" + "".join(
             f"<tr><td>{r['cue']}</td><td>{r['with']:.3f}</td><td>{r['without']:.3f}</td>"
             f"<td>{r['n_with']}</td><td>{r['effect_on_likes']:+.2f}</td></tr>" for r in table)
         + "</table>"),
    ]
    pictures.html_report(report_dir, results, failed, title="deepselfie demo: what the net "
                         "thinks about these #selfies", top=24, worst=24, sections=sections)
    (report_dir / "summary.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    summary("demo", f"held-out accuracy {test_acc:.1%} on {len(test_scored)} test images; "
                    f"report: {report_dir / 'index.html'}")
    return out
