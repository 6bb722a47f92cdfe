"""The folder source: your own images plus a metadata CSV."""
import json

import pytest

from deepselfie.config import load_config
from deepselfie.catalog import Catalog
from scrape.stage import run_scrape
from scrape_corpus import HTML, photo, snapshot

HEADER = "file,uri,author,followers,likes,tags,created_at,fetched_at\n"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(photo(1))
    (d / "sub" / "b.png").write_bytes(photo(2, fmt="PNG"))
    (d / "c.jpg").write_bytes(photo(3))
    (d / "broken.jpg").write_bytes(HTML)
    return d


def write_csv(path, rows):
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


ROWS = [
    "a.jpg,https://x.example/p/1,ann,120,14,#selfie me,2025-01-02T03:04:05Z,2025-03-01T00:00:00Z",
    "sub/b.png,https://x.example/p/1,ann,120,14,selfie me,2025-01-02T03:04:05Z,",
    "c.jpg,,bo,40,2,selfie,2025-02-02T00:00:00+01:00,",
    "broken.jpg,,cy,10,0,,2025-02-03T00:00:00Z,",
]


def test_import_a_folder(folder, tmp_path, cli):
    meta = write_csv(tmp_path / "meta.csv", ROWS)
    data = tmp_path / "data"
    r = cli("scrape", "--source", "folder", "--folder", folder, "--metadata", meta,
            "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("scrape: 3 new posts") and "1 images skipped" in r.stdout
    rows = {x["uri"]: x for x in map(json.loads, cli("catalog", "export", "--data-dir",
                                                     data).stdout.splitlines())}
    one = rows["https://x.example/p/1"]
    assert (one["author"], one["followers"], one["likes"], one["tags"]) == ("ann", 120, 14,
                                                                            ["me", "selfie"])
    assert one["fetched_at"] == "2025-03-01T00:00:00+00:00" and one["server"] == "folder"
    assert [i["path"].rsplit(".", 1)[1] for i in one["images"]] == ["jpg", "png"]
    c = rows[(folder / "c.jpg").as_uri()]                  # uri defaults to the file
    assert c["created_at"] == "2025-02-01T23:00:00+00:00" and c["fetched_at"]
    assert rows[(folder / "broken.jpg").as_uri()]["images"] == []
    with Catalog(data / "catalog.sqlite") as cat:
        assert cat.execute("SELECT reason FROM downloads WHERE status = 'skipped'"
                           ).fetchone()[0] == "not an image (HTML)"

    before = snapshot(data)   # importing again changes nothing (but fetched_at defaults)
    assert cli("scrape", "--source", "folder", "--folder", folder, "--metadata", meta,
               "--data-dir", data).returncode == 0
    assert snapshot(data) == before


@pytest.mark.parametrize("row,where,message", [
    ("a.jpg,,ann,many,1,,2025-01-01T00:00:00Z,", ":3: followers", "whole number"),
    ("a.jpg,,ann,1,-1,,2025-01-01T00:00:00Z,", ":3: likes", "whole number"),
    ("a.jpg,,ann,1,1,,last tuesday,", ":3: created_at", "ISO-8601"),
    ("nope.jpg,,ann,1,1,,2025-01-01T00:00:00Z,", ":3: file", "no such file"),
    ("a.jpg,,,1,1,,2025-01-01T00:00:00Z,", ":3: author", "empty"),
    ("a.jpg,https://x.example/p/1,zed,120,14,,2025-01-02T03:04:05Z,", ":3: author",
     "repeats with a different author"),
    ("a.jpg,,ann,1,1,,2025-01-01T00:00:00Z,,extra", ":3", "more fields than columns"),
    ("a\x00b.jpg,,ann,1,1,,2025-01-01T00:00:00Z,", ":3: file",
     "not a usable file name (embedded null byte)"),
    ("a" * 5000 + ".jpg,,ann,1,1,,2025-01-01T00:00:00Z,", ":3: file",
     "not a usable file name (File name too long)"),
], ids=["count_word", "negative", "date_words", "missing_file", "no_author", "author_changes",
        "extra_field", "nul_in_name", "name_too_long"])
def test_a_bad_row_is_one_clear_error_and_nothing_is_written(folder, tmp_path, cli, row, where,
                                                             message):
    data = tmp_path / "data"
    good = write_csv(tmp_path / "good.csv", ROWS[:1])
    run_scrape(load_config(None, data_dir=data), source="folder", folder=folder, metadata=good)
    before = snapshot(data)
    bad = write_csv(tmp_path / "bad.csv", [ROWS[0], row])
    r = cli("scrape", "--source", "folder", "--folder", folder, "--metadata", bad,
            "--data-dir", data)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"{bad}{where}:" in r.stderr and message in r.stderr
    assert snapshot(data) == before


@pytest.mark.parametrize("row,field", [
    ("c.jpg,,bo,100000000000000000000000,2,selfie,2025-02-02T00:00:00Z,", "followers"),
    ("c.jpg,,bo,40,\u00b2,selfie,2025-02-02T00:00:00Z,", "likes"),
    ("c.jpg,,bo,40,9223372036854775808,selfie,2025-02-02T00:00:00Z,", "likes"),
])
def test_a_bad_count_after_good_rows_writes_nothing(folder, tmp_path, cli, row, field):
    """Issue 15 item 8: followers 10**23 or likes "²" on row 3 used to commit rows 1-2 and then
    end in a traceback."""
    data = tmp_path / "data"
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "".join(r + "\n" for r in [ROWS[0], ROWS[1], row]), encoding="utf-8")
    r = cli("scrape", "--source", "folder", "--folder", folder, "--metadata", bad,
            "--data-dir", data)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{bad}:4: {field}:" in r.stderr and "whole number" in r.stderr
    if (data / "catalog.sqlite").exists():
        with Catalog(data / "catalog.sqlite") as cat:
            assert cat.execute("SELECT COUNT(*) FROM posts").fetchone()[0] == 0


def test_header_problems(folder, tmp_path, cli):
    meta = tmp_path / "m.csv"
    meta.write_text("file,author,likes\na.jpg,ann,3\n")
    r = cli("scrape", "--source", "folder", "--folder", folder, "--metadata", meta,
            "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and "missing column(s) followers, created_at" in r.stderr
    meta.write_text("file,author,followers,likes,created_at,likez\n")
    r = cli("scrape", "--source", "folder", "--folder", folder, "--metadata", meta,
            "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and "unknown column(s) likez" in r.stderr
    r = cli("scrape", "--source", "folder", "--folder", folder, "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and "--metadata" in r.stderr
    r = cli("scrape", "--source", "folder", "--folder", tmp_path / "none", "--metadata", meta,
            "--data-dir", tmp_path / "d")
    assert r.returncode == 2 and "not a folder" in r.stderr
