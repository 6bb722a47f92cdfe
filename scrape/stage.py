"""The scrape stage's one entry point, ``run_scrape``: the CLI, scripts/scrape.sh and the demo
all call it.

Mastodon source: for each server, for each tag, page the hashtag timeline from its saved cursor;
each page's posts and the cursor after it are committed in one transaction, and the page's new
images are queued for the download threads at once. A run killed at any moment and started again
ends with the same catalog as an uninterrupted run: a page is either wholly in the catalog with
its cursor advanced past it, or not at all; an image is either recorded or fetched again.

Folder source: see scrape.folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import urllib.parse

from deepselfie.catalog import Catalog, host_of, utcnow
from deepselfie.console import get_logger, progress
from deepselfie.errors import UserError
from deepselfie.tally import Tally, closing_line

from .counters import (AUTHORS_FLAGGED_OPTED_OUT, HOME_REFRESH_FAILED, HOME_REFRESHED,
                       IMAGES_FAILED, IMAGES_KEPT, IMAGES_REUSED, IMAGES_SKIPPED, PAGES,
                       PAGING_STOPPED, POSTS_NEW, POSTS_SEEN_AGAIN, POSTS_SKIPPED, TAG_ERRORS,
                       TAGS_PAUSED)
from .downloader import Downloader
from .fetch import Fetcher, FetchError
from .folder import import_folder, read_metadata
from . import jsonbody
from .addresses import AddressPolicy
from .images import ImageStore
from .mastodon import Skip, home_status_api, parse_status
from .timeline import PageError, TagTimeline

log = get_logger("scrape")

PAGE_TRIES = 3          # a malformed page is asked for this many times before the tag is left


def run_scrape(cfg, *, source=None, servers=None, tags=None, max_posts=None, folder=None,
               metadata=None, concurrency=None) -> dict:
    """Collect posts into the catalog and images into the store -> the run's summary (a dict).

    Keyword arguments override the config's ``scrape`` section (None keeps it); they pass the
    same checks as config values.
    """
    cfg = cfg.with_settings({"scrape.source": source, "scrape.servers": servers,
                             "scrape.tags": tags, "scrape.max_posts": max_posts,
                             "scrape.folder": folder, "scrape.metadata": metadata,
                             "scrape.concurrency": concurrency}, "run_scrape")
    sc = cfg.scrape
    source, max_posts, concurrency = sc.source, sc.max_posts, sc.concurrency
    if source == "folder":
        folder, metadata = sc.folder, sc.metadata
        if not folder or not metadata:
            raise UserError("the folder source needs --folder DIR and --metadata FILE.csv",
                            path="--source folder")
        posts = read_metadata(metadata, folder, utcnow())   # all checked before any write
        args = {"source": source, "folder": str(folder), "metadata": str(metadata),
                "max_posts": max_posts}
    else:
        servers = list(dict.fromkeys(normalize_server(s) for s in sc.servers))
        tags = list(dict.fromkeys(normalize_tag(t) for t in sc.tags))
        if not servers or not tags:
            raise UserError("give at least one --server and one --tag", path="scrape")
        tokens = read_tokens(sc.tokens)
        args = {"source": source, "servers": servers, "tags": tags, "max_posts": max_posts,
                "concurrency": concurrency}

    data_dir = cfg.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with stage_lock(data_dir), Catalog(cfg.catalog_path) as cat:
        cat.mark_interrupted("scrape")
        store = ImageStore(data_dir, max_pixels=sc.max_pixels, min_side=sc.min_side)
        store.clean_temp()
        with closing_line(cat.run("scrape", args),
                          lambda run: describe(run.tally, run.seconds)) as run:
            if source == "folder":
                import_folder(cat, store, posts, tally=run.tally, max_posts=max_posts,
                              max_bytes=sc.max_bytes)
            else:
                _scrape_mastodon(cfg, cat, store, run.tally, servers=servers, tags=tags,
                                 tokens=tokens, max_posts=max_posts, concurrency=concurrency)
    return run.summary()


def _scrape_mastodon(cfg, cat, store, tally, *, servers, tags, tokens, max_posts, concurrency):
    sc = cfg.scrape
    stop = threading.Event()
    fetcher = Fetcher(timeout=sc.timeout, retries=sc.retries, backoff=sc.backoff,
                      max_wait=sc.max_wait, user_agent=sc.user_agent, stop=stop,
                      min_interval={"paging": sc.page_interval}, deadline=sc.deadline,
                      addresses=AddressPolicy(servers, sc.allow_hosts))
    bar = progress(total=0, desc="images", unit="img")
    downloader = Downloader(cfg.catalog_path, fetcher, store, concurrency=concurrency,
                            max_bytes=sc.max_bytes, tally=tally, bar=bar)
    try:
        downloader.submit(cat.pending_downloads())
        new, seen_urls = 0, set()
        for server in servers:
            for tag in tags:
                budget = max_posts - new if max_posts else None
                if budget is not None and budget <= 0:
                    break
                timeline = TagTimeline(server, tag, token=tokens.get(server),
                                       page_size=sc.page_size, only_media=sc.only_media)
                new += _page_tag(cat, fetcher, downloader, timeline, tally, budget=budget,
                                 refresh_home=sc.refresh_home, tokens=tokens,
                                 max_pages=sc.max_pages, seen_urls=seen_urls)
        downloader.finish()
    except BaseException:
        stop.set()
        downloader.cancel()
        raise
    finally:
        bar.close()
        fetcher.close()


def _page_tag(cat, fetcher, downloader, timeline, tally, *, budget, refresh_home,
              tokens, max_pages=0, seen_urls=None) -> int:
    """Page one tag of one server from its cursor until done (or the budget) -> new posts.

    Paging ends early, whatever the server's Link headers say, on a URL already read this run
    (``seen_urls``: a cycle), on a page whose statuses were all seen this run (an ever-new next
    URL that brings the same posts) and after ``max_pages`` pages (the next run goes on)."""
    server, tag = timeline.server, timeline.tag
    cursor = timeline.start(cat.get_cursor(server, tag))
    seen_urls = set() if seen_urls is None else seen_urls
    seen_ids: set[str] = set()
    new = pages = 0
    while not cursor["done"]:
        if max_pages and pages >= max_pages:
            tally.add(TAGS_PAUSED, f"{server} #{tag}: scrape.max_pages ({max_pages}) reached")
            break
        if cursor["next"] in seen_urls:
            _end_paging(cat, tally, server, tag, cursor,
                        "the next page is one already read this run (a Link cycle)")
            break
        seen_urls.add(cursor["next"])
        page, error = None, None
        for attempt in range(1, PAGE_TRIES + 1):
            try:
                page = timeline.fetch(fetcher, cursor)
                break
            except PageError as e:       # a proxy hiccup can send junk once: ask again
                error = str(e)
                if attempt < PAGE_TRIES:
                    fetcher.pacer.sleep(fetcher.backoff_delay(attempt))
            except FetchError as e:
                error = e.reason
                if e.reason in ("http 401", "http 403") and not timeline.token:
                    error += " (this server wants an access token: see scrape.tokens)"
                break
        if page is None:   # leave this tag for this run; the cursor stays on the failed page
            with cat.transaction():
                cat.set_cursor(server, tag, {**cursor, "error": error})
            tally.add(TAG_ERRORS, f"{server} #{tag}: {error}")
            log.warning("%s #%s: %s (the next run starts again from this page)",
                        server, tag, error)
            return new
        tally.add(PAGES)
        pages += 1
        ids = {str(st["id"]) for st in page.statuses
               if isinstance(st, dict) and isinstance(st.get("id"), (str, int))}
        if page.statuses and ids <= seen_ids:
            _end_paging(cat, tally, server, tag, cursor,
                        "a page brought no status not already read this run")
            break
        seen_ids |= ids

        fetched_at = utcnow()
        posts, opted_out = [], []
        for status in page.statuses:
            post = _parse(status, server, fetched_at)
            if refresh_home and not isinstance(post, Skip):
                post = _refresh_from_home(post, fetcher, tokens, tally)
            if isinstance(post, Skip):
                tally.add(POSTS_SKIPPED, post.reason)
                if post.opted_out:
                    opted_out.append(post.opted_out)
            else:
                posts.append(post)

        complete, post_ids = True, []
        with cat.transaction():
            for acct in opted_out:
                if cat.mark_opted_out(acct):
                    tally.add(AUTHORS_FLAGGED_OPTED_OUT)
            for post in posts:
                if budget is not None and new >= budget:
                    complete = False      # --max-posts: the rest of this page waits
                    break
                post_id, is_new = cat.upsert_post(post)
                post_ids.append(post_id)
                new += is_new
                tally.add(POSTS_NEW if is_new else POSTS_SEEN_AGAIN)
            if complete:
                cat.set_cursor(server, tag, page.cursor)
        downloader.submit(cat.pending_downloads(post_ids=post_ids))
        downloader.note(f"{host_of(server)} #{tag}: {tally[PAGES]} pages, "
                        f"{tally[POSTS_NEW]} new posts")
        if not complete:
            break
        cursor = page.cursor
    log.info("%s #%s: %s", server, tag, "done" if cursor["done"] else "paused")
    return new


def _parse(status, server, fetched_at):
    """parse_status, and a Skip for whatever a hostile status still manages to break in it."""
    try:
        return parse_status(status, server=server, fetched_at=fetched_at)
    except (ValueError, TypeError, ArithmeticError, RecursionError, AttributeError) as e:
        return Skip(f"malformed status ({type(e).__name__})")


def _end_paging(cat, tally, server, tag, cursor, why) -> None:
    """End this pass of the tag's paging (the next run starts a new pass from the top)."""
    with cat.transaction():
        cat.set_cursor(server, tag, {**cursor, "next": None, "stop_at": None, "done": True})
    tally.add(PAGING_STOPPED, f"{server} #{tag}: {why}")
    log.warning("%s #%s: paging stopped: %s", server, tag, why)


def _refresh_from_home(post, fetcher, tokens, tally):
    """The post as its home server sees it (fresher counts); the copy we have when that fails."""
    if host_of(post.uri) == host_of(post.server):
        return post
    api = home_status_api(post.uri)
    if api is None:
        tally.add(HOME_REFRESH_FAILED, "uri form not known")
        return post
    parts = urllib.parse.urlsplit(api)
    home = f"{parts.scheme}://{parts.netloc}"
    headers = {"Accept": "application/json"}
    if tokens.get(home):
        headers["Authorization"] = f"Bearer {tokens[home]}"
    try:
        status = jsonbody.loads(fetcher.get(api, bucket="api", headers=headers,
                                            max_bytes=5_000_000).body)
    except FetchError as e:
        tally.add(HOME_REFRESH_FAILED, e.reason)
        return post
    except jsonbody.BadJSON as e:
        tally.add(HOME_REFRESH_FAILED, str(e))
        return post
    fresh = _parse(status, home, post.fetched_at)
    if not isinstance(fresh, Skip) and fresh.uri != post.uri:
        tally.add(HOME_REFRESH_FAILED, "home server answered with another post")
        return post
    tally.add(HOME_REFRESHED)
    return fresh


# ------------------------------------------------------------------ options
def normalize_server(url: str) -> str:
    """'https://Mastodon.Social/' -> 'https://mastodon.social'; UserError unless http(s)."""
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UserError("must be an http(s) URL such as https://mastodon.social",
                        path="--server", field=str(url))
    if parts.path.strip("/") or parts.query:
        raise UserError("must be the server's address only, without a path",
                        path="--server", field=str(url))
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def normalize_tag(tag: str) -> str:
    t = str(tag).strip().lstrip("#").lower()
    if not re.fullmatch(r"\w+", t):
        raise UserError("must be a hashtag (letters, digits, _)", path="--tag", field=str(tag))
    return t


def read_tokens(tokens: dict) -> dict:
    """scrape.tokens -> {normalized server: token}; '$NAME' reads environment variable NAME."""
    out = {}
    for server, token in (tokens or {}).items():
        where = f"scrape.tokens.{server}"
        if not isinstance(token, str) or not token:
            raise UserError("must be a token (a string) or $ENV_VAR", path=where)
        if token.startswith("$"):
            name = token[1:]
            token = os.environ.get(name)
            if not token:
                raise UserError(f"environment variable {name} is not set", path=where)
        out[normalize_server(server)] = token
    return out


@contextlib.contextmanager
def stage_lock(data_dir):
    """One scrape per data dir at a time (the lock dies with its process, even on kill -9)."""
    path = data_dir / ".scrape.lock"
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError("another `deepselfie scrape` is running on this data dir",
                            path=data_dir) from None
        yield
    finally:
        f.close()


def describe(tally: Tally, seconds: float) -> str:
    """The closing summary line: kept, skipped by reason."""
    parts = [f"{tally[POSTS_NEW]} new posts ({tally[POSTS_SEEN_AGAIN]} seen again, "
             f"{tally[PAGES]} pages)"]
    parts.append(f"{tally[IMAGES_KEPT]} images kept"
                 + (f" ({tally[IMAGES_REUSED]} reused by url)" if tally[IMAGES_REUSED]
                    else ""))
    for what, label in ((IMAGES_SKIPPED, "images skipped"),
                        (IMAGES_FAILED, "images failed, retried next run"),
                        (POSTS_SKIPPED, "posts skipped"),
                        (HOME_REFRESHED, "refreshed from home"),
                        (HOME_REFRESH_FAILED, "home refreshes failed"),
                        (AUTHORS_FLAGGED_OPTED_OUT, "authors we had flagged as opted out"),
                        (TAG_ERRORS, "tags stopped early"),
                        (PAGING_STOPPED, "tags whose paging was stopped"),
                        (TAGS_PAUSED, "tags paused at scrape.max_pages")):
        text = tally.describe(what, label)
        if text:
            parts.append(text)
    return "; ".join(parts) + f"; {seconds:.1f} s"
