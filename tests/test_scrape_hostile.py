"""The scrape stage against hostile Mastodon-API servers on 127.0.0.1 (issue 15, items 4-7):
bad statuses and pages are skipped with their reason and the run goes on; paging ends on cycles,
on pages that bring nothing new and at scrape.max_pages; downloads have a deadline; media and
redirects that lead to a private address other than a configured server are refused."""
import json

import mastodon_server as ts
from deepselfie.catalog import Catalog
from deepselfie.config import load_config
from scrape.counts import parse_count
from scrape.jsonbody import BadJSON, loads, nesting_depth
from scrape.stage import run_scrape
from scrape_corpus import photo, when

FAST = ["scrape.backoff=0.01", "scrape.timeout=5", "scrape.retries=1", "scrape.max_wait=30",
        "scrape.page_interval=0"]


def config(data_dir, *overrides):
    return load_config(None, data_dir=data_dir, overrides=[*FAST, *overrides])


def media_outcomes(cfg) -> dict:
    with Catalog(cfg.catalog_path) as cat:
        return {r["url"].rsplit("/", 1)[-1]: (r["status"], r["reason"] or "") for r in cat.execute(
            "SELECT m.url, d.status, d.reason FROM media m JOIN downloads d "
            "ON d.media_id = m.id")}


def uris(cfg) -> set:
    with Catalog(cfg.catalog_path) as cat:
        return {r["uri"] for r in cat.export_rows()}


def post(srv, i, *, tag="selfie", followers=100, likes=5, media=None, **changes):
    acc = ts.account(srv.url, f"user{i}", followers=followers, account_id=str(i))
    if media is None:
        media = [ts.attachment(srv.add_file(f"/m/{tag}{i}.jpg", photo(i)), media_id=str(i))]
    st = ts.status(srv.url, str(1000 + i), acc, likes=likes, tags=[tag], created_at=when(i),
                   media=media)
    st.update(changes)
    return srv.add_status(st)


def test_counts_are_ascii_whole_numbers_that_fit_the_catalog():
    assert [parse_count(v) for v in (0, "12", " 7 ", 3.0, 2 ** 63 - 1)] == [
        0, 12, 7, 3, 2 ** 63 - 1]
    for bad in (10 ** 30, 1.5e300, 2 ** 63, "9223372036854775808", "²", "٣", "1e3", -1, 2.5,
                float("nan"), float("inf"), True, None, "", "1" * 5000):
        assert parse_count(bad) is None, bad


def test_json_depth_is_bounded_before_parsing():
    assert nesting_depth(b'[{"a": "[[[[{{{", "b": [1, [2]]}]') == 4
    deep = b"[" * 100_000 + b"]" * 100_000
    assert nesting_depth(deep) == 100_000
    try:
        loads(deep)
    except BadJSON as e:
        assert "nested 100000 deep" in str(e)
    else:
        raise AssertionError("a body nested 100000 deep was parsed")
    assert loads(b'{"a": [1, {"b": "]]]"}]}') == {"a": [1, {"b": "]]]"}]}


def test_hostile_statuses_and_pages_are_skipped_and_later_tags_are_reached(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        good = post(srv, 1)
        post(srv, 2, followers=10 ** 30)
        post(srv, 3, followers=1.5e300)
        post(srv, 4, favourites_count=2 ** 63)
        post(srv, 5, followers="²")
        st = post(srv, 6)
        st["media_attachments"][0]["meta"] = {"original": {"size": "1" * 40 + "x1"}}
        post(srv, 7, tag="me")
        post(srv, 8, tag="later")
        srv.fail_always(ts.TIMELINE + "me", "deep")      # the whole #me page: nested 100k deep
        cfg = config(tmp_path)
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie", "me", "later"])
    finally:
        srv.stop()
    assert result["status"] == "done"
    kept = uris(cfg)
    assert good["uri"] in kept and st["uri"] in kept
    assert f"{srv.url}/users/user8/statuses/1008" in kept            # the tag after the bad one
    assert result["posts_skipped"]["count"] == 4
    assert result["posts_skipped"]["reasons"] == {
        "incomplete status (no account.followers_count)": 3,
        "incomplete status (no favourites_count)": 1}
    assert "nested 100000 deep" in json.dumps(result["tag_errors"])
    with Catalog(cfg.catalog_path) as cat:
        assert tuple(cat.execute("SELECT MAX(followers), MAX(likes) FROM posts").fetchone()) == (
            100, 5)


def _pages(srv, n, tag="selfie"):
    for i in range(1, n + 1):
        post(srv, i, tag=tag)


def test_a_link_cycle_ends_the_paging(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        _pages(srv, 9)
        cfg = config(tmp_path, "scrape.page_size=3")
        first = f"{srv.url}{ts.TIMELINE}selfie?limit=3&only_media=true"
        # page 1 -> page 2 (max_id=1007, the server's own Link) -> page 1 again
        srv.fail_always(ts.TIMELINE + "selfie", f"link:{first}", query={"max_id": "1007"})
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        with Catalog(cfg.catalog_path) as cat:
            cursor = cat.stats()["cursors"][f"{srv.url} #selfie"]
    finally:
        srv.stop()
    assert result["pages"] == 2 and result["posts_new"] == 6
    assert "already read this run" in json.dumps(result["paging_stopped"])
    assert cursor["done"] and cursor["next"] is None
    assert len(srv.requests_to(ts.TIMELINE + "selfie")) == 2


def test_an_ever_new_next_url_with_the_same_posts_ends_the_paging(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        _pages(srv, 3)
        srv.fail_always(ts.TIMELINE + "selfie", "same-page")
        cfg = config(tmp_path, "scrape.page_size=3", "scrape.max_posts=100")
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
    finally:
        srv.stop()
    assert result["pages"] == 2 and result["posts_new"] == 3
    assert "no status not already read" in json.dumps(result["paging_stopped"])


def test_max_pages_pauses_the_tag_and_the_next_run_goes_on(tmp_path):
    srv = ts.MastodonAPIServer().start()
    try:
        _pages(srv, 9)
        post(srv, 20, tag="other")
        cfg = config(tmp_path, "scrape.page_size=2", "scrape.max_pages=2")
        first = run_scrape(cfg, servers=[srv.url], tags=["selfie", "other"])
        assert first["pages"] == 3 and first["posts_new"] == 5          # 2 + 2, then #other
        assert "scrape.max_pages" in json.dumps(first["tags_paused"])
        second = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        third = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
    finally:
        srv.stop()
    assert second["posts_new"] == 4 and third["posts_new"] == 1
    assert len(uris(cfg)) == 10


def test_a_trickling_download_is_cut_at_the_deadline(tmp_path):
    srv = ts.MastodonAPIServer(trickle_seconds=2.0).start()
    try:
        post(srv, 1)
        post(srv, 2)
        srv.fail_always("/m/selfie2.jpg", "trickle")    # one byte every 2 s, under the timeout
        cfg = config(tmp_path, "scrape.timeout=5", "scrape.deadline=3")
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
    finally:
        srv.stop()
    outcome = media_outcomes(cfg)
    assert outcome["selfie1.jpg"][0] == "ok"
    assert outcome["selfie2.jpg"][0] == "failed" and "deadline" in outcome["selfie2.jpg"][1]
    assert len(srv.requests_to("/m/selfie2.jpg")) == 1       # not asked again in this run
    assert result["images_failed"]["count"] == 1


def test_media_and_redirects_to_private_addresses_are_refused(tmp_path):
    srv = ts.MastodonAPIServer().start()
    inside = ts.MastodonAPIServer().start()     # another port on 127.0.0.1: not the instance
    try:
        secret = inside.add_file("/secret.jpg", photo(9))
        post(srv, 1)                                                 # the instance's own media
        post(srv, 2, media=[ts.attachment(secret, media_id="direct")])
        hop = srv.add_file("/m/hop.jpg", b"")
        srv.fail_always("/m/hop.jpg", f"redirect:{secret}")
        post(srv, 3, media=[ts.attachment(hop, media_id="hop")])
        cfg = config(tmp_path)
        result = run_scrape(cfg, servers=[srv.url], tags=["selfie"])
        assert inside.requests == []                  # nothing was asked of the other port
        assert media_outcomes(cfg)["selfie1.jpg"][0] == "ok"
        with Catalog(cfg.catalog_path) as cat:
            rows = cat.execute("SELECT m.url, d.status, d.reason FROM media m JOIN downloads d "
                               "ON d.media_id = m.id WHERE m.url != ?",
                               (f"{srv.url}/m/selfie1.jpg",)).fetchall()
        assert len(rows) == 2
        for url, status, reason in rows:
            assert status == "skipped" and "refused" in reason and "not a public address" \
                in reason and inside.host in reason, (url, reason)
        assert result["images_skipped"]["count"] == 2

        # named in scrape.allow_hosts: fetched
        cfg2 = config(tmp_path / "allowed", f'scrape.allow_hosts=["{inside.host}"]')
        run_scrape(cfg2, servers=[srv.url], tags=["selfie"])
        assert [o[0] for o in media_outcomes(cfg2).values()] == ["ok"] * 3
        assert len(inside.requests) == 2
    finally:
        srv.stop()
        inside.stop()


def test_waiting_for_the_pacer_is_not_counted_against_the_deadline():
    from scrape.fetch import Fetcher
    srv = ts.MastodonAPIServer().start()
    try:
        url = srv.add_file("/m/a.jpg", photo(1))
        fetcher = Fetcher(timeout=5, retries=0, deadline=1.0, min_interval={"media": 1.5})
        try:
            assert fetcher.get(url).body == photo(1)
            assert fetcher.get(url).body == photo(1)     # waited 1.5 s for its turn first
        finally:
            fetcher.close()
    finally:
        srv.stop()
    hits = srv.requests_to("/m/a.jpg")
    assert len(hits) == 2 and hits[1].time - hits[0].time >= 1.4
