"""A Mastodon-API server on 127.0.0.1, for the tests, the benchmark and the demo.

It serves whatever statuses and files it is given, the way Mastodon (or Pixelfed) does:

  GET /api/v1/timelines/tag/<tag>?limit=&max_id=&since_id=&min_id=&only_media=
      statuses carrying the tag, newest first (ids compared as numbers), at most 40 a page;
      flavor "mastodon" adds a Link header (rel="next" when the page is full, rel="prev"),
      flavor "pixelfed" sends none (clients page with max_id)
  GET /api/v1/statuses/<id>
  GET <any path added with add_file>        the bytes, with their content type

Options: an access token the API requires (401 without it), a latency per request, a rate limit
(X-RateLimit-Limit/Remaining/Reset on API responses, Reset an ISO-8601 time; past the limit a 429
without Retry-After, like Mastodon's), tags that answer 404.

Faults, queued per path (and optionally per query) with ``fail(path, *faults)`` and used up one
per request, or for every request with ``fail_always``:
  "429"        429 with an ISO X-RateLimit-Reset ``reset_after`` seconds ahead, no Retry-After
  "retry-after:N"  429 with Retry-After: N (seconds)
  "500", "502", "503", "404", ...   that status with a JSON error body
  "timeout"    answer only after ``slow_seconds``
  "reset"      send the headers and half the body, then reset the connection (RST)
  "truncate"   a shorter body, consistently framed (a truncated file)
  "malformed"  200 with broken JSON
  "html"       200 with an HTML page
  "redirect:URL"  302 to URL (any scheme)

``requests`` records every request (time, path, query, status, headers) for the tests to read.

The builders ``account``, ``attachment`` and ``status`` make realistic Mastodon JSON.
"""
from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

TIMELINE = "/api/v1/timelines/tag/"
STATUS = "/api/v1/statuses/"


@dataclass
class Request:
    time: float
    path: str
    query: dict
    status: int = 0
    headers: dict = field(default_factory=dict)


def _iso(t: float) -> str:
    return (dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="microseconds")
            .replace("+00:00", "Z"))


def _id_key(s) -> tuple:
    s = str(s)
    return (0, len(s), s) if s.isdigit() else (1, 0, s)


class MastodonAPIServer:
    def __init__(self, *, flavor: str = "mastodon", token: str | None = None,
                 latency: float = 0.0, rate_limit: tuple[int, float] | None = None,
                 reset_after: float = 1.0, slow_seconds: float = 2.0):
        if flavor not in ("mastodon", "pixelfed"):
            raise ValueError("flavor must be mastodon or pixelfed")
        self.flavor = flavor
        self.token = token
        self.latency = latency
        self.rate_limit = rate_limit
        self.reset_after = reset_after
        self.slow_seconds = slow_seconds
        self.statuses: list[dict] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.missing_tags: set[str] = set()
        self.requests: list[Request] = []
        self._faults: list[list] = []    # [path, query or None, [faults...], always]
        self._lock = threading.Lock()
        self._window = (0.0, 0)          # rate limit: window start, requests in it
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._url = ""
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ setup
    def start(self) -> "MastodonAPIServer":
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port> (known once started; kept after stop)."""
        return self._url

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def add_status(self, status: dict) -> dict:
        with self._lock:
            self.statuses.append(status)
        return status

    def add_file(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        """Serve ``data`` at ``path``; -> its full URL."""
        with self._lock:
            self.files[path] = (data, content_type)
        return self.url + path

    def fail(self, path: str, *faults: str, query: dict | None = None) -> None:
        """The next requests for ``path`` (with ``query`` among their params) get ``faults``."""
        with self._lock:
            self._faults.append([path, query, list(faults), False])

    def fail_always(self, path: str, fault: str, query: dict | None = None) -> None:
        with self._lock:
            self._faults.append([path, query, [fault], True])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------ serving
    def _take_fault(self, path: str, query: dict) -> str | None:
        with self._lock:
            for entry in self._faults:
                p, q, faults, always = entry
                if p != path or not faults:
                    continue
                if q and any(query.get(k) != str(v) for k, v in q.items()):
                    continue
                return faults[0] if always else faults.pop(0)
        return None

    def _rate_headers(self) -> tuple[dict, bool]:
        """Rate-limit headers for one API request -> (headers, over the limit?)."""
        if not self.rate_limit:
            return {}, False
        limit, window = self.rate_limit
        with self._lock:
            now = time.time()
            start, used = self._window
            if now >= start + window:
                start, used = now, 0
            used += 1
            self._window = (start, used)
        headers = {"X-RateLimit-Limit": str(limit),
                   "X-RateLimit-Remaining": str(max(0, limit - used)),
                   "X-RateLimit-Reset": _iso(start + window)}
        return headers, used > limit

    def _route(self, path: str, query: dict, headers) -> tuple[int, dict, bytes]:
        if path.startswith(("/api/",)):
            if self.token and headers.get("Authorization") != f"Bearer {self.token}":
                return _json(401, {"error": "The access token is invalid"})
            rate, over = self._rate_headers()
            if over:
                status, hdrs, body = _json(429, {"error": "Too many requests"})
            elif path.startswith(TIMELINE):
                status, hdrs, body = self._timeline(path[len(TIMELINE):], query)
            elif path.startswith(STATUS):
                status, hdrs, body = self._status(path[len(STATUS):])
            else:
                status, hdrs, body = _json(404, {"error": "Record not found"})
            hdrs.update(rate)
            return status, hdrs, body
        with self._lock:
            item = self.files.get(path)
        if item is None:
            return 404, {"Content-Type": "text/html"}, b"<html><body>Not found</body></html>"
        return 200, {"Content-Type": item[1]}, item[0]

    def _timeline(self, tag: str, query: dict) -> tuple[int, dict, bytes]:
        tag = urllib.parse.unquote(tag).lower()
        if tag in self.missing_tags:
            return _json(404, {"error": "Record not found"})
        try:
            limit = max(1, min(40, int(query.get("limit", 20))))
        except ValueError:
            limit = 20
        only_media = query.get("only_media") in ("true", "1")
        with self._lock:
            items = [s for s in self.statuses
                     if tag in {str(t.get("name", "")).lower() for t in s.get("tags") or []}
                     and (not only_media or s.get("media_attachments"))]
        items.sort(key=lambda s: _id_key(s["id"]), reverse=True)
        if "max_id" in query:
            items = [s for s in items if _id_key(s["id"]) < _id_key(query["max_id"])]
        if "since_id" in query:
            items = [s for s in items if _id_key(s["id"]) > _id_key(query["since_id"])]
        if "min_id" in query:   # the page just above min_id, still newest first
            items = [s for s in items if _id_key(s["id"]) > _id_key(query["min_id"])][-limit:]
        page = items[:limit]
        status, headers, body = _json(200, page)
        if self.flavor == "mastodon" and page:
            base = f"{self.url}{TIMELINE}{urllib.parse.quote(tag)}"
            keep = {k: v for k, v in query.items() if k in ("limit", "only_media")}
            links = []
            if len(page) == limit:
                q = urllib.parse.urlencode({**keep, "max_id": page[-1]["id"]})
                links.append(f'<{base}?{q}>; rel="next"')
            q = urllib.parse.urlencode({**keep, "min_id": page[0]["id"]})
            links.append(f'<{base}?{q}>; rel="prev"')
            headers["Link"] = ", ".join(links)
        return status, headers, body

    def _status(self, status_id: str) -> tuple[int, dict, bytes]:
        with self._lock:
            found = next((s for s in self.statuses if str(s.get("id")) == status_id), None)
        return _json(200, found) if found else _json(404, {"error": "Record not found"})


def _json(status: int, obj) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(obj).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    api: MastodonAPIServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out as separate writes
    server_version = "Mastodon"

    def log_message(self, *args):   # quiet
        pass

    def handle(self):
        try:
            super().handle()
        except (OSError, ValueError):  # the client gave up, or a "reset" fault closed it
            pass

    def do_GET(self):
        api = self.api
        parts = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        record = Request(time.time(), parts.path, query, headers=dict(self.headers))
        with api._lock:
            api.requests.append(record)
        if api.latency:
            time.sleep(api.latency)
        fault = api._take_fault(parts.path, query)
        if fault == "timeout":
            time.sleep(api.slow_seconds)
            fault = None
        status, headers, body = api._route(parts.path, query, self.headers)
        cut = None
        if fault == "429":
            status, headers, body = _json(429, {"error": "Too many requests"})
            headers.update({"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0",
                            "X-RateLimit-Reset": _iso(time.time() + api.reset_after)})
        elif fault and fault.startswith("retry-after:"):
            status, headers, body = _json(429, {"error": "Too many requests"})
            headers["Retry-After"] = fault.split(":", 1)[1]
        elif fault and fault.isdigit():
            status, headers, body = _json(int(fault), {"error": f"fault {fault}"})
        elif fault == "malformed":
            status, headers, body = 200, {"Content-Type": "application/json"}, b'[{"id": "1", "uri'
        elif fault == "html":
            status, headers, body = 200, {"Content-Type": "text/html; charset=utf-8"}, (
                b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
                b"<body>Checking your browser</body></html>")
        elif fault and fault.startswith("redirect:"):
            status, headers, body = 302, {"Location": fault[len("redirect:"):]}, b""
        elif fault == "truncate":
            body = body[: len(body) // 2]
        elif fault == "reset":
            cut = len(body) // 2
        record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


# ---------------------------------------------------------------- realistic Mastodon JSON
def account(base: str, username: str, *, followers: int, home: str | None = None,
            note: str = "<p>Hello</p>", indexable: bool | None = True, noindex: bool = False,
            account_id: str = "1", created_at: str = "2020-01-01T00:00:00.000Z") -> dict:
    """An Account as ``base`` serves it; ``home`` is the account's own server when remote."""
    home = home or base
    domain = urllib.parse.urlsplit(home).netloc
    local = home == base
    acc = {
        "id": account_id, "username": username,
        "acct": username if local else f"{username}@{domain}",
        "display_name": username.title(), "locked": False, "bot": False, "discoverable": True,
        "group": False, "created_at": created_at, "note": note,
        "url": f"{home}/@{username}", "uri": f"{home}/users/{username}",
        "avatar": f"{base}/avatars/original/missing.png",
        "avatar_static": f"{base}/avatars/original/missing.png",
        "header": f"{base}/headers/original/missing.png",
        "header_static": f"{base}/headers/original/missing.png",
        "followers_count": followers, "following_count": 42, "statuses_count": 17,
        "last_status_at": "2026-01-02", "hide_collections": None, "noindex": noindex,
        "emojis": [], "roles": [], "fields": [],
    }
    if indexable is not None:
        acc["indexable"] = indexable
    return acc


def attachment(url: str | None, *, kind: str = "image", width: int | None = 640,
               height: int | None = 480, media_id: str = "1",
               remote_url: str | None = None) -> dict:
    meta = {}
    if width is not None and height is not None:
        meta = {"original": {"width": width, "height": height, "size": f"{width}x{height}",
                             "aspect": width / height},
                "small": {"width": 400, "height": max(1, 400 * height // width),
                          "size": f"400x{max(1, 400 * height // width)}",
                          "aspect": width / height}}
    return {"id": media_id, "type": kind, "url": url, "preview_url": url,
            "remote_url": remote_url, "preview_remote_url": None, "text_url": None,
            "meta": meta, "description": "a photo", "blurhash": "UFGuU2t7~q%M-;ofRjae"}


def status(base: str, status_id: str, acct: dict, *, likes: int, tags: list[str],
           created_at: str, media: list[dict], reblogs: int = 0, uri: str | None = None,
           content: str | None = None, sensitive: bool = False,
           visibility: str = "public") -> dict:
    """A Status as ``base`` serves it. ``uri`` defaults to a post of ``base`` itself."""
    home_user = acct["username"]
    uri = uri or f"{base}/users/{home_user}/statuses/{status_id}"
    tag_links = " ".join(f'<a href="{base}/tags/{t}" class="mention hashtag" rel="tag">'
                         f'#<span>{t}</span></a>' for t in tags)
    return {
        "id": str(status_id), "created_at": created_at, "in_reply_to_id": None,
        "in_reply_to_account_id": None, "sensitive": sensitive, "spoiler_text": "",
        "visibility": visibility, "language": "en", "uri": uri,
        "url": f"{base}/@{home_user}/{status_id}", "replies_count": 0,
        "reblogs_count": reblogs, "favourites_count": likes, "edited_at": None,
        "content": content if content is not None else f"<p>Me today {tag_links}</p>",
        "reblog": None, "application": None, "account": acct,
        "media_attachments": media, "mentions": [],
        "tags": [{"name": t, "url": f"{base}/tags/{t}"} for t in tags],
        "emojis": [], "card": None, "poll": None,
    }
