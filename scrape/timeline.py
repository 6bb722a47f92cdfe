"""Paging one hashtag timeline of one server, from a cursor that survives restarts.

``GET /api/v1/timelines/tag/:hashtag?limit=40&only_media=true`` returns statuses newest first.
The next (older) page is the ``Link`` header's ``rel="next"`` (Mastodon); when a server sends no
Link header (Pixelfed) it is the same query with ``max_id`` = the smallest id of the page.

A cursor (a small JSON dict in the catalog) says where a pass stands:
  next      the URL of the next page to fetch (None: the pass is over)
  stop_at   the newest id of the previous pass: this pass ends when it reaches it
  newest    the newest id seen in this pass
  done      the pass is over; the next run starts a new pass from the top, which stops at the
            posts it already has (so a collector left running picks up what is new)
  error     why the last page failed, if it did (the cursor stays on that page)
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from . import jsonbody
from .fetch import Fetcher, origin

MAX_PAGE_BYTES = 20_000_000


def id_key(status_id: str):
    """Order of status ids: numerically when they are digits (snowflakes), else as text."""
    s = str(status_id)
    return (0, len(s), s) if s.isdigit() else (1, 0, s)


@dataclass
class Page:
    statuses: list          # raw status dicts, as the server sent them, older ones cut off
    cursor: dict            # the cursor after this page


class PageError(Exception):
    """The page came back but is unusable (not JSON, not a list)."""


class TagTimeline:
    def __init__(self, server: str, tag: str, *, token: str | None = None, page_size: int = 40,
                 only_media: bool = True):
        self.server = server.rstrip("/")
        self.tag = tag
        self.token = token
        self.page_size = page_size
        self.only_media = only_media

    def first_url(self, max_id: str | None = None) -> str:
        query = {"limit": self.page_size}
        if self.only_media:
            query["only_media"] = "true"
        if max_id is not None:
            query["max_id"] = max_id
        tag = urllib.parse.quote(self.tag, safe="")
        return f"{self.server}/api/v1/timelines/tag/{tag}?{urllib.parse.urlencode(query)}"

    def start(self, cursor: dict | None) -> dict:
        """The cursor to page from: the saved one, else a new pass (none saved, or done)."""
        if cursor and not cursor.get("done") and cursor.get("next"):
            return dict(cursor)
        prev = (cursor or {}).get("newest")
        return {"next": self.first_url(), "stop_at": prev, "newest": prev, "done": False,
                "error": None}

    def fetch(self, fetcher: Fetcher, cursor: dict) -> Page:
        """Fetch the page at ``cursor`` -> Page with the cursor after it. FetchError, PageError."""
        url = cursor["next"]
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        paging = any(k in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
                     for k in ("max_id", "min_id", "since_id", "page"))
        resp = fetcher.get(url, bucket="paging" if paging else "api", headers=headers,
                           max_bytes=MAX_PAGE_BYTES)
        try:
            statuses = jsonbody.loads(resp.body)
        except jsonbody.BadJSON as e:
            raise PageError(str(e)) from None
        if not isinstance(statuses, list):
            raise PageError(f"unexpected page: a JSON {type(statuses).__name__}, not a list")

        ids = [str(s["id"]) for s in statuses
               if isinstance(s, dict) and isinstance(s.get("id"), (str, int))]
        stop_at = cursor.get("stop_at")
        reached_old = stop_at is not None and any(id_key(i) <= id_key(stop_at) for i in ids)
        if stop_at is not None:   # keep only what is newer than the previous pass
            statuses = [s for s in statuses if not (
                isinstance(s, dict) and isinstance(s.get("id"), (str, int))
                and id_key(str(s["id"])) <= id_key(stop_at))]
        newest = max([i for i in ids + [cursor.get("newest")] if i is not None],
                     key=id_key, default=None)
        if stop_at is not None and newest is not None and id_key(newest) < id_key(stop_at):
            newest = stop_at
        nxt = None if (reached_old or not ids) else self._next_url(resp, url, ids)
        state = {"next": nxt, "stop_at": stop_at if nxt else None, "newest": newest,
                 "done": nxt is None, "error": None}
        return Page(statuses, state)

    def _next_url(self, resp, url: str, ids: list[str]) -> str | None:
        link = resp.links.get("next")
        if link:
            link = urllib.parse.urljoin(url, link)
            if origin(link) == origin(self.server + "/") and link != url:
                return link
        elif resp.headers.get("Link"):
            return None        # Mastodon: a Link header without rel="next" is the last page
        oldest = min(ids, key=id_key)
        nxt = self.first_url(max_id=oldest)
        return None if nxt == url else nxt
