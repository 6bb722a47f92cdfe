"""The scrape stage against real HTTP servers on 127.0.0.1 that speak the Mastodon API."""
import json
import time

import pytest

from deepselfie.config import load_config
from deepselfie.errors import UserError
import mastodon_server as ts
from deepselfie.catalog import EXPORT_KEYS, Catalog
from scrape.stage import run_scrape
from scrape_corpus import HTML, bomb_png, build_two_servers, photo, snapshot, when

TOKEN = "pixelfed-secret-token"
FAST = ["scrape.backoff=0.01", "scrape.timeout=5", "scrape.retries=4", "scrape.max_wait=30",
        "scrape.page_interval=0"]


def config(data_dir, *overrides):
    return load_config(None, data_dir=data_dir, overrides=[*FAST, *overrides])


@pytest.fixture
def servers(monkeypatch):
    a = ts.MastodonAPIServer(flavor="mastodon").start()
    b = ts.MastodonAPIServer(flavor="pixelfed", token=TOKEN).start()
    monkeypatch.setenv("DS_TEST_PIXELFED_TOKEN", TOKEN)
    yield a, b
    a.stop()
    b.stop()


def two_server_config(data_dir, b, *extra):
    return config(data_dir, "scrape.page_size=3", f'scrape.tokens={{"{b.url}": '
                  f'"$DS_TEST_PIXELFED_TOKEN"}}', *extra)


def test_two_servers_two_tags_many_pages_each_post_once(servers, tmp_path):
    a, b = servers
    expected = build_two_servers(a, b)
    cfg = two_server_config(tmp_path, b)
    result = run_scrape(cfg, servers=[a.url, b.url], tags=["selfie", "me"])
    assert result["status"] == "done"

    with Catalog(cfg.catalog_path) as cat:
        rows = list(cat.export_rows())
        cursors = cat.stats()["cursors"]
    assert sorted(r["uri"] for r in rows) == sorted(expected)          # each post once
    for r in rows:
        want = expected[r["uri"]]
        assert (r["author"], r["followers"], r["likes"], r["tags"], r["server"]) == (
            want["author"], want["followers"], want["likes"], want["tags"], want["server"])
        assert len(r["images"]) == want["n_images"]
        for img in r["images"]:
            assert (cfg.data_dir / img["path"]).is_file()
            assert img["path"] == f"images/{img['sha256'][:2]}/{img['sha256']}." + \
                img["path"].rsplit(".", 1)[1]
    assert all(state["done"] and not state["error"] for state in cursors.values())
    assert len(cursors) == 4

    # >= 5 pages per tag on A (Link paging) and on B (max_id paging, no Link header)
    a_pages = [r for r in a.requests if r.path.startswith(ts.TIMELINE + "selfie")]
    assert len(a_pages) >= 5 and any("max_id" in r.query for r in a_pages)
    b_pages = [r for r in b.requests if r.path.startswith(ts.TIMELINE)]
    assert len([r for r in b_pages if r.path.endswith("/me")]) >= 5
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in b_pages)
    assert not any("Authorization" in r.headers for r in b.requests
                   if not r.path.startswith("/api/"))
    assert not any("Authorization" in r.headers for r in a.requests)

    # a rerun finds nothing new: one page per tag, no image fetched again
    n_a, n_b = len(a.requests), len(b.requests)
    before = snapshot(tmp_path)
    again = run_scrape(cfg, servers=[a.url, b.url], tags=["selfie", "me"])
    assert again.get("posts_new", 0) == 0 and again.get("images_kept", 0) == 0
    assert len(a.requests) - n_a == 2 and len(b.requests) - n_b == 2
    assert snapshot(tmp_path) == before


def test_the_home_servers_counts_win_in_either_order(servers, tmp_path):
    a, b = servers
    expected = build_two_servers(a, b, n_a=6, n_b=2, n_shared=6)
    cfg = two_server_config(tmp_path, b)
    run_scrape(cfg, servers=[b.url, a.url], tags=["selfie", "me"])   # the remote copy first
    with Catalog(cfg.catalog_path) as cat:
        rows = {r["uri"]: r for r in cat.export_rows()}
        n_images = cat.counts()["images"]
    assert len(rows) == len(expected)
    for uri, want in expected.items():
        assert (rows[uri]["likes"], rows[uri]["server"]) == (want["likes"], want["server"])
    assert n_images == 6 + 1 + 2     # B's cached copies have the same bytes: stored once


def test_faults_are_recorded_with_their_reason_and_the_run_completes(tmp_path):
    srv = ts.MastodonAPIServer(reset_after=0.5, slow_seconds=1.5).start()
    base = srv.url
    try:
        _faulty_server(srv)
        cfg = config(tmp_path, "scrape.page_size=4", "scrape.timeout=0.4")
        t0 = time.time()
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie", "me", "nosuchtag"])
        assert result["status"] == "done"
        with Catalog(cfg.catalog_path) as cat:
            outcome = {r["url"].rsplit("/", 1)[-1] if r["url"] else r["kind"] + "-no-url":
                       (r["status"], r["reason"]) for r in cat.execute(
                           """SELECT m.url, m.kind, d.status, d.reason FROM media m
                              JOIN downloads d ON d.media_id = m.id""")}
            cursors = cat.stats()["cursors"]
            assert cat.execute("SELECT COUNT(*) FROM media m LEFT JOIN downloads d "
                               "ON d.media_id = m.id WHERE d.status IS NULL").fetchone()[0] == 0
    finally:
        srv.stop()

    def reason(name):
        return outcome[name][1] or ""

    ok = [n for n, (s, _) in outcome.items() if s == "ok"]
    assert sorted(ok) == sorted(["ok1.jpg", "ok2.jpg", "burst.jpg", "slow.jpg", "reset.jpg",
                                 "limited.jpg", "page2.jpg", "ok3.jpg", "ok4.jpg", "p4.jpg",
                                 "p5.jpg"])
    assert outcome["always503.jpg"][0] == "failed" and "http 503" in reason("always503.jpg")
    assert outcome["alwaysreset.jpg"][0] == "failed" and \
        "connection" in reason("alwaysreset.jpg")
    assert outcome["truncated.jpg"] == ("skipped", outcome["truncated.jpg"][1])
    assert "truncated" in reason("truncated.jpg")
    assert outcome["page.html.jpg"][0] == "skipped" and "HTML" in reason("page.html.jpg")
    assert outcome["bomb.png"][0] == "skipped" and "too many pixels" in reason("bomb.png")
    assert outcome["tiny.jpg"][0] == "skipped" and "too small" in reason("tiny.jpg")
    assert outcome["ftp.jpg"][0] == "skipped" and "not http(s) (ftp)" in reason("ftp.jpg")
    assert outcome["file.jpg"][0] == "skipped" and "not http(s) (file)" in reason("file.jpg")
    assert outcome["gone.jpg"] == ("skipped", "http 404")
    assert outcome["clip.mp4"] == ("skipped", "not an image (gifv)")
    assert outcome["movie.mp4"] == ("skipped", "not an image (video)")
    assert outcome["image-no-url"] == ("skipped", "no media url")

    # 429 with an ISO X-RateLimit-Reset and no Retry-After: the retry waited for the reset
    hits = srv.requests_to("/system/limited.jpg")
    assert [h.status for h in hits] == [429, 200]
    assert hits[1].time - hits[0].time >= 0.5 - 0.05
    # the malformed page once: asked again and used; always: the tag stops there, cursor kept
    assert cursors[f"{base} #selfie"]["done"]
    stuck = cursors[f"{base} #me"]
    assert not stuck["done"] and "malformed JSON" in stuck["error"] and "max_id" in stuck["next"]
    assert "http 404" in cursors[f"{base} #nosuchtag"]["error"]
    assert "malformed JSON" in str(result["tag_errors"]) and "http 404" in str(result["tag_errors"])
    assert time.time() - t0 < 60


def _faulty_server(srv):
    """#selfie: 6 pages of posts whose images fail in every way (pages of 4, newest first:
    3004 3003 1018 1017 | 1016..1013 | 1012..1009 | ...); #me: 3004 3003 2005 2004 | broken."""
    acc = ts.account(srv.url, "carol", followers=300)
    files = {
        "ok1.jpg": photo(1), "ok2.jpg": photo(2), "burst.jpg": photo(3), "slow.jpg": photo(4),
        "reset.jpg": photo(5), "limited.jpg": photo(6), "always503.jpg": photo(7),
        "alwaysreset.jpg": photo(8), "truncated.jpg": photo(9)[:1500],
        "page.html.jpg": HTML, "bomb.png": bomb_png(), "tiny.jpg": photo(10, size=(40, 30)),
        "ftp.jpg": photo(11), "file.jpg": photo(12), "page2.jpg": photo(13),
    }
    for name, data in files.items():
        ctype = "text/html" if name.endswith("html.jpg") else "image/jpeg"
        srv.add_file(f"/system/{name}", data, ctype)
    srv.fail("/system/burst.jpg", "500", "503", "500")
    srv.fail("/system/slow.jpg", "timeout")
    srv.fail("/system/reset.jpg", "reset")
    srv.fail("/system/limited.jpg", "429")
    srv.fail_always("/system/always503.jpg", "503")
    srv.fail_always("/system/alwaysreset.jpg", "reset")
    srv.fail_always("/system/ftp.jpg", "redirect:ftp://files.example/ftp.jpg")
    srv.fail_always("/system/file.jpg", "redirect:file:///etc/passwd")
    media = [ts.attachment(f"{srv.url}/system/{n}", media_id=n) for n in files]
    media.append(ts.attachment(f"{srv.url}/system/gone.jpg", media_id="gone"))
    media.append(ts.attachment(f"{srv.url}/media/clip.mp4", kind="gifv", media_id="gifv"))
    media.append(ts.attachment(f"{srv.url}/media/movie.mp4", kind="video", media_id="video"))
    media.append(ts.attachment(None, media_id="null"))
    for i, m in enumerate(media):   # #selfie: one attachment per post, 19 posts
        srv.add_status(ts.status(srv.url, str(1000 + i), acc, likes=i, tags=["selfie"],
                                 created_at=when(i), media=[m]))
    timeline = ts.TIMELINE + "selfie"
    srv.fail(timeline, "429")                               # the first page: rate limited
    srv.fail(timeline, "503", "500", query={"max_id": "1017"})   # 5xx burst on page 2
    srv.fail(timeline, "malformed", query={"max_id": "1013"})   # junk once on page 3
    srv.fail(timeline, "timeout", query={"max_id": "1009"})     # page 4 answers too late once
    for k in range(6):   # #me: 6 posts, pages of 4; the second page is always junk
        url = srv.add_file(f"/system/p{k}.jpg", photo(20 + k))
        srv.add_status(ts.status(srv.url, str(2000 + k), acc, likes=k, tags=["me"],
                                 created_at=when(k), media=[ts.attachment(url)]))
    srv.fail_always(ts.TIMELINE + "me", "malformed", query={"max_id": "2004"})
    for k in (3, 4):
        url = srv.add_file(f"/system/ok{k}.jpg", photo(30 + k))
        srv.add_status(ts.status(srv.url, str(3000 + k), acc, likes=k, tags=["selfie", "me"],
                                 created_at=when(k), media=[ts.attachment(url)]))
    srv.missing_tags.add("nosuchtag")


def test_rate_limit_headers_pace_the_paging(tmp_path):
    srv = ts.MastodonAPIServer(rate_limit=(4, 1.0)).start()
    try:
        acc = ts.account(srv.url, "dan", followers=10)
        url = srv.add_file("/m/1.jpg", photo(1))
        for i in range(10):
            srv.add_status(ts.status(srv.url, str(100 + i), acc, likes=i, tags=["selfie"],
                                     created_at=when(i), media=[ts.attachment(url)]))
        cfg = config(tmp_path, "scrape.page_size=2")
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        pages = [r for r in srv.requests if r.path.startswith("/api/")]
    finally:
        srv.stop()
    assert result["posts_new"] == 10 and len(pages) == 6
    assert all(r.status == 200 for r in pages)    # paced to the headers: never a 429
    assert pages[-1].time - pages[0].time >= 1.0


def test_pages_after_the_first_keep_the_page_interval(tmp_path):
    with ts.MastodonAPIServer() as srv:
        acc = ts.account(srv.url, "gus", followers=10)
        url = srv.add_file("/m/1.jpg", photo(1))
        for i in range(6):
            srv.add_status(ts.status(srv.url, str(100 + i), acc, likes=i, tags=["selfie"],
                                     created_at=when(i), media=[ts.attachment(url)]))
        run_scrape(config(tmp_path, "scrape.page_size=2", "scrape.page_interval=0.25"),
                   servers=[srv.url], tags=["selfie"])
        pages = [r for r in srv.requests if r.path.startswith("/api/")]
    assert len(pages) == 4 and "max_id" not in pages[0].query
    gaps = [b.time - a.time for a, b in zip(pages[1:], pages[2:])]
    assert all(g >= 0.25 - 0.02 for g in gaps), gaps


def test_max_posts_stops_cleanly_and_the_next_runs_continue(servers, tmp_path):
    a, b = servers
    expected = build_two_servers(a, b, n_a=14, n_b=4, n_shared=3)
    cfg = two_server_config(tmp_path / "stepwise", b)
    counts = []
    for _ in range(4):
        r = run_scrape(cfg, servers=[a.url, b.url], tags=["selfie", "me"], max_posts=5)
        counts.append(r.get("posts_new", 0))
        with Catalog(cfg.catalog_path) as cat:
            assert cat.counts()["posts"] == sum(counts)
    assert counts == [5, 5, 5, len(expected) - 15]
    whole = two_server_config(tmp_path / "whole", b)
    run_scrape(whole, servers=[a.url, b.url], tags=["selfie", "me"])
    assert snapshot(tmp_path / "stepwise") == snapshot(tmp_path / "whole")


def test_opt_outs_are_skipped_and_counted(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        url = srv.add_file("/m/1.jpg", photo(1))
        people = {
            "ok": ts.account(srv.url, "ok", followers=5),
            "unindexable": ts.account(srv.url, "hidden", followers=5, indexable=False),
            "noindex": ts.account(srv.url, "noidx", followers=5, noindex=True),
            "bio": ts.account(srv.url, "bio", followers=5,
                              note='<p>photos <a href="x" class="mention hashtag">#<span>NoBot'
                                   '</span></a></p>'),
        }
        for i, (name, acc) in enumerate(people.items()):
            srv.add_status(ts.status(srv.url, str(10 + i), acc, likes=1, tags=["selfie"],
                                     created_at=when(i), media=[ts.attachment(url)]))
        srv.add_status(ts.status(srv.url, "20", people["ok"], likes=1,
                                 tags=["selfie", "noindex"], created_at=when(5),
                                 media=[ts.attachment(url)]))
        srv.add_status(ts.status(srv.url, "21", people["ok"], likes=1, tags=["selfie"],
                                 created_at=when(6), media=[ts.attachment(url)],
                                 content="<p>please #nobot</p>"))
        result = run_scrape(config(tmp_path), servers=[srv.url], tags=["selfie"])
    finally:
        srv.stop()
    assert result["posts_new"] == 1
    assert result["posts_skipped"] == {"count": 5, "reasons": {
        "opted out (#nobot on post)": 1, "opted out (#noindex on post)": 1,
        "opted out (#nobot in bio)": 1, "opted out (indexable: false)": 1,
        "opted out (noindex: true)": 1}}


def test_an_author_who_opts_out_later_is_flagged(tmp_path):
    with ts.MastodonAPIServer() as srv:
        acc = ts.account(srv.url, "fay", followers=5)
        url = srv.add_file("/m/1.jpg", photo(1))
        srv.add_status(ts.status(srv.url, "10", acc, likes=1, tags=["selfie"],
                                 created_at=when(1), media=[ts.attachment(url)]))
        cfg = config(tmp_path)
        run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        acc["indexable"] = False
        srv.add_status(ts.status(srv.url, "11", acc, likes=1, tags=["selfie"],
                                 created_at=when(2), media=[ts.attachment(url)]))
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
    assert result["authors_flagged_opted_out"] == 1 and "posts_new" not in result
    with Catalog(cfg.catalog_path) as cat:
        assert [tuple(r) for r in cat.execute("SELECT acct, noindex FROM authors")] == [
            (f"fay@{srv.host}", 1)]


def test_refresh_from_the_home_server(servers, tmp_path):
    a, b = servers
    expected = build_two_servers(a, b, n_a=4, n_b=1, n_shared=4)
    # A is not a configured server and is on 127.0.0.1: allowed by name (scrape.allow_hosts)
    cfg = two_server_config(tmp_path, b, "scrape.refresh_home=true",
                            f'scrape.allow_hosts=["{a.host}"]')
    result = run_scrape(cfg, servers=[b.url], tags=["me"])   # B only: A's posts come via B
    with Catalog(cfg.catalog_path) as cat:
        rows = {r["uri"]: r for r in cat.export_rows()}
    fresh = [u for u, w in expected.items() if w["server"] == a.url and u in rows]
    assert fresh and result["home_refreshed"] == len(fresh)
    for uri in fresh:
        assert (rows[uri]["likes"], rows[uri]["server"]) == (expected[uri]["likes"], a.url)
    assert any(r.path.startswith(ts.STATUS) for r in a.requests)


def test_a_rerun_picks_up_new_posts_and_stops_at_known_ones(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        acc = ts.account(srv.url, "eve", followers=10)
        for i in range(9):
            url = srv.add_file(f"/m/{i}.jpg", photo(i))
            srv.add_status(ts.status(srv.url, str(100 + i), acc, likes=i, tags=["selfie"],
                                     created_at=when(i), media=[ts.attachment(url)]))
        cfg = config(tmp_path, "scrape.page_size=3")
        run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        n = len(srv.requests)
        for i in (9, 10):
            url = srv.add_file(f"/m/{i}.jpg", photo(i))
            srv.add_status(ts.status(srv.url, str(100 + i), acc, likes=i, tags=["selfie"],
                                     created_at=when(i), media=[ts.attachment(url)]))
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        later = srv.requests[n:]
    finally:
        srv.stop()
    assert result["posts_new"] == 2 and result["images_kept"] == 2
    assert len([r for r in later if r.path.startswith("/api/")]) == 1


def test_a_missing_token_is_recorded_and_other_servers_go_on(servers, tmp_path):
    a, b = servers
    build_two_servers(a, b, n_a=3, n_b=3, n_shared=0)
    result = run_scrape(config(tmp_path), servers=[b.url, a.url], tags=["selfie"])
    assert "http 401 (this server wants an access token" in str(result["tag_errors"])
    assert result["posts_new"] == 2


@pytest.mark.parametrize("server", ["ftp://mastodon.example", "mastodon.social",
                                    "https://mastodon.social/api/v1"])
def test_only_http_servers_are_accepted(tmp_path, server):
    with pytest.raises(UserError, match="--server"):
        run_scrape(config(tmp_path), servers=[server], tags=["selfie"])


def test_cli_scrape_stats_and_export(servers, tmp_path, cli):
    a, b = servers
    expected = build_two_servers(a, b, n_a=6, n_b=0, n_shared=0)
    r = cli("scrape", "--data-dir", tmp_path, "--server", a.url, "--tag", "selfie",
            "--tag", "me", "--concurrency", "2", *sum((["--set", o] for o in FAST), []))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("scrape: 6 new posts") and "images kept" in r.stdout

    r = cli("catalog", "export", "--data-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(x["uri"] for x in rows) == sorted(expected)
    for row in rows:
        assert tuple(row) == EXPORT_KEYS
        assert row["images"] and all(set(i) == {"sha256", "path", "width", "height"}
                                     for i in row["images"])
    out = tmp_path / "export" / "posts.jsonl"
    r = cli("catalog", "export", "--data-dir", tmp_path, "-o", out)
    assert r.returncode == 0 and out.read_text().splitlines() == [json.dumps(x) for x in rows]

    r = cli("catalog", "stats", "--data-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "posts      6" in r.stdout and "#selfie: done" in r.stdout
    r = cli("catalog", "stats", "--json", "--data-dir", tmp_path)
    assert json.loads(r.stdout)["counts"]["posts"] == 6

    r = cli("scrape", "--data-dir", tmp_path, "--server", "gopher://x.example")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--server" in r.stderr
