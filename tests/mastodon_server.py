"""The tests' Mastodon-API server: the demo's server (deepselfie.demo.mastodon) plus what a test
needs to provoke a client.

Options: an access token the API requires (401 without it), a latency per request, a rate limit
(X-RateLimit-Limit/Remaining/Reset on API responses, Reset an ISO-8601 time; past the limit a 429
without Retry-After, like Mastodon's), tags that answer 404 (``missing_tags``).

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
  "trickle"    the right answer, its body sent one byte every ``trickle_seconds``
  "deep"       200 with a JSON array nested 100 000 deep
  "link:URL"   the right answer with ``Link: <URL>; rel="next"`` (a cycle, when URL was read)
  "same-page"  the first page again (max_id ignored), with a next link never seen before

``requests`` records every request (time, path, query, status, headers) for the tests to read.
"""
from __future__ import annotations

import datetime as dt
import itertools
import time
import urllib.parse
from dataclasses import dataclass, field

from deepselfie.demo import mastodon
from deepselfie.demo.mastodon import STATUS, TIMELINE, account, attachment, json_response, status

__all__ = ["MastodonAPIServer", "Request", "STATUS", "TIMELINE", "account", "attachment", "status"]


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


class Trickle(bytes):
    """A body to send one byte at a time, ``seconds`` apart."""

    seconds = 2.0


class _Handler(mastodon._Handler):
    def write_body(self, body, cut):
        if not isinstance(body, Trickle):
            return super().write_body(body, cut)
        for i in range(len(body)):
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(body.seconds)


class MastodonAPIServer(mastodon.MastodonAPIServer):
    handler_class = _Handler

    def __init__(self, *, flavor: str = "mastodon", token: str | None = None,
                 latency: float = 0.0, rate_limit: tuple[int, float] | None = None,
                 reset_after: float = 1.0, slow_seconds: float = 2.0,
                 trickle_seconds: float = 2.0):
        super().__init__(flavor=flavor)
        self.trickle_seconds = trickle_seconds
        self._fresh = itertools.count(1)
        self.token = token
        self.latency = latency
        self.rate_limit = rate_limit
        self.reset_after = reset_after
        self.slow_seconds = slow_seconds
        self.requests: list[Request] = []
        self._faults: list[list] = []    # [path, query or None, [faults...], always]
        self._window = (0.0, 0)          # rate limit: window start, requests in it

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

    def route(self, path: str, query: dict, headers) -> tuple[int, dict, bytes]:
        if not path.startswith("/api/"):
            return super().route(path, query, headers)
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return json_response(401, {"error": "The access token is invalid"})
        rate, over = self._rate_headers()
        if over:
            status_, hdrs, body = json_response(429, {"error": "Too many requests"})
        else:
            status_, hdrs, body = super().route(path, query, headers)
        hdrs.update(rate)
        return status_, hdrs, body

    def respond(self, path: str, query: dict, headers):
        record = Request(time.time(), path, query, headers=dict(headers))
        with self._lock:
            self.requests.append(record)
        if self.latency:
            time.sleep(self.latency)
        fault = self._take_fault(path, query)
        if fault == "timeout":
            time.sleep(self.slow_seconds)
            fault = None
        status_, hdrs, body = self.route(path, query, headers)
        cut = None
        if fault == "429":
            status_, hdrs, body = json_response(429, {"error": "Too many requests"})
            hdrs.update({"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": _iso(time.time() + self.reset_after)})
        elif fault and fault.startswith("retry-after:"):
            status_, hdrs, body = json_response(429, {"error": "Too many requests"})
            hdrs["Retry-After"] = fault.split(":", 1)[1]
        elif fault and fault.isdigit():
            status_, hdrs, body = json_response(int(fault), {"error": f"fault {fault}"})
        elif fault == "malformed":
            status_, hdrs, body = 200, {"Content-Type": "application/json"}, b'[{"id": "1", "uri'
        elif fault == "html":
            status_, hdrs, body = 200, {"Content-Type": "text/html; charset=utf-8"}, (
                b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
                b"<body>Checking your browser</body></html>")
        elif fault and fault.startswith("redirect:"):
            status_, hdrs, body = 302, {"Location": fault[len("redirect:"):]}, b""
        elif fault == "trickle":
            body = Trickle(body)
            body.seconds = self.trickle_seconds
        elif fault == "deep":
            status_, hdrs, body = 200, {"Content-Type": "application/json"}, (
                b"[" * 100_000 + b"]" * 100_000)
        elif fault and fault.startswith("link:"):
            hdrs["Link"] = f'<{fault[len("link:"):]}>; rel="next"'
        elif fault == "same-page":
            first = {k: v for k, v in query.items() if k != "max_id"}
            status_, hdrs, body = self.route(path, first, headers)
            fresh = urllib.parse.urlencode({**first, "max_id": "999999999",
                                            "n": next(self._fresh)})
            hdrs["Link"] = f'<{self.url}{path}?{fresh}>; rel="next"'
        elif fault == "truncate":
            body = body[: len(body) // 2]
        elif fault == "reset":
            cut = len(body) // 2
        record.status = status_
        return status_, hdrs, body, cut
