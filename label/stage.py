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
from dataclasses import asdict

from deepselfie.console import get_logger, summary
from deepselfie.errors import CaffeError, UserError
from deepselfie.files import atomic_write

from .image import EncodeSettings
from .lmdb_writer import Record, build_lmdb, partial_path, publish, record_key
from .mean import ImageMean, compute_mean, mean_to_binaryproto, read_binaryproto
from .posts import REASONS, Rules, read_posts, select_eligible
from .rule import label_posts
from .splits import SPLITS, hash_order, split_rows
from .workers import Workers

log = get_logger("label")

CSV_COLUMNS = ("uri", "author", "followers", "likes", "tags", "audience", "group", "rank",
               "label", "split", "post_id", "created_at", "fetched_at", "n_faces", "sha256",
               "path", "tag_names")


def check_settings(cfg) -> None:
    """Refuse label.* values that have the right type but make no sense (one line, exit 2)."""
    s, where = cfg.label, cfg.source or "config"

    def bad(key, problem):
        return UserError(f"{problem}, not {s[key]!r}", path=where, field=f"label.{key}")

    for key in ("min_age_days", "min_followers", "max_tags", "min_faces", "processes"):
        if s[key] < 0:
            raise bad(key, "must be >= 0")
    if s.max_followers < s.min_followers:
        raise bad("max_followers", f"must be >= label.min_followers ({s.min_followers})")
    if s.tag_bonus < 0:
        raise bad("tag_bonus", "must be >= 0")
    if s.group_size < 2 or s.group_size % 2:
        raise bad("group_size", "must be an even number >= 2")
    for key in ("train_ratio", "val_ratio", "test_ratio"):
        if not 0 <= s[key] <= 1:
            raise bad(key, "must be between 0 and 1")
    if s.train_ratio == 0:
        raise bad("train_ratio", "must be > 0")
    if abs(s.train_ratio + s.val_ratio + s.test_ratio - 1) > 1e-6:
        raise UserError(f"train, val and test ratios must sum to 1, not "
                        f"{s.train_ratio + s.val_ratio + s.test_ratio:g}", path=where,
                        field="label.train_ratio")
    for key in ("new_height", "new_width", "commit_every"):
        if s[key] < 1:
            raise bad(key, "must be >= 1")
    if not 1 <= s.jpeg_quality <= 100:
        raise bad("jpeg_quality", "must be between 1 and 100")
    name = s.run_name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise bad("run_name", "must be a plain folder name")


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _write_atomic(path: pathlib.Path, data) -> None:
    atomic_write(path, data)


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
    """Label the catalog's eligible posts and write the run folder; return the summary."""
    if run_name is not None:
        cfg.label["run_name"] = run_name
    check_settings(cfg)
    from deepselfie.catalog import Catalog
    with Catalog(cfg.catalog_path, create=False) as catalog, \
            Workers(cfg.label.processes or _usable_cpus()) as workers:
        run_id = catalog.start_run("label", dict(cfg.label))
        try:
            result = _run(cfg, catalog, workers)
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            catalog.finish_run(run_id, {"error": str(e)}, status=status)
            raise
        catalog.finish_run(run_id, result)
    if not quiet:
        summary("label", result["text"])
    return result


def _run(cfg, catalog, workers: Workers) -> dict:
    s = cfg.label
    data_dir = cfg.data_dir
    run_dir = cfg.runs_dir / s.run_name
    rules = Rules(s.min_age_days, s.min_followers, s.max_followers, s.max_tags, s.min_faces)
    settings = EncodeSettings(s.new_height, s.new_width, s.resize_mode, s.encoding,
                              s.jpeg_quality, s.seed)

    # 1. Eligibility, the article's rule, splits by author.
    posts = read_posts(catalog)
    eligible, excluded = select_eligible(posts, rules)
    excluded = {reason: excluded[reason] for reason in REASONS if excluded[reason]}
    labeled = label_posts(eligible, s.group_size, s.tag_bonus)
    if not labeled:
        why = "".join(f", {n} {reason}" for reason, n in excluded.items())
        raise UserError(f"nothing to label: {len(eligible)} of {len(posts)} posts are eligible"
                        f"{f' (left out{why})' if why else ''} and a group needs "
                        f"label.group_size = {s.group_size}", path=cfg.catalog_path)
    rows = split_rows(labeled, (s.train_ratio, s.val_ratio, s.test_ratio), s.seed)
    n_authors = len({item.post.author for item in labeled})

    missing = [item.post.path for item in labeled if not (data_dir / item.post.path).is_file()]
    if missing:
        raise UserError(f"{len(missing)} labeled image(s) are missing from the image store "
                        "(rerun `deepselfie scrape` to fetch them again)",
                        path=data_dir / missing[0])

    # 2. Each split's records in a shuffled order fixed by the seed, keyed as convert_imageset.
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(run_dir / "manifest.json")
    old_plans = manifest.get("plans", {})
    plans, lists, counts, built = {}, {}, {}, []
    for split in SPLITS:
        items = sorted((item for item, sp in rows if sp == split),
                       key=lambda item: hash_order(s.seed, "order\0" + item.post.uri))
        records = [Record(record_key(i, item.post.path), str(data_dir / item.post.path),
                          item.label, item.post.sha256) for i, item in enumerate(items)]
        plans[split] = _plan_hash(settings, records, [item.post.sha256 for item in items])
        lists[split] = "".join(f"{item.post.path} {item.label}\n" for item in items)
        good = sum(item.label for item in items)
        counts[split] = {"records": len(items), "good": good, "bad": len(items) - good,
                         "authors": len({item.post.author for item in items})}
        target = run_dir / f"{split}_lmdb"
        if old_plans.get(split) == plans[split] and target.is_dir():
            log.info("%s: up to date", target)
            shutil.rmtree(partial_path(target), ignore_errors=True)   # a stale, abandoned build
            continue
        if not items and getattr(s, f"{split}_ratio") > 0:
            log.warning("the %s split is empty (too few authors for the ratios)", split)
        resumed = build_lmdb(target, records, settings, plan=plans[split], processes=workers,
                             commit_every=s.commit_every, desc=f"{split}_lmdb")
        if resumed:
            log.info("%s: resumed after %d committed records", target, resumed)
        built.append(split)

    # 3. The mean over train, as compute_image_mean computes it.
    mean = None
    if "train" not in built and manifest.get("mean_plan") == plans["train"]:
        mean = _read_mean(run_dir)
    if mean is None:
        train_db = run_dir / "train_lmdb"
        mean = compute_mean(partial_path(train_db) if "train" in built else train_db, workers)

    # 4. Put everything in place; the manifest goes last.
    _write_atomic(run_dir / "labels.csv", _labels_csv(rows))
    for split in SPLITS:
        _write_atomic(run_dir / f"{split}.txt", lists[split])
    _write_atomic(run_dir / "mean.binaryproto", mean_to_binaryproto(mean.mean))
    _write_atomic(run_dir / "mean.json", json.dumps(mean.to_json(), indent=1) + "\n")
    for split in built:
        publish(run_dir / f"{split}_lmdb")
    with catalog.transaction():
        catalog.execute("DELETE FROM labels WHERE label_run = ?", (s.run_name,))
        catalog.db.executemany(
            "INSERT INTO labels (label_run, post_id, audience, grp, rank, label, split) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(s.run_name, item.post.post_id, item.audience, item.group, item.rank, item.label,
              split) for item, split in rows])
    text = _summary_text(s.run_name, len(posts), eligible, excluded, labeled, s.group_size,
                         counts, n_authors, settings, mean, run_dir)
    result = {"run": s.run_name, "posts": len(posts), "eligible": len(eligible),
              "excluded": excluded, "labeled": len(labeled),
              "groups": len(labeled) // s.group_size, "splits": counts,
              "mean_value_bgr": mean.channel_means, "text": text}
    _write_atomic(run_dir / "manifest.json", json.dumps(
        {"settings": dict(s), "plans": plans, "mean_plan": plans["train"], "summary": result},
        indent=1) + "\n")
    return {**result, "rebuilt": built}
