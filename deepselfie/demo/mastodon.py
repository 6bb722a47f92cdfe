"""A Mastodon-API server on 127.0.0.1: what the demo scrapes, and the base of the tests' server.

It serves whatever statuses and files it is given, the way Mastodon (or Pixelfed) does:

  GET /api/v1/timelines/tag/<tag>?limit=&max_id=&since_id=&min_id=&only_media=
      statuses carrying the tag, newest first (ids compared as numbers), at most 40 a page;
      flavor "mastodon" adds a Link header (rel="next" when the page is full, rel="prev"),
      flavor "pixelfed" sends none (clients page with max_id)
  GET /api/v1/statuses/<id>
  GET <any path added with add_file>        the bytes, with their content type

The builders ``account``, ``attachment`` and ``status`` make realistic Mastodon JSON. The tests'
server (tests/mastodon_server.py) adds access tokens, latency, rate limits and faults through the
``respond`` hook.
"""
from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import urllib.parse

TIMELINE = "/api/v1/timelines/tag/"
STATUS = "/api/v1/statuses/"


def _id_key(s) -> tuple:
    s = str(s)
    return (0, len(s), s) if s.isdigit() else (1, 0, s)


class MastodonAPIServer:
    """Statuses and files on a threaded HTTP server at 127.0.0.1:<free port>."""

    handler_class: type = None   # _Handler (set below); the tests' server sends bodies its way

    def __init__(self, *, flavor: str = "mastodon", port: int = 0):
        """``port``: the one to listen on when it is free, else (and with 0) a free one."""
        if flavor not in ("mastodon", "pixelfed"):
            raise ValueError("flavor must be mastodon or pixelfed")
        self.flavor, self.port = flavor, int(port)
        self.statuses: list[dict] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.missing_tags: set[str] = set()
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._url = ""
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ setup
    def start(self) -> "MastodonAPIServer":
        handler = type("Handler", (self.handler_class,), {"api": self})
        try:
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        except OSError:         # taken (another demo running): any free port
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

    # ------------------------------------------------------------ serving
    def respond(self, path: str, query: dict, headers) -> tuple[int, dict, bytes, int | None]:
        """One GET -> (status, headers, body, cut). ``cut`` is None, or how many body bytes to
        send before resetting the connection (the tests' server uses it for faults)."""
        return (*self.route(path, query, headers), None)

    def route(self, path: str, query: dict, headers) -> tuple[int, dict, bytes]:
        if path.startswith("/api/"):
            if path.startswith(TIMELINE):
                return self._timeline(path[len(TIMELINE):], query)
            if path.startswith(STATUS):
                return self._status(path[len(STATUS):])
            return json_response(404, {"error": "Record not found"})
        with self._lock:
            item = self.files.get(path)
        if item is None:
            return 404, {"Content-Type": "text/html"}, b"<html><body>Not found</body></html>"
        return 200, {"Content-Type": item[1]}, item[0]

    def _timeline(self, tag: str, query: dict) -> tuple[int, dict, bytes]:
        tag = urllib.parse.unquote(tag).lower()
        if tag in self.missing_tags:
            return json_response(404, {"error": "Record not found"})
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
        status, headers, body = json_response(200, page)
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
        return (json_response(200, found) if found
                else json_response(404, {"error": "Record not found"}))


def json_response(status: int, obj) -> tuple[int, dict, bytes]:
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
        parts = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        status, headers, body, cut = self.api.respond(parts.path, query, self.headers)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.write_body(body, cut)

    def write_body(self, body: bytes, cut: int | None) -> None:
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


MastodonAPIServer.handler_class = _Handler


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
