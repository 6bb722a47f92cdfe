"""The folder source: images you already have, plus a CSV file that describes their posts.

Columns: ``file,uri,author,followers,likes,tags,created_at,fetched_at``. ``file`` is relative to
the folder (or absolute); ``tags`` are space-separated (a leading # is fine); ``uri`` defaults to
the file's absolute path as a file: URI and ``fetched_at`` to the import time. Rows sharing a
``uri`` are one post with several images, in file order.

The whole CSV is checked before anything is written: a bad row is one error naming the file, the
line, the column and the problem, and the catalog is left as it was.
"""
from __future__ import annotations

import csv
import pathlib
import urllib.parse
import urllib.request

from deepselfie.catalog import Catalog, MediaRecord, PostRecord, to_iso
from deepselfie.console import progress
from deepselfie.errors import UserError, shortened
from deepselfie.tally import Tally

from .counters import IMAGES_KEPT, IMAGES_SKIPPED, POSTS_NEW, POSTS_SEEN_AGAIN
from .counts import parse_count
from .images import ImageStore, Rejected

COLUMNS = ("file", "uri", "author", "followers", "likes", "tags", "created_at", "fetched_at")
REQUIRED = ("file", "author", "followers", "likes", "created_at")


def read_metadata(metadata, folder, imported_at: str) -> list[PostRecord]:
    """Parse and check the metadata CSV -> posts (with their media as file: URLs)."""
    metadata, folder = pathlib.Path(metadata), pathlib.Path(folder)
    if not folder.is_dir():
        raise UserError("not a folder", path=folder)
    try:
        with open(metadata, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else _header(metadata)
    except FileNotFoundError:
        raise UserError("metadata file not found", path=metadata) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read the metadata CSV ({e})", path=metadata) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UserError(f"missing column(s) {', '.join(missing)}; expected "
                        f"{','.join(COLUMNS)}", path=metadata)
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise UserError(f"unknown column(s) {', '.join(map(str, unknown))}; expected "
                        f"{','.join(COLUMNS)}", path=metadata)

    posts: dict[str, PostRecord] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{metadata}:{line}"
        if None in row:
            raise UserError("more fields than columns", path=where)
        post = _row_to_post(row, folder, imported_at, where)
        first = posts.get(post.uri)
        if first is None:
            posts[post.uri] = post
            continue
        for name in ("author", "followers", "likes", "created_at"):
            if getattr(first, name) != getattr(post, name):
                raise UserError(f"uri {post.uri} repeats with a different {name}", path=where,
                                field=name)
        first.media.extend(post.media)
    return list(posts.values())


def _header(metadata) -> list[str]:
    with open(metadata, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _row_to_post(row: dict, folder: pathlib.Path, imported_at: str, where: str) -> PostRecord:
    def text(name):
        return (row.get(name) or "").strip()

    def count(name):
        value = text(name)
        n = parse_count(value)
        if n is None:
            raise UserError(f"must be a whole number 0 <= n < 2**63 in ASCII digits, not "
                            f"{shortened(value)!r}", path=where, field=name)
        return n

    def when(name, default=None):
        value = text(name)
        if not value and default is not None:
            return default
        try:
            return to_iso(value)
        except ValueError:
            raise UserError(f"must be an ISO-8601 date and time, not {value!r}", path=where,
                            field=name) from None

    name = text("file")
    if not name:
        raise UserError("empty", path=where, field="file")
    try:
        path = (folder / name).resolve()
        is_file = path.is_file()
    except (ValueError, OSError) as e:     # a NUL byte, a name longer than the system takes
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"not a usable file name ({reason}): {shortened(name)!r}", path=where,
                        field="file") from None
    if not is_file:
        raise UserError(f"no such file: {folder / name}", path=where, field="file")
    author = text("author")
    if not author:
        raise UserError("empty", path=where, field="author")
    tags = []
    for t in text("tags").split():
        t = t.lstrip("#").lower()
        if t and t not in tags:
            tags.append(t)
    return PostRecord(
        uri=text("uri") or path.as_uri(), author=author, followers=count("followers"),
        likes=count("likes"), created_at=when("created_at"),
        fetched_at=when("fetched_at", default=imported_at), server="folder", tags=tags,
        source="folder", media=[MediaRecord(path.as_uri(), kind="image")])


def import_folder(cat: Catalog, store: ImageStore, posts: list[PostRecord], *, tally: Tally,
                  max_posts: int | None = None, max_bytes: int = 50_000_000) -> None:
    """Upsert the posts and keep their images (each checked and decoded like a download)."""
    new = 0
    with progress(total=len(posts), desc="import", unit="post") as bar:
        for post in posts:
            if max_posts and new >= max_posts:
                break
            post_id, is_new = cat.upsert_post(post)
            new += is_new
            tally.add(POSTS_NEW if is_new else POSTS_SEEN_AGAIN)
            for media_id, url in cat.pending_downloads(schemes=("file",), post_ids=[post_id]):
                _keep_file(cat, store, media_id, url, tally, max_bytes)
            bar.update(1)


def _keep_file(cat, store, media_id, url, tally, max_bytes) -> None:
    path = pathlib.Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    data = None
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise Rejected(f"too large ({size} bytes > {max_bytes})")
        data = path.read_bytes()
        image = store.keep(data)
    except Rejected as e:
        reason = e.reason
    except OSError as e:
        if data is not None:   # reading worked: this is the store failing (disk full...)
            raise
        reason = f"unreadable file ({e.strerror or e})"
    else:
        cat.keep_image(media_id, image)
        tally.add(IMAGES_KEPT)
        return
    cat.record_download(media_id, "skipped", reason)
    tally.add(IMAGES_SKIPPED, reason)
