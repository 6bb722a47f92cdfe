"""Corpora for the scrape tests: real photos (scikit-image's sample images, cropped and
re-encoded here) behind loopback Mastodon-API servers (mastodon_server)."""
from __future__ import annotations

import functools
import io
import json
import sqlite3
import struct
import zlib

import numpy as np
from PIL import Image

import mastodon_server as ts

BASES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry",
         "hubble_deep_field", "colorwheel", "moon"]


@functools.lru_cache(maxsize=None)
def _base(name: str) -> Image.Image:
    import skimage.data
    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3])


@functools.lru_cache(maxsize=None)
def photo(i: int, size=(192, 160), fmt: str = "JPEG") -> bytes:
    """A distinct real photo for each i: a crop of a sample image, resized and encoded."""
    base = _base(BASES[i % len(BASES)])
    w, h = base.size
    s = 0.55 + 0.04 * (i // len(BASES) % 10)
    cw, ch = int(w * s), int(h * s)
    x, y = (i * 37) % max(1, w - cw), (i * 53) % max(1, h - ch)
    img = base.crop((x, y, x + cw, y + ch)).resize(size)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def bomb_png(width=30000, height=30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


HTML = b"<!DOCTYPE html><html><body><h1>Sign in to continue</h1></body></html>"


def when(i: int) -> str:
    return f"2026-01-{1 + i // 24:02d}T{i % 24:02d}:15:00.{i:03d}Z"


def tags_for(i: int) -> list[str]:
    """Two tags that overlap: every third post carries both."""
    return [["selfie", "me"], ["selfie"], ["me"]][i % 3]


def build_two_servers(a: ts.MastodonAPIServer, b: ts.MastodonAPIServer, *, n_a=24, n_b=10,
                      n_shared=6) -> dict:
    """A (Mastodon: Link paging) has n_a posts; B (Pixelfed: max_id paging) has n_b of its own
    plus copies of A's first n_shared posts (same uri, B's ids, stale counts, B's copy of the
    image). -> {uri: what the catalog must say about it}."""
    expected = {}
    for i in range(1, n_a + 1):
        acc = ts.account(a.url, f"alice{i % 5}", followers=100 + 10 * i, account_id=str(i % 5))
        media = [ts.attachment(a.add_file(f"/system/media/{i}.jpg", photo(i)), media_id=str(i),
                               width=192, height=160)]
        if i % 4 == 0:   # a second image on some posts
            media.append(ts.attachment(a.add_file(f"/system/media/{i}b.png",
                                                  photo(100 + i, fmt="PNG"), "image/png"),
                                       media_id=f"{i}b", width=192, height=160))
        st = a.add_status(ts.status(a.url, str(110000 + i), acc, likes=3 * i, reblogs=i % 2,
                                    tags=tags_for(i), created_at=when(i), media=media))
        expected[st["uri"]] = dict(author=f"alice{i % 5}@{a.host}", followers=100 + 10 * i,
                                   likes=3 * i, tags=sorted(tags_for(i)), server=a.url,
                                   n_images=len(media))
        if i <= n_shared:   # B's copy: its own id, counts that lag, its cached file
            acc_b = ts.account(b.url, f"alice{i % 5}", followers=50 + i, home=a.url,
                               account_id=str(900 + i % 5))
            copy = b.add_file(f"/storage/cache/{i}.jpg", photo(i))
            media_b = [ts.attachment(copy, media_id=f"b{i}", remote_url=media[0]["url"])]
            if len(media) > 1:
                media_b.append(ts.attachment(b.add_file(f"/storage/cache/{i}b.png",
                                                        photo(100 + i, fmt="PNG"), "image/png"),
                                             media_id=f"b{i}b"))
            b.add_status(ts.status(b.url, str(7000 + i), acc_b, likes=i, tags=tags_for(i),
                                   created_at=when(i), media=media_b, uri=st["uri"]))
    for j in range(1, n_b + 1):
        acc = ts.account(b.url, f"bob{j % 3}", followers=40 + j, account_id=str(j % 3))
        url = b.add_file(f"/storage/m/{j}.jpg", photo(200 + j))
        st = b.add_status(ts.status(b.url, str(8000 + j), acc, likes=j, tags=tags_for(j),
                                    created_at=when(j), media=[ts.attachment(url,
                                                                             media_id=str(j))]))
        expected[st["uri"]] = dict(author=f"bob{j % 3}@{b.host}", followers=40 + j, likes=j,
                                   tags=sorted(tags_for(j)), server=b.url, n_images=1)
    return expected


def snapshot(data_dir) -> dict:
    """Everything a scrape leaves that must not depend on how often it was interrupted:
    the catalog's rows (without the timestamps, attempt counts and run records) and the files
    of the image store (name -> sha256 of the content)."""
    import hashlib
    import pathlib
    data_dir = pathlib.Path(data_dir)
    db = sqlite3.connect(data_dir / "catalog.sqlite")
    queries = {
        "posts": "SELECT id, uri, author_id, server, status_id, url, created_at, followers, "
                 "likes, reblogs, tags, sensitive, source FROM posts ORDER BY id",
        "authors": "SELECT id, acct, followers, indexable, noindex FROM authors ORDER BY id",
        "media": "SELECT id, post_id, position, kind, url, width, height, sha256 FROM media "
                 "ORDER BY id",
        "images": "SELECT * FROM images ORDER BY sha256",
        "downloads": "SELECT media_id, status, reason FROM downloads ORDER BY media_id",
        "cursors": "SELECT server, tag, state FROM cursors ORDER BY server, tag",
    }
    snap = {name: [tuple(r) for r in db.execute(sql)] for name, sql in queries.items()}
    snap["cursors"] = [(s, t, json.loads(state)) for s, t, state in snap["cursors"]]
    db.close()
    root = data_dir / "images"
    snap["files"] = sorted(
        (str(p.relative_to(data_dir)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return snap
