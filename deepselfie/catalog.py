"""The catalog: one embedded SQLite file (WAL) that every stage reads and writes.

Stages exchange data only through this file and the image store, so any stage can be rerun alone.
The schema is versioned with ``PRAGMA user_version``; MIGRATIONS[i] takes version i to i + 1.
Append a migration to change it; never edit one that has landed.

Tables
  authors    one row per account (acct as the home server spells it, e.g. alice@example.org);
             noindex = 1 when the author has opted out since their posts were collected
  posts      one row per post, keyed by ``uri`` (the identity across servers)
  media      a post's attachments in order (``kind`` image, gifv, video, ...); ``sha256`` is set
             once the image is downloaded and kept
  images     the content-addressed store: images/<aa>/<sha256>.<ext>, decoded size
  downloads  the outcome per media row: ok, failed (transient: retried next run) or skipped
             (permanent: not an image, too big, gone, ...), with the reason
  cursors    the resume point per (server, tag)
  runs       one row per stage run: when, arguments, outcome, summary (``with catalog.run(...)``)
  faces      detected faces per image (by sha256), one row per face
  face_scans which images the face stage has looked at, with the face count
  labels     the label stage's output per post (group, rank, label, split), per label run

Every write that belongs together happens in one transaction, so a process killed at any moment
leaves the catalog as it was before or after that step, never in between.

This module alone speaks SQL (tests/test_sql_lives_in_the_catalog.py checks it): stages use the
methods of ``Catalog`` and get named records back (PostRecord, StoredImage, FaceScan,
LabelablePost, LabelRecord), and record their runs with ``with catalog.run(stage, args) as run``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass, field

from deepselfie.errors import UserError
from deepselfie.tally import StageRun, reason_kind

MIGRATIONS = [
    # 0 -> 1: the whole first schema
    """
    CREATE TABLE authors (
        id          INTEGER PRIMARY KEY,
        acct        TEXT NOT NULL UNIQUE,
        followers   INTEGER,
        indexable   INTEGER,          -- 1, 0 or NULL (unknown)
        noindex     INTEGER,
        updated_at  TEXT
    );
    CREATE TABLE posts (
        id          INTEGER PRIMARY KEY,
        uri         TEXT NOT NULL UNIQUE,
        author_id   INTEGER NOT NULL REFERENCES authors(id),
        server      TEXT NOT NULL,    -- the server the counts were read from
        status_id   TEXT,             -- the id on that server
        url         TEXT,
        created_at  TEXT NOT NULL,    -- ISO-8601, UTC
        fetched_at  TEXT NOT NULL,
        followers   INTEGER NOT NULL, -- author's followers when fetched
        likes       INTEGER NOT NULL, -- favourites_count
        reblogs     INTEGER NOT NULL DEFAULT 0,
        tags        TEXT NOT NULL,    -- JSON list of lower-case tag names
        sensitive   INTEGER NOT NULL DEFAULT 0,
        source      TEXT NOT NULL     -- mastodon | folder | ...
    );
    CREATE INDEX posts_author ON posts(author_id);
    CREATE TABLE images (
        sha256      TEXT PRIMARY KEY,
        path        TEXT NOT NULL,    -- relative to the data dir: images/ab/<sha256>.jpg
        width       INTEGER NOT NULL,
        height      INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        format      TEXT NOT NULL
    );
    CREATE TABLE media (
        id          INTEGER PRIMARY KEY,
        post_id     INTEGER NOT NULL REFERENCES posts(id),
        position    INTEGER NOT NULL,
        kind        TEXT NOT NULL DEFAULT 'image',  -- image | gifv | video | audio | unknown
        url         TEXT,
        width       INTEGER,          -- as the server claims (meta.original)
        height      INTEGER,
        sha256      TEXT REFERENCES images(sha256),
        UNIQUE (post_id, position)
    );
    CREATE INDEX media_url ON media(url);
    CREATE INDEX media_sha256 ON media(sha256);
    CREATE TABLE downloads (
        media_id    INTEGER PRIMARY KEY REFERENCES media(id),
        status      TEXT NOT NULL,    -- ok | failed | skipped
        reason      TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE cursors (
        server      TEXT NOT NULL,
        tag         TEXT NOT NULL,
        state       TEXT NOT NULL,    -- JSON: next page, newest id seen, done, last error
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (server, tag)
    );
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        stage       TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL DEFAULT 'running',   -- running | done | failed | interrupted
        args        TEXT,             -- JSON
        summary     TEXT              -- JSON
    );
    CREATE TABLE face_scans (
        sha256      TEXT PRIMARY KEY REFERENCES images(sha256),
        n_faces     INTEGER NOT NULL,
        largest_share REAL,           -- largest face box area / image area
        detector    TEXT NOT NULL,
        scanned_at  TEXT NOT NULL
    );
    CREATE TABLE faces (
        sha256      TEXT NOT NULL REFERENCES images(sha256),
        idx         INTEGER NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        score       REAL NOT NULL,
        landmarks   TEXT,             -- JSON [[x, y] x 5]
        PRIMARY KEY (sha256, idx)
    );
    CREATE TABLE labels (
        label_run   TEXT NOT NULL,    -- the run folder's name
        post_id     INTEGER NOT NULL REFERENCES posts(id),
        audience    REAL NOT NULL,
        grp         INTEGER NOT NULL,
        rank        INTEGER NOT NULL,
        label       INTEGER NOT NULL,
        split       TEXT NOT NULL,
        PRIMARY KEY (label_run, post_id)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# What `deepselfie catalog export` writes per post, in this order, and nothing else.
EXPORT_KEYS = ("uri", "author", "followers", "likes", "tags", "created_at", "fetched_at",
               "server", "images")


def utcnow() -> str:
    """Now as ISO-8601 UTC with seconds: 2026-11-29T17:40:32+00:00."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


_FRACTION = re.compile(r"(T\d{2}:\d{2}:\d{2})[.,]\d+")


def to_iso(value) -> str:
    """A datetime or ISO string -> canonical ISO-8601 UTC string, whole seconds.

    Accepts what servers send: ``Z`` or an offset, any number of fraction digits
    (``2019-12-08T03:48:33.901Z``), a bare date (midnight UTC). Raises ValueError otherwise.
    """
    if isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip())
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        value = dt.datetime.fromisoformat(text)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"not a date and time: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    try:
        return value.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()
    except OverflowError:   # 0001-01-01T00:00:00+05:00
        raise ValueError(f"date out of range: {value!r}") from None


def host_of(url: str | None) -> str:
    """The lower-case host[:port] of a URL ('' when there is none)."""
    try:
        return urllib.parse.urlsplit(url or "").netloc.lower()
    except ValueError:
        return ""


@dataclass
class MediaRecord:
    """One attachment. ``skip`` is why it will not be downloaded (not an image, no url, ...)."""

    url: str | None
    width: int | None = None
    height: int | None = None
    kind: str = "image"
    skip: str | None = None


@dataclass
class PostRecord:
    """A post as every source yields it."""

    uri: str
    author: str
    followers: int
    likes: int
    created_at: str
    fetched_at: str
    server: str
    tags: list[str] = field(default_factory=list)
    reblogs: int = 0
    sensitive: bool = False
    status_id: str | None = None
    url: str | None = None
    source: str = "mastodon"
    media: list[MediaRecord] = field(default_factory=list)


@dataclass
class StoredImage:
    """An image kept in the store: what the images table holds."""

    sha256: str
    path: str        # relative to the data dir
    width: int
    height: int
    bytes: int
    format: str


@dataclass(frozen=True)
class FaceRecord:
    """One detected face: box (x1, y1, x2, y2) in pixels of the full-size image, score and the
    five landmarks ([[x, y] x 5], or None)."""

    box: tuple
    score: float
    landmarks: list | None = None


@dataclass(frozen=True)
class FaceScan:
    """The face stage's verdict on one image: its faces and the largest one's share of it."""

    sha256: str
    faces: tuple = ()
    largest_share: float | None = None


@dataclass(frozen=True)
class LabelablePost:
    """A post as the label stage sees it: counts, dates, its first downloaded image and that
    image's face count (None: the face stage has not scanned it)."""

    post_id: int
    uri: str
    author: str
    followers: int
    likes: int
    tags: tuple = ()
    created_at: str = "2000-01-01T00:00:00+00:00"
    fetched_at: str = "2000-03-01T00:00:00+00:00"
    sha256: str | None = None     # the first downloaded image
    path: str | None = None       # its path relative to the data dir
    n_faces: int | None = None    # None: the face stage has not scanned it

    @property
    def n_tags(self) -> int:
        return len(self.tags)


@dataclass(frozen=True)
class LabelRecord:
    """The label stage's verdict on one post in one label run."""

    post_id: int
    audience: float
    group: int
    rank: int
    label: int
    split: str


class Catalog:
    """The SQLite catalog. ``with Catalog(path) as cat: ...`` closes it at the end.

    One connection per thread: open another Catalog on the same path in each worker thread.
    """

    def __init__(self, path, *, create: bool = True):
        self.path = pathlib.Path(path)
        if not create and not self.path.exists():
            raise UserError("no catalog here: run `deepselfie scrape` first", path=self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # check_same_thread=False only so that the owner may close it from another thread;
            # a connection is never used by two threads at once.
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise UserError(f"not a usable catalog ({e})", path=self.path) from None

    # ------------------------------------------------------------ plumbing
    def _migrate(self):
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"catalog schema v{version} is newer than this program's "
                            f"v{SCHEMA_VERSION}: upgrade deepselfie", path=self.path)
        for v in range(version, SCHEMA_VERSION):
            with self.transaction():
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version = {v + 1}")

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); nests as a no-op."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def execute(self, sql, params=()):
        """Raw SQL, for tests that look inside; program code uses the methods below."""
        return self.db.execute(sql, params)

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    # ------------------------------------------------------------ posts
    def upsert_author(self, acct: str, followers: int | None = None, *, indexable=None,
                      noindex=None) -> int:
        now = utcnow()
        self.db.execute(
            """INSERT INTO authors (acct, followers, indexable, noindex, updated_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(acct) DO UPDATE SET
                 followers = COALESCE(excluded.followers, followers),
                 indexable = COALESCE(excluded.indexable, indexable),
                 noindex = COALESCE(excluded.noindex, noindex),
                 updated_at = excluded.updated_at""",
            (acct, followers, None if indexable is None else int(indexable),
             None if noindex is None else int(noindex), now))
        return self.db.execute("SELECT id FROM authors WHERE acct = ?", (acct,)).fetchone()[0]

    def mark_opted_out(self, acct: str) -> bool:
        """An author we already have has opted out since: flag them (noindex = 1) so that later
        stages leave their posts alone. Authors we do not have are not recorded. -> flagged?"""
        return self.db.execute("UPDATE authors SET noindex = 1, updated_at = ? WHERE acct = ?",
                               (utcnow(), acct)).rowcount > 0

    def upsert_post(self, post: PostRecord) -> tuple[int, bool]:
        """Insert or refresh a post (counts, fetched_at) and its media; -> (post id, is new).

        A post read from its home server (the host of its uri) has the true counts; a copy read
        from another server is never allowed to replace it (the counts there lag behind).
        """
        with self.transaction():
            row = self.db.execute("SELECT id, server FROM posts WHERE uri = ?",
                                  (post.uri,)).fetchone()
            if row is not None and not _may_replace(post, row["server"]):
                return row["id"], False
            author_id = self.upsert_author(post.author, post.followers)
            values = (author_id, post.server, post.status_id, post.url, to_iso(post.created_at),
                      to_iso(post.fetched_at), int(post.followers), int(post.likes),
                      int(post.reblogs), json.dumps(sorted({t.lower() for t in post.tags})),
                      int(bool(post.sensitive)), post.source)
            if row is None:
                cur = self.db.execute(
                    """INSERT INTO posts (author_id, server, status_id, url, created_at,
                       fetched_at, followers, likes, reblogs, tags, sensitive, source, uri)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", values + (post.uri,))
                post_id, new = cur.lastrowid, True
            else:
                post_id, new = row["id"], False
                self.db.execute(
                    """UPDATE posts SET author_id=?, server=?, status_id=?, url=?, created_at=?,
                       fetched_at=?, followers=?, likes=?, reblogs=?, tags=?, sensitive=?,
                       source=? WHERE uri=?""", values + (post.uri,))
            self._sync_media(post_id, post.media)
        return post_id, new

    def _sync_media(self, post_id: int, media: list[MediaRecord]) -> None:
        for pos, m in enumerate(media):
            old = self.db.execute("SELECT id, url FROM media WHERE post_id = ? AND position = ?",
                                  (post_id, pos)).fetchone()
            if old is None:
                media_id = self.db.execute(
                    """INSERT INTO media (post_id, position, kind, url, width, height)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    (post_id, pos, m.kind, m.url, m.width, m.height)).lastrowid
            else:
                media_id = old["id"]
                self.db.execute("UPDATE media SET kind=?, url=?, width=?, height=? WHERE id=?",
                                (m.kind, m.url, m.width, m.height, media_id))
                if old["url"] != m.url:  # a new url deserves a new try, unless we have the image
                    self.db.execute("DELETE FROM downloads WHERE media_id = ? AND status != 'ok'",
                                    (media_id,))
            if m.skip:
                self.db.execute(
                    """INSERT INTO downloads (media_id, status, reason, attempts, updated_at)
                       VALUES (?, 'skipped', ?, 0, ?) ON CONFLICT(media_id) DO NOTHING""",
                    (media_id, m.skip, utcnow()))
        gone = [r[0] for r in self.db.execute(
            "SELECT id FROM media WHERE post_id = ? AND position >= ?", (post_id, len(media)))]
        for media_id in gone:
            self.db.execute("DELETE FROM downloads WHERE media_id = ?", (media_id,))
            self.db.execute("DELETE FROM media WHERE id = ?", (media_id,))

    # ------------------------------------------------------------ images and downloads
    def add_image(self, sha256: str, path: str, width: int, height: int, nbytes: int,
                  fmt: str) -> None:
        self.db.execute(
            """INSERT OR IGNORE INTO images (sha256, path, width, height, bytes, format)
               VALUES (?, ?, ?, ?, ?, ?)""", (sha256, path, width, height, nbytes, fmt))

    def record_download(self, media_id: int, status: str, reason: str | None = None, *,
                        sha256: str | None = None, attempts: int = 1) -> None:
        """Record a download outcome; with status ok, link the media row to its image."""
        with self.transaction():
            if sha256 is not None:
                self.db.execute("UPDATE media SET sha256 = ? WHERE id = ?", (sha256, media_id))
            self.db.execute(
                """INSERT INTO downloads (media_id, status, reason, attempts, updated_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(media_id) DO UPDATE SET status = excluded.status,
                     reason = excluded.reason, attempts = downloads.attempts + excluded.attempts,
                     updated_at = excluded.updated_at""",
                (media_id, status, reason, attempts, utcnow()))

    def keep_image(self, media_id: int, image: StoredImage, attempts: int = 1) -> None:
        """The image is in the store: add it and link the media row, in one transaction."""
        with self.transaction():
            self.add_image(image.sha256, image.path, image.width, image.height, image.bytes,
                           image.format)
            self.record_download(media_id, "ok", sha256=image.sha256, attempts=attempts)

    def image_for_url(self, url: str) -> str | None:
        """The sha256 of an image already kept from this url, if any."""
        row = self.db.execute("SELECT sha256 FROM media WHERE url = ? AND sha256 IS NOT NULL "
                              "LIMIT 1", (url,)).fetchone()
        return row[0] if row else None

    def pending_downloads(self, schemes=("http", "https"), post_ids=None) -> list[tuple[int, str]]:
        """(media id, url) still to fetch: never tried, or failed (transiently) before."""
        sql = """SELECT m.id, m.url FROM media m LEFT JOIN downloads d ON d.media_id = m.id
                 WHERE m.url IS NOT NULL AND (d.status IS NULL OR d.status = 'failed')"""
        params: list = []
        if post_ids is not None:
            post_ids = list(post_ids)
            if not post_ids:
                return []
            sql += f" AND m.post_id IN ({','.join('?' * len(post_ids))})"
            params += post_ids
        rows = self.db.execute(sql + " ORDER BY m.id", params).fetchall()
        schemes = tuple(s + ":" for s in schemes)
        return [(r[0], r[1]) for r in rows if r[1].lower().startswith(schemes)]

    # ------------------------------------------------------------ cursors and runs
    def get_cursor(self, server: str, tag: str) -> dict | None:
        row = self.db.execute("SELECT state FROM cursors WHERE server = ? AND tag = ?",
                              (server, tag)).fetchone()
        return json.loads(row[0]) if row else None

    def set_cursor(self, server: str, tag: str, state: dict) -> None:
        self.db.execute(
            """INSERT INTO cursors (server, tag, state, updated_at) VALUES (?, ?, ?, ?)
               ON CONFLICT(server, tag) DO UPDATE SET state = excluded.state,
                 updated_at = excluded.updated_at""",
            (server, tag, json.dumps(state, sort_keys=True), utcnow()))

    @contextlib.contextmanager
    def run(self, stage: str, args: dict | None = None):
        """``with catalog.run("faces", {...}) as run:`` records one stage run: a runs row marked
        running now, and at the end of the block its status (done; interrupted on Ctrl-C;
        failed, with the error, on any other exception) and ``run.summary()``."""
        cur = self.db.execute("INSERT INTO runs (stage, started_at, args) VALUES (?, ?, ?)",
                              (stage, utcnow(), json.dumps(args or {}, default=str)))
        run = StageRun(cur.lastrowid, stage)
        try:
            yield run
        except KeyboardInterrupt:
            run.end("interrupted")
            raise
        except BaseException as e:
            run.end("failed", str(e) or type(e).__name__)
            raise
        else:
            run.end("done")
        finally:
            self.db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                (utcnow(), run.status, json.dumps(run.summary(), default=str), run.id))

    def mark_interrupted(self, stage: str) -> int:
        """Runs of ``stage`` still marked running died (the caller holds the stage lock)."""
        return self.db.execute("UPDATE runs SET status = 'interrupted' WHERE stage = ? AND "
                               "status = 'running'", (stage,)).rowcount

    def runs(self, stage: str | None = None) -> list[dict]:
        """Recorded runs (of one stage), oldest first: id, stage, status, started_at,
        finished_at, args and summary (decoded)."""
        sql, params = "SELECT * FROM runs", ()
        if stage is not None:
            sql, params = sql + " WHERE stage = ?", (stage,)
        return [{"id": r["id"], "stage": r["stage"], "status": r["status"],
                 "started_at": r["started_at"], "finished_at": r["finished_at"],
                 "args": json.loads(r["args"] or "{}"),
                 "summary": json.loads(r["summary"]) if r["summary"] else None}
                for r in self.db.execute(sql + " ORDER BY id", params)]

    # ------------------------------------------------------------ faces
    def images_to_scan(self, *, rescan: bool = False) -> list[StoredImage]:
        """Images the face stage has not scanned yet (every image with ``rescan``), by sha256."""
        rows = self.db.execute(
            """SELECT i.* FROM images i LEFT JOIN face_scans s ON s.sha256 = i.sha256
               WHERE ? OR s.sha256 IS NULL ORDER BY i.sha256""", (int(rescan),))
        return [StoredImage(r["sha256"], r["path"], r["width"], r["height"], r["bytes"],
                            r["format"]) for r in rows]

    def record_face_scans(self, scans, detector: str) -> None:
        """Store each scan (its faces replace those of an earlier scan), in one transaction.
        Boxes are kept to 0.01 pixel."""
        now = utcnow()
        with self.transaction():
            for scan in scans:
                self.db.execute("DELETE FROM faces WHERE sha256 = ?", (scan.sha256,))
                self.db.executemany(
                    "INSERT INTO faces (sha256, idx, x1, y1, x2, y2, score, landmarks) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(scan.sha256, idx, *(round(float(v), 2) for v in f.box), float(f.score),
                      None if f.landmarks is None else json.dumps(f.landmarks))
                     for idx, f in enumerate(scan.faces)])
                self.db.execute(
                    "INSERT OR REPLACE INTO face_scans (sha256, n_faces, largest_share, "
                    "detector, scanned_at) VALUES (?, ?, ?, ?, ?)",
                    (scan.sha256, len(scan.faces), scan.largest_share, detector, now))

    def face_scan(self, sha256: str) -> dict | None:
        """An image's scan: n_faces, largest_share, detector, scanned_at and its faces
        (box, score, landmarks), or None when it has not been scanned."""
        row = self.db.execute("SELECT * FROM face_scans WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        faces = [FaceRecord((f["x1"], f["y1"], f["x2"], f["y2"]), f["score"],
                            None if f["landmarks"] is None else json.loads(f["landmarks"]))
                 for f in self.db.execute("SELECT * FROM faces WHERE sha256 = ? ORDER BY idx",
                                          (sha256,))]
        return {"n_faces": row["n_faces"], "largest_share": row["largest_share"],
                "detector": row["detector"], "scanned_at": row["scanned_at"], "faces": faces}

    # ------------------------------------------------------------ labels
    def labelable_posts(self) -> list[LabelablePost]:
        """Every post (by uri) with its first downloaded image and that image's face count."""
        rows = self.db.execute(
            """SELECT p.id, p.uri, a.acct, p.followers, p.likes, p.tags, p.created_at,
                      p.fetched_at, i.sha256, i.path, f.n_faces
               FROM posts p
               JOIN authors a ON a.id = p.author_id
               LEFT JOIN images i ON i.sha256 = (
                   SELECT m.sha256 FROM media m JOIN images im ON im.sha256 = m.sha256
                   WHERE m.post_id = p.id ORDER BY m.position LIMIT 1)
               LEFT JOIN face_scans f ON f.sha256 = i.sha256
               ORDER BY p.uri""")
        return [LabelablePost(post_id=r["id"], uri=r["uri"], author=r["acct"],
                              followers=r["followers"], likes=r["likes"],
                              tags=tuple(json.loads(r["tags"])), created_at=r["created_at"],
                              fetched_at=r["fetched_at"], sha256=r["sha256"], path=r["path"],
                              n_faces=r["n_faces"])
                for r in rows]

    def replace_labels(self, label_run: str, labels) -> None:
        """The label run's labels (LabelRecords) replace what that run stored before, in one
        transaction."""
        with self.transaction():
            self.db.execute("DELETE FROM labels WHERE label_run = ?", (label_run,))
            self.db.executemany(
                "INSERT INTO labels (label_run, post_id, audience, grp, rank, label, split) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(label_run, r.post_id, r.audience, r.group, r.rank, r.label, r.split)
                 for r in labels])

    def labels(self, label_run: str) -> dict[str, LabelRecord]:
        """A label run's stored labels by post uri."""
        return {r["uri"]: LabelRecord(r["post_id"], r["audience"], r["grp"], r["rank"],
                                      r["label"], r["split"])
                for r in self.db.execute(
                    """SELECT p.uri, l.* FROM labels l JOIN posts p ON p.id = l.post_id
                       WHERE l.label_run = ? ORDER BY p.uri""", (label_run,))}

    # ------------------------------------------------------------ reads
    def counts(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "posts": q("SELECT COUNT(*) FROM posts"),
            "authors": q("SELECT COUNT(*) FROM authors"),
            "media": q("SELECT COUNT(*) FROM media"),
            "images": q("SELECT COUNT(*) FROM images"),
            "downloads_ok": q("SELECT COUNT(*) FROM downloads WHERE status = 'ok'"),
            "downloads_failed": q("SELECT COUNT(*) FROM downloads WHERE status = 'failed'"),
            "downloads_skipped": q("SELECT COUNT(*) FROM downloads WHERE status = 'skipped'"),
            "face_scans": q("SELECT COUNT(*) FROM face_scans"),
            "images_with_faces": q("SELECT COUNT(*) FROM face_scans WHERE n_faces > 0"),
            "labeled_posts": q("SELECT COUNT(DISTINCT post_id) FROM labels"),
        }

    def stats(self) -> dict:
        """counts() plus the breakdowns `deepselfie catalog stats` prints."""
        def grouped(sql):
            return {str(k): n for k, n in self.db.execute(sql)}
        return {
            "counts": self.counts(),
            "image_bytes": self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM images")
                                  .fetchone()[0],
            "posts_by_server": grouped("SELECT server, COUNT(*) FROM posts GROUP BY server "
                                       "ORDER BY server"),
            "media_by_kind": grouped("SELECT kind, COUNT(*) FROM media GROUP BY kind "
                                     "ORDER BY kind"),
            "pending_downloads": self.db.execute(
                """SELECT COUNT(*) FROM media m LEFT JOIN downloads d ON d.media_id = m.id
                   WHERE d.status IS NULL""").fetchone()[0],
            "downloads_by_reason": _by_kind(self.db.execute(
                """SELECT status, COALESCE(reason, ''), COUNT(*) FROM downloads
                   WHERE status != 'ok' GROUP BY status, reason""")),
            "cursors": {f"{s} #{t}": json.loads(state) for s, t, state in self.db.execute(
                "SELECT server, tag, state FROM cursors ORDER BY server, tag")},
        }

    def iter_posts(self):
        """Every post with its author and images (dicts, by post id)."""
        rows = self.db.execute(
            """SELECT p.*, a.acct AS author FROM posts p JOIN authors a ON a.id = p.author_id
               ORDER BY p.id""")
        for p in rows:
            images = [dict(sha256=r["sha256"], path=r["path"], width=r["width"],
                           height=r["height"])
                      for r in self.db.execute(
                          """SELECT i.* FROM media m JOIN images i ON i.sha256 = m.sha256
                             WHERE m.post_id = ? ORDER BY m.position""", (p["id"],))]
            yield {
                "id": p["id"], "uri": p["uri"], "author": p["author"],
                "followers": p["followers"], "likes": p["likes"], "reblogs": p["reblogs"],
                "tags": json.loads(p["tags"]), "created_at": p["created_at"],
                "fetched_at": p["fetched_at"], "server": p["server"], "source": p["source"],
                "sensitive": bool(p["sensitive"]), "images": images,
            }

    def export_rows(self):
        """One dict per post with exactly EXPORT_KEYS, as `deepselfie catalog export` writes."""
        for post in self.iter_posts():
            yield {k: post[k] for k in EXPORT_KEYS}


def _by_kind(rows) -> dict:
    """(status, reason, n) rows -> {'status: reason kind': n}, most frequent first."""
    counts: dict = {}
    for status, reason, n in rows:
        key = f"{status}: {reason_kind(reason)}"
        counts[key] = counts.get(key, 0) + n
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _may_replace(post: PostRecord, stored_server: str) -> bool:
    """May ``post`` (read from post.server) replace the stored copy read from stored_server?"""
    home = host_of(post.uri)
    return host_of(post.server) == home or host_of(stored_server) != home
