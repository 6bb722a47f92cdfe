"""Stage 3, the entry point: catalog -> labels, author-disjoint splits, LMDBs and the mean.

``run_label(cfg)`` is what ``deepselfie label``, scripts/label.sh and the demo call. It writes one
run folder, ``<data_dir>/runs/<label.run_name>/``:

  labels.csv                 every labeled post: uri, author, followers, likes, tags (how many),
                             audience, group, rank, label, split, post_id, created_at,
                             fetched_at, n_faces, sha256, path, tag_names (by group, then rank;
                             group and rank count from 0)
  train.txt val.txt test.txt ``path label`` in LMDB order, paths relative to the data dir
                             (``convert_imageset <data_dir>/ train.txt ...`` reads them)
  train_lmdb/ val_lmdb/ test_lmdb/   Caffe Datum records, keys ``%08d_<path>``
  mean.binaryproto, mean.json        the train mean image and its per-channel BGR means
  manifest.json              settings, per-split plan hashes and counts, the summary

and stores group, rank, label and split per post in the catalog's ``labels`` table. Reruns are
idempotent (an LMDB whose plan has not changed is kept), an interrupted build resumes from its
last committed batch, and nothing in the folder is replaced until every new part is ready.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pathlib
import shutil
from dataclasses import asdict, dataclass

from deepselfie.catalog import Catalog, LabelRecord
from deepselfie.console import get_logger, summary
from deepselfie.errors import CaffeError, UserError
from deepselfie.files import atomic_write

from .image import EncodeSettings
from .lmdb_writer import Record, build_lmdb, partial_path, record_key
from .lmdb_writer import publish as publish_lmdb
from .mean import ImageMean, compute_mean, mean_to_binaryproto, read_binaryproto
from .posts import REASONS, Rules, select_eligible
from .rule import label_posts
from .splits import SPLITS, hash_order, split_rows
from .workers import Workers

log = get_logger("label")

# The summary's key for its one-line text (the rest are figures).
SUMMARY_TEXT = "text"

CSV_COLUMNS = ("uri", "author", "followers", "likes", "tags", "audience", "group", "rank",
               "label", "split", "post_id", "created_at", "fetched_at", "n_faces", "sha256",
               "path", "tag_names")


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _plan_hash(settings: EncodeSettings, records, shas) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for record, sha in zip(records, shas):
        h.update(f"{record.key}\t{sha}\t{record.label}\n".encode())
    return h.hexdigest()


def _read_manifest(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_mean(run_dir: pathlib.Path):
    """The mean written by an earlier run, or None when it is not there intact."""
    try:
        info = json.loads((run_dir / "mean.json").read_text())
        mean = read_binaryproto(run_dir / "mean.binaryproto")
        return ImageMean(mean, int(info["images"]), [float(v) for v in info["mean_value_bgr"]])
    except (OSError, ValueError, KeyError, TypeError, CaffeError):
        return None


def _labels_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item, split in rows:
        p = item.post
        writer.writerow([p.uri, p.author, p.followers, p.likes, p.n_tags, repr(item.audience),
                         item.group, item.rank, item.label, split, p.post_id, p.created_at,
                         p.fetched_at, "" if p.n_faces is None else p.n_faces, p.sha256, p.path,
                         " ".join(p.tags)])
    return buf.getvalue()


def _summary_text(name, n_posts, eligible, excluded, labeled, group_size, per_split, n_authors,
                  settings, mean, run_dir) -> str:
    good = sum(item.label for item in labeled)
    why = ", ".join(f"{n} {reason}" for reason, n in excluded.items())
    left = len(eligible) - len(labeled)
    splits = ", ".join(f"{s} {c['records']} ({c['good']}/{c['bad']})"
                       for s, c in per_split.items())
    bgr = ", ".join(f"{v:.1f}" for v in mean.channel_means)
    return (f"run {name}: {len(eligible)} of {n_posts} posts eligible"
            f"{f' (excluded: {why})' if why else ''}; "
            f"{len(labeled) // group_size} groups of {group_size}: {good} good, "
            f"{len(labeled) - good} bad ({left} eligible in the last, partial group left out); "
            f"splits by {n_authors} authors, good/bad: {splits}; "
            f"LMDBs {settings.encoding} {settings.height}x{settings.width} "
            f"{settings.resize_mode}, train mean BGR ({bgr}) in {run_dir}")


def run_label(cfg, *, run_name: str | None = None, quiet: bool = False) -> dict:
    """Label the catalog's eligible posts and write the run folder; return the summary.
    ``run_name`` overrides label.run_name (checked as a config value)."""
    cfg = cfg.with_settings({"label.run_name": run_name}, "run_label")
    with Catalog(cfg.catalog_path, create=False) as catalog, \
            Workers(cfg.label.processes or _usable_cpus()) as workers:
        with catalog.run("label", dict(cfg.label)) as run:
            result = _run(cfg, catalog, workers)
            run.details.update(result)
    if not quiet:
        summary("label", result[SUMMARY_TEXT])
    return result


def _run(cfg, catalog, workers: Workers) -> dict:
    """plan (what to write) -> build (the LMDBs and the mean that changed) -> publish."""
    plan = plan_run(cfg, catalog)
    built = build(plan, workers, commit_every=cfg.label.commit_every)
    return publish(plan, built, catalog)


@dataclass(frozen=True)
class SplitPlan:
    """One split's LMDB records in their fixed order, its list file and its counts."""

    records: list
    plan: str            # hash of the encode settings and every (key, image, label)
    list_text: str       # <split>.txt
    counts: dict         # records, good, bad, authors
    ratio: float


@dataclass(frozen=True)
class Plan:
    """What a label run writes, decided from the catalog and the settings alone."""

    settings: dict       # label.* as given
    run_name: str
    run_dir: pathlib.Path
    encode: EncodeSettings
    group_size: int
    n_posts: int
    eligible: list
    excluded: dict       # reason -> posts left out for it, in REASONS order
    labeled: list        # Labeled, by group then rank
    rows: list           # [(Labeled, split)]
    n_authors: int
    splits: dict         # split -> SplitPlan


@dataclass(frozen=True)
class Built:
    """What the build step made: the splits whose LMDB was (re)written and the train mean."""

    rebuilt: list
    mean: ImageMean


def plan_run(cfg, catalog) -> Plan:
    """Eligibility, the article's rule, splits by author, and each split's records in a
    shuffled order fixed by the seed, keyed as convert_imageset keys them."""
    s = cfg.label
    data_dir = cfg.data_dir
    rules = Rules(s.min_age_days, s.min_followers, s.max_followers, s.max_tags, s.min_faces)
    encode = EncodeSettings(s.new_height, s.new_width, s.resize_mode, s.encoding,
                            s.jpeg_quality, s.seed)

    posts = catalog.labelable_posts()
    eligible, excluded = select_eligible(posts, rules)
    excluded = {reason: excluded[reason] for reason in REASONS if excluded[reason]}
    labeled = label_posts(eligible, s.group_size, s.tag_bonus)
    if not labeled:
        why = "".join(f", {n} {reason}" for reason, n in excluded.items())
        raise UserError(f"nothing to label: {len(eligible)} of {len(posts)} posts are eligible"
                        f"{f' (left out{why})' if why else ''} and a group needs "
                        f"label.group_size = {s.group_size}", path=cfg.catalog_path)
    rows = split_rows(labeled, (s.train_ratio, s.val_ratio, s.test_ratio), s.seed)

    missing = [item.post.path for item in labeled if not (data_dir / item.post.path).is_file()]
    if missing:
        raise UserError(f"{len(missing)} labeled image(s) are missing from the image store "
                        "(rerun `deepselfie scrape` to fetch them again)",
                        path=data_dir / missing[0])

    splits = {}
    for split in SPLITS:
        items = sorted((item for item, sp in rows if sp == split),
                       key=lambda item: hash_order(s.seed, "order\0" + item.post.uri))
        records = [Record(record_key(i, item.post.path), str(data_dir / item.post.path),
                          item.label, item.post.sha256) for i, item in enumerate(items)]
        good = sum(item.label for item in items)
        splits[split] = SplitPlan(
            records=records,
            plan=_plan_hash(encode, records, [item.post.sha256 for item in items]),
            list_text="".join(f"{item.post.path} {item.label}\n" for item in items),
            counts={"records": len(items), "good": good, "bad": len(items) - good,
                    "authors": len({item.post.author for item in items})},
            ratio=getattr(s, f"{split}_ratio"))
    return Plan(settings=dict(s), run_name=s.run_name, run_dir=cfg.runs_dir / s.run_name,
                encode=encode, group_size=s.group_size, n_posts=len(posts), eligible=eligible,
                excluded=excluded, labeled=labeled, rows=rows,
                n_authors=len({item.post.author for item in labeled}), splits=splits)


def build(plan: Plan, workers: Workers, *, commit_every: int) -> Built:
    """Write each split's LMDB beside the run folder's (``<split>_lmdb.partial``) unless the
    published one already holds the same plan; then the mean over train, as
    compute_image_mean computes it. Nothing in the run folder is replaced yet."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(run_dir / "manifest.json")
    old_plans = manifest.get("plans", {})
    built = []
    for split, sp in plan.splits.items():
        records = sp.records
        target = run_dir / f"{split}_lmdb"
        if old_plans.get(split) == sp.plan and target.is_dir():
            log.info("%s: up to date", target)
            shutil.rmtree(partial_path(target), ignore_errors=True)   # a stale, abandoned build
            continue
        if not records and sp.ratio > 0:
            log.warning("the %s split is empty (too few authors for the ratios)", split)
        resumed = build_lmdb(target, records, plan.encode, plan=sp.plan, processes=workers,
                             commit_every=commit_every, desc=f"{split}_lmdb")
        if resumed:
            log.info("%s: resumed after %d committed records", target, resumed)
        built.append(split)

    mean = None
    if "train" not in built and manifest.get("mean_plan") == plan.splits["train"].plan:
        mean = _read_mean(run_dir)
    if mean is None:
        train_db = run_dir / "train_lmdb"
        mean = compute_mean(partial_path(train_db) if "train" in built else train_db, workers)
    return Built(built, mean)


def publish(plan: Plan, built: Built, catalog) -> dict:
    """Put everything in place (the manifest goes last), store the labels in the catalog;
    -> the run's summary."""
    run_dir, mean = plan.run_dir, built.mean
    atomic_write(run_dir / "labels.csv", _labels_csv(plan.rows))
    for split, sp in plan.splits.items():
        atomic_write(run_dir / f"{split}.txt", sp.list_text)
    atomic_write(run_dir / "mean.binaryproto", mean_to_binaryproto(mean.mean))
    atomic_write(run_dir / "mean.json", json.dumps(mean.to_json(), indent=1) + "\n")
    for split in built.rebuilt:
        publish_lmdb(run_dir / f"{split}_lmdb")
    catalog.replace_labels(plan.run_name, [
        LabelRecord(item.post.post_id, item.audience, item.group, item.rank, item.label, split)
        for item, split in plan.rows])
    counts = {split: sp.counts for split, sp in plan.splits.items()}
    plans = {split: sp.plan for split, sp in plan.splits.items()}
    text = _summary_text(plan.run_name, plan.n_posts, plan.eligible, plan.excluded,
                         plan.labeled, plan.group_size, counts, plan.n_authors, plan.encode,
                         mean, run_dir)
    result = {"run": plan.run_name, "posts": plan.n_posts, "eligible": len(plan.eligible),
              "excluded": plan.excluded, "labeled": len(plan.labeled),
              "groups": len(plan.labeled) // plan.group_size, "splits": counts,
              "mean_value_bgr": mean.channel_means, SUMMARY_TEXT: text}
    atomic_write(run_dir / "manifest.json", json.dumps(
        {"settings": plan.settings, "plans": plans, "mean_plan": plans["train"],
         "summary": result}, indent=1) + "\n")
    return {**result, "rebuilt": built.rebuilt}
