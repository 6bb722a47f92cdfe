"""The SQLite catalog: migrations, upserts keyed by uri, downloads, export rows."""
import sqlite3

import pytest

from deepselfie.errors import UserError
from scrape.catalog import SCHEMA_VERSION, Catalog, MediaRecord, PostRecord, to_iso


def _post(uri="https://a.example/p/1", likes=3, **kw):
    base = dict(uri=uri, author="alice@a.example", followers=120, likes=likes,
                created_at="2026-01-02T03:04:05Z", fetched_at="2026-03-01T00:00:00+00:00",
                server="https://a.example", tags=["Selfie", "me"],
                media=[MediaRecord("https://a.example/m/1.jpg", 640, 480)])
    base.update(kw)
    return PostRecord(**base)


def test_new_catalog_is_migrated_and_in_wal_mode(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        assert cat.version == SCHEMA_VERSION
        assert cat.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Catalog(tmp_path / "c.sqlite") as cat:   # reopening migrates nothing
        assert cat.version == SCHEMA_VERSION


def test_upsert_keys_posts_by_uri_and_refreshes_counts(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        pid, new = cat.upsert_post(_post())
        assert new
        pid2, new2 = cat.upsert_post(_post(likes=9))
        assert (pid2, new2) == (pid, False)
        rows = list(cat.iter_posts())
        assert len(rows) == 1 and rows[0]["likes"] == 9
        assert rows[0]["tags"] == ["me", "selfie"]
        assert rows[0]["created_at"] == "2026-01-02T03:04:05+00:00"
        assert cat.counts()["media"] == 1


def test_downloads_link_media_to_images(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        pid, _ = cat.upsert_post(_post())
        mid = cat.execute("SELECT id FROM media WHERE post_id = ?", (pid,)).fetchone()[0]
        cat.add_image("ab" * 32, "images/ab/" + "ab" * 32 + ".jpg", 640, 480, 1234, "JPEG")
        cat.record_download(mid, "ok", sha256="ab" * 32)
        (row,) = cat.iter_posts()
        assert row["images"] == [dict(sha256="ab" * 32, path="images/ab/" + "ab" * 32 + ".jpg",
                                      width=640, height=480)]
        assert cat.counts()["downloads_ok"] == 1


def test_a_failed_transaction_leaves_nothing(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        with pytest.raises((sqlite3.IntegrityError, TypeError, ValueError)):
            cat.upsert_post(_post(created_at=None))
        assert cat.counts()["posts"] == 0 and cat.counts()["authors"] == 0


def test_a_file_that_is_not_a_catalog_is_one_clear_error(tmp_path):
    p = tmp_path / "c.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable catalog"):
        Catalog(p)


def test_missing_catalog_when_not_creating(tmp_path):
    with pytest.raises(UserError, match="no catalog here"):
        Catalog(tmp_path / "none.sqlite", create=False)


def test_to_iso_normalizes_offsets():
    assert to_iso("2026-01-01T05:00:00+02:00") == "2026-01-01T03:00:00+00:00"
