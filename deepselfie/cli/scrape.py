"""``deepselfie scrape`` and ``deepselfie catalog stats|export``."""
from __future__ import annotations

import json
import pathlib
import sys

from deepselfie.files import atomic_open

from .settings import add_setting


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "scrape", parents=[common], help="collect #selfie posts and their images",
        description="Collect posts from Mastodon-API hashtag timelines (Mastodon, Pixelfed) or "
                    "a folder of images into the catalog and the image store. Resumable: "
                    "stop it any time and run it again.")
    add_setting(p, "--source", key="scrape.source", help="where posts come from")
    add_setting(p, "--server", key="scrape.servers", metavar="URL",
                help="a Mastodon-API server, e.g. https://mastodon.social (repeatable)")
    add_setting(p, "--tag", key="scrape.tags", metavar="TAG",
                help="a hashtag without # (repeatable)")
    add_setting(p, "--max-posts", key="scrape.max_posts", metavar="N",
                help="stop after N new posts (0 = no limit)")
    add_setting(p, "--concurrency", key="scrape.concurrency", metavar="N",
                help="image downloads at the same time")
    add_setting(p, "--folder", key="scrape.folder", metavar="DIR",
                help="folder source: the images")
    add_setting(p, "--metadata", key="scrape.metadata", metavar="FILE.csv",
                help="folder source: columns file,uri,author,followers,likes,tags,"
                     "created_at,fetched_at")
    p.set_defaults(func=run_scrape_command)

    c = subparsers.add_parser("catalog", help="look into the catalog",
                              description="Counts and an export of the catalog.")
    csub = c.add_subparsers(title="commands", dest="catalog_command", metavar="COMMAND",
                            parser_class=type(c))
    csub.required = True
    s = csub.add_parser("stats", parents=[common], help="print counts")
    s.add_argument("--json", action="store_true", help="print the counts as JSON")
    s.set_defaults(func=run_stats)
    e = csub.add_parser("export", parents=[common], help="write one JSON line per post")
    e.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write here (atomically) instead of standard output")
    e.set_defaults(func=run_export)


def run_scrape_command(args, cfg) -> int:
    from scrape.stage import run_scrape
    run_scrape(cfg)
    return 0


def run_stats(args, cfg) -> int:
    from deepselfie.catalog import Catalog
    with Catalog(cfg.catalog_path, create=False) as cat:
        stats = cat.stats()
        stats["schema_version"] = cat.version
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    c = stats["counts"]
    rows = [
        ("catalog", f"{cfg.catalog_path} (schema v{stats['schema_version']})"),
        ("posts", f"{c['posts']}" + _detail(stats["posts_by_server"])),
        ("authors", f"{c['authors']}"),
        ("media", f"{c['media']}" + _detail(stats["media_by_kind"])),
        ("images", f"{c['images']} ({stats['image_bytes'] / 1e6:.1f} MB)"),
        ("downloads", f"ok {c['downloads_ok']}, skipped {c['downloads_skipped']}, "
                      f"failed {c['downloads_failed']}, not tried yet "
                      f"{stats['pending_downloads']}"),
    ]
    rows += [("", f"{n} {reason}") for reason, n in stats["downloads_by_reason"].items()]
    rows += [("faces", f"{c['face_scans']} images scanned, {c['images_with_faces']} with faces"),
             ("labels", f"{c['labeled_posts']} posts labeled")]
    for name, state in stats["cursors"].items():
        where = ("done" if state.get("done") else "in progress")
        if state.get("error"):
            where = f"stopped: {state['error']}"
        rows.append(("cursor", f"{name}: {where}"))
    for label, text in rows:
        print(f"{label:<10} {text}")
    return 0


def _detail(groups: dict) -> str:
    return " (" + ", ".join(f"{k} {n}" for k, n in groups.items()) + ")" if groups else ""


def run_export(args, cfg) -> int:
    from deepselfie.catalog import Catalog
    with Catalog(cfg.catalog_path, create=False) as cat:
        if args.output is None:
            for row in cat.export_rows():
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            return 0
        out = pathlib.Path(args.output)
        n = 0
        with atomic_open(out, "w") as f:
            for row in cat.export_rows():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    print(f"catalog export: {n} posts -> {out}", file=sys.stderr)
    return 0
