"""The SQLite catalog: migrations, upserts keyed by uri, downloads, export rows."""
import sqlite3
import subprocess
import sys

import pytest

from deepselfie.errors import UserError
from deepselfie.catalog import (EXPORT_KEYS, SCHEMA_VERSION, Catalog, FaceRecord, FaceScan,
                                LabelablePost, LabelRecord, MediaRecord, PostRecord, StoredImage,
                                to_iso)


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


def test_a_remote_copy_never_replaces_the_home_servers_counts(tmp_path):
    home = _post(uri="https://a.example/users/al/statuses/1", likes=30, server="https://a.example")
    remote = _post(uri=home.uri, likes=2, server="https://b.example")
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.upsert_post(remote)
        cat.upsert_post(home)                                  # home replaces remote
        cat.upsert_post(remote)                                # remote does not replace home
        (row,) = cat.iter_posts()
        assert (row["likes"], row["server"]) == (30, "https://a.example")


def test_media_to_download_and_a_changed_url(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        post = _post(media=[MediaRecord("https://a.example/m/1.jpg"),
                            MediaRecord("https://a.example/m/2.mp4", kind="video",
                                        skip="not an image (video)"),
                            MediaRecord(None, skip="no media url")])
        pid, _ = cat.upsert_post(post)
        (m1, url), = cat.pending_downloads()
        assert url == "https://a.example/m/1.jpg"
        cat.record_download(m1, "failed", "http 503")
        assert cat.pending_downloads() == [(m1, url)]          # failed: tried again
        cat.record_download(m1, "skipped", "http 404")
        assert cat.pending_downloads() == []
        post.media[0] = MediaRecord("https://a.example/m/1-new.jpg")
        cat.upsert_post(post)                                  # a new url: a new chance
        assert cat.pending_downloads() == [(m1, "https://a.example/m/1-new.jpg")]
        post.media = post.media[:1]
        cat.upsert_post(post)                                  # attachments removed
        assert cat.counts()["media"] == 1
        assert cat.pending_downloads(post_ids=[pid + 1]) == []


def test_cursors_runs_and_export_keys(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        assert cat.get_cursor("https://a.example", "selfie") is None
        cat.set_cursor("https://a.example", "selfie", {"next": "u", "done": False})
        assert cat.get_cursor("https://a.example", "selfie") == {"next": "u", "done": False}
        killed = ("import os, sys\nfrom deepselfie.catalog import Catalog\n"
                  "with Catalog(sys.argv[1]).run('scrape'):\n    os._exit(9)\n")
        subprocess.run([sys.executable, "-c", killed, str(cat.path)], check=False)
        assert cat.runs("scrape")[0]["status"] == "running"     # its process died mid-run
        assert cat.mark_interrupted("scrape") == 1
        assert cat.runs("scrape")[0]["status"] == "interrupted"
        cat.upsert_post(_post())
        (row,) = cat.export_rows()
        assert tuple(row) == EXPORT_KEYS


def test_opted_out_authors_we_have_are_flagged(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.upsert_post(_post())
        assert cat.mark_opted_out("alice@a.example")
        assert not cat.mark_opted_out("stranger@b.example")   # not recorded at all
        assert [tuple(r) for r in cat.execute("SELECT acct, noindex FROM authors")] == [
            ("alice@a.example", 1)]


def test_a_run_records_its_outcome_counters_and_details(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        with cat.run("faces", {"rescan": True}) as run:
            run.add("scanned", n=3)
            run.add("unreadable", "bad header (byte 12)")
            run.details["detector"] = "test"
            assert cat.runs("faces")[0]["status"] == "running"
        assert run.status == "done"
        with pytest.raises(KeyboardInterrupt), cat.run("faces") as stopped:
            stopped.add("scanned")
            raise KeyboardInterrupt
        with pytest.raises(ValueError), cat.run("label"):
            raise ValueError("no groups")
        done, interrupted = cat.runs("faces")
        (failed,) = cat.runs("label")
    assert done["args"] == {"rescan": True} and done["finished_at"]
    assert done["summary"]["scanned"] == 3 and done["summary"]["detector"] == "test"
    assert done["summary"]["unreadable"] == {"count": 1, "reasons": {"bad header": 1}}
    assert done["summary"]["status"] == "done" and done["summary"]["seconds"] >= 0
    assert run.summary() == done["summary"]               # the clock stopped with the run
    assert interrupted["status"] == "interrupted" and interrupted["summary"]["scanned"] == 1
    assert failed["status"] == "failed" and failed["summary"]["error"] == "no groups"


def _image(cat, sha, w=10, h=8):
    image = StoredImage(sha, f"images/{sha[:2]}/{sha}.png", w, h, 100, "PNG")
    cat.add_image(image.sha256, image.path, image.width, image.height, image.bytes,
                  image.format)
    return image


def test_face_scans_replace_earlier_ones_and_mark_images_scanned(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        a, b = _image(cat, "a" * 64), _image(cat, "b" * 64)
        assert cat.images_to_scan() == [a, b]
        face = FaceRecord((1.234, 2, 7.777, 6), 0.99, [[2, 3]] * 5)
        cat.record_face_scans([FaceScan(a.sha256, (face, face), 0.5)], "mtcnn test")
        assert cat.images_to_scan() == [b]
        assert cat.images_to_scan(rescan=True) == [a, b]
        cat.record_face_scans([FaceScan(a.sha256, (face,), 0.25),
                               FaceScan(b.sha256, (), 0.0)], "mtcnn again")
        assert cat.images_to_scan() == []
        scan = cat.face_scan(a.sha256)
        assert cat.face_scan("c" * 64) is None
        assert cat.counts()["images_with_faces"] == 1
    assert scan["n_faces"] == 1 and scan["largest_share"] == 0.25
    assert scan["detector"] == "mtcnn again"
    assert scan["faces"] == [FaceRecord((1.23, 2.0, 7.78, 6.0), 0.99, [[2, 3]] * 5)]


def test_labelable_posts_are_named_records_and_labels_are_replaced_per_run(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        pid, _ = cat.upsert_post(_post(tags=["Selfie", "me"], likes=7))
        pid2, _ = cat.upsert_post(_post(uri="https://a.example/p/2", media=[]))
        image = _image(cat, "d" * 64)
        ((media_id, _),) = cat.pending_downloads(post_ids=[pid])
        cat.record_download(media_id, "ok", sha256=image.sha256)
        cat.record_face_scans([FaceScan(image.sha256, (), 0.0)], "t")
        first, second = cat.labelable_posts()
        assert first == LabelablePost(
            post_id=pid, uri="https://a.example/p/1", author="alice@a.example", followers=120,
            likes=7, tags=("me", "selfie"), created_at="2026-01-02T03:04:05+00:00",
            fetched_at="2026-03-01T00:00:00+00:00", sha256=image.sha256, path=image.path,
            n_faces=0)
        assert second.post_id == pid2 and second.sha256 is None and second.n_faces is None
        cat.replace_labels("run1", [LabelRecord(pid, 1.5, 0, 0, 1, "train"),
                                    LabelRecord(pid2, 1.0, 0, 1, 0, "val")])
        cat.replace_labels("run2", [LabelRecord(pid, 2.5, 3, 4, 0, "test")])
        cat.replace_labels("run1", [LabelRecord(pid2, 1.0, 0, 1, 0, "test")])
        assert cat.labels("run1") == {"https://a.example/p/2": LabelRecord(pid2, 1.0, 0, 1, 0,
                                                                            "test")}
        assert cat.labels("run2") == {"https://a.example/p/1": LabelRecord(pid, 2.5, 3, 4, 0,
                                                                            "test")}
        assert cat.counts()["labeled_posts"] == 2
