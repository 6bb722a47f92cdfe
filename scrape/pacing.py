"""Per-host pacing: when each host may next be asked, from what its rate-limit headers say.

Mastodon sends on API responses ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (an ISO-8601 time); its 429 has no ``Retry-After``. The pacer spreads the
remaining requests evenly over the time left until the reset, waits for the reset when none remain,
and lets a 429 block the host for as long as the server asked. Requests are paced per (origin,
bucket), since servers limit them separately: "api" (single requests), "paging" (timeline pages
after the first: Mastodon allows 300 of those per 15 minutes, a limit its headers do not show, so
a least interval applies) and "media" (image files). Keys are tuples ending with the bucket.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import threading
import time


class Stopped(Exception):
    """The run is stopping (Ctrl-C): give up waiting."""


def _parse_time(text: str) -> dt.datetime | None:
    """An ISO-8601 time or an HTTP date -> aware datetime; None when it is neither."""
    text = text.strip()
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            value = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def seconds_until(value: str | None, headers, now: float | None = None) -> float | None:
    """How long until a Reset / Retry-After value, in seconds (>= 0); None when unreadable.

    Numbers are seconds from now (or a Unix time when that large); dates are measured against
    the server's own ``Date`` header when it sent one, so clock skew does not matter.
    """
    if value is None:
        return None
    value = str(value).strip()
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if number != number:  # NaN
            return None
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    when = _parse_time(value)
    if when is None:
        return None
    server_now = _parse_time(headers.get("Date", "")) if headers.get("Date") else None
    ref = server_now.timestamp() if server_now else now
    return max(0.0, when.timestamp() - ref)


class Pacer:
    """Thread-safe: ``wait(key)`` before each request, ``observe(key, headers)`` after it."""

    def __init__(self, max_wait: float = 900.0, stop: threading.Event | None = None,
                 min_interval: dict | None = None):
        self.max_wait = max_wait
        self.stop = stop or threading.Event()
        self.min_interval = dict(min_interval or {})   # bucket -> least seconds between asks
        self._lock = threading.Lock()
        self._next_free: dict = {}   # key -> monotonic time the next request may start
        self._interval: dict = {}    # key -> seconds between requests

    def wait(self, key) -> float:
        """Block until ``key`` may be asked again; reserve that slot. -> seconds waited."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free.get(key, now))
            interval = max(self._interval.get(key, 0.0), self.min_interval.get(key[-1], 0.0))
            self._next_free[key] = start + interval
        delay = start - now
        if delay > 0:
            self.sleep(delay)
        return delay

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped()

    def block(self, key, seconds: float) -> None:
        """Nobody asks ``key`` for ``seconds`` (a 429 or 503 said so)."""
        with self._lock:
            until = time.monotonic() + min(seconds, self.max_wait)
            self._next_free[key] = max(self._next_free.get(key, 0.0), until)

    def observe(self, key, headers) -> None:
        """Read X-RateLimit-Remaining / -Reset and pace ``key`` to fit in what is left."""
        remaining = headers.get("X-RateLimit-Remaining")
        reset_in = seconds_until(headers.get("X-RateLimit-Reset"), headers)
        try:
            remaining = int(float(remaining))
        except (TypeError, ValueError):
            return
        if reset_in is None:
            return
        reset_in = min(reset_in, self.max_wait)
        with self._lock:
            if remaining <= 0:
                self._interval[key] = 0.0
                until = time.monotonic() + reset_in
                self._next_free[key] = max(self._next_free.get(key, 0.0), until)
            else:
                self._interval[key] = reset_in / remaining
