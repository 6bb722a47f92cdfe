"""GET over http(s), politely and defensively: the one way the scraper talks to the network.

- only http and https, also after redirects (followed here, at most 5, each one checked; the
  access token is never sent to another origin);
- retries with exponential backoff and jitter on timeouts, connection errors (a reset mid-body
  included) and 5xx; none on other 4xx, nor when the host name does not resolve;
- 429: wait for ``Retry-After`` when present, else for ``X-RateLimit-Reset``, then ask again;
- per-host pacing (scrape.pacing) from every response's rate-limit headers;
- a byte limit, checked against Content-Length and while reading;
- a deadline per request (``deadline``): from sending it to the body's last byte, redirects
  included; a server that trickles its answer has its connection shut at the deadline;
- an address policy (``addresses``, scrape.addresses): every new connection is checked on the
  address it reached, so a URL or a redirect that leads to a private address is refused.

``get`` returns a Response or raises FetchError(reason, permanent=...): permanent means asking
again later will not help (404, not http, too large); otherwise a later run may retry.
"""
from __future__ import annotations

import random
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

import requests
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .addresses import AddressPolicy, AddressRefused
from .pacing import Pacer, Stopped, seconds_until

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
HOST_GIVE_UP = 5    # after this many requests in a row to a host used up their retries, the rest
                    # of the run fails at once for that host (a dead server; the next run retries)


class FetchError(Exception):
    def __init__(self, reason: str, *, permanent: bool):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass
class Response:
    url: str            # the final URL, after redirects
    status: int
    headers: CaseInsensitiveDict
    body: bytes
    links: dict         # Link header: rel -> url

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()


def origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def check_http_url(url: str, what: str = "URL") -> None:
    """Raise a permanent FetchError unless ``url`` is an absolute http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise FetchError(f"{what} is not a valid URL", permanent=True) from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "no scheme"
        raise FetchError(f"{what} is not http(s) ({scheme})", permanent=True)
    if not parts.netloc:
        raise FetchError(f"{what} has no host", permanent=True)


class _Transient(Exception):
    """A failure worth another try (timeout, connection error, 5xx)."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class Fetcher:
    """Shared by all threads of a run (each thread gets its own requests.Session)."""

    def __init__(self, *, timeout: float = 30.0, retries: int = 5, backoff: float = 1.0,
                 max_wait: float = 900.0, rate_limit_retries: int = 10,
                 user_agent: str = "deepselfie", stop: threading.Event | None = None,
                 rng: random.Random | None = None, min_interval: dict | None = None,
                 deadline: float | None = None, addresses: AddressPolicy | None = None):
        self.timeout = timeout
        self.deadline = deadline
        self.addresses = addresses
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.rate_limit_retries = rate_limit_retries
        self.user_agent = user_agent
        self.stop = stop or threading.Event()
        self.pacer = Pacer(max_wait=max_wait, stop=self.stop, min_interval=min_interval)
        self.rng = rng or random.Random()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._given_up: dict = {}        # origin -> requests in a row that used up their retries

    # ------------------------------------------------------------ public
    def get(self, url: str, *, bucket: str = "media", headers: dict | None = None,
            max_bytes: int = 50_000_000) -> Response:
        """GET ``url`` with retries; 2xx -> Response, else FetchError. Stopped on Ctrl-C."""
        check_http_url(url)
        host = origin(url)
        if self._given_up.get(host, 0) >= HOST_GIVE_UP:
            raise FetchError(f"host keeps failing ({HOST_GIVE_UP} requests in a row)",
                             permanent=False)
        failures = limited = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                resp = self._get_once(url, bucket, headers or {}, max_bytes)
            except _Transient as e:
                failures += 1
                if failures > self.retries:
                    with self._lock:
                        self._given_up[host] = self._given_up.get(host, 0) + 1
                    raise FetchError(f"{e.reason} (gave up after {failures} tries)",
                                     permanent=False) from None
                wait = e.wait if e.wait is not None else self.backoff_delay(failures)
                self.pacer.sleep(min(wait, self.max_wait))
                continue
            if resp.status == 429:
                limited += 1
                wait = (seconds_until(resp.headers.get("Retry-After"), resp.headers)
                        if resp.headers.get("Retry-After") else
                        seconds_until(resp.headers.get("X-RateLimit-Reset"), resp.headers))
                if wait is None:
                    wait = self.backoff_delay(limited)
                if limited > self.rate_limit_retries or wait > self.max_wait:
                    raise FetchError(f"rate limited (http 429, asked to wait {wait:.0f} s)",
                                     permanent=False)
                self.pacer.block(self._key(resp.url, bucket), wait)
                continue
            self._given_up.pop(host, None)
            return resp

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()

    # ------------------------------------------------------------ one try
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = self.user_agent
            s.trust_env = False   # no proxies or .netrc credentials picked up behind our back
            adapter = _WatchedAdapter(self)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    @staticmethod
    def _key(url: str, bucket: str):
        return origin(url) + (bucket,)

    def backoff_delay(self, n: int) -> float:
        """Exponential backoff with jitter: half fixed, half random."""
        base = min(self.backoff * 2 ** (n - 1), self.max_wait)
        return base / 2 + self.rng.uniform(0, base / 2)

    def _get_once(self, url: str, bucket: str, headers: dict, max_bytes: int) -> Response:
        """One try, following redirects, within the deadline. 2xx/429 -> Response; 5xx etc.
        -> _Transient."""
        exchange = self._local.exchange = _Exchange(self.deadline)
        try:
            return self._exchange(url, bucket, headers, max_bytes, exchange)
        except (_Transient, FetchError):
            if exchange.expired:
                raise FetchError(f"took longer than the deadline ({self.deadline:g} s, "
                                 "scrape.deadline)", permanent=False) from None
            raise
        finally:
            exchange.stop_clock()
            self._local.exchange = None

    def _exchange(self, url: str, bucket: str, headers: dict, max_bytes: int,
                  exchange: "_Exchange") -> Response:
        first_origin = origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            key = self._key(url, bucket)
            self.pacer.wait(key)          # waiting our turn is not the server's time
            exchange.start_clock()
            hdrs = dict(headers)
            if origin(url) != first_origin:
                hdrs.pop("Authorization", None)
            try:
                r = self._session().get(url, headers=hdrs, stream=True, timeout=self.timeout,
                                        allow_redirects=False)
            except AddressRefused as e:
                raise FetchError(f"refused: {e}", permanent=True) from None
            except requests.Timeout:
                raise _Transient("timeout") from None
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                if _short(e) == "host not found":   # asking again now will not help; next run
                    raise FetchError("host not found", permanent=False) from None
                raise _Transient(f"connection error ({_short(e)})") from None
            except requests.RequestException as e:   # invalid URL, header, ...
                raise FetchError(f"bad request ({_short(e)})", permanent=True) from None
            try:
                self.pacer.observe(key, r.headers)
                status = r.status_code
                if status in REDIRECTS:
                    location = r.headers.get("Location")
                    if not location:
                        raise FetchError(f"http {status} without a Location", permanent=True)
                    url = urllib.parse.urljoin(url, location)
                    check_http_url(url, "redirect target")
                    continue
                if status >= 500:
                    wait = seconds_until(r.headers.get("Retry-After"), r.headers)
                    raise _Transient(f"http {status}", wait)
                if status == 429:
                    return Response(r.url, status, CaseInsensitiveDict(r.headers), b"", {})
                if not 200 <= status < 300:
                    raise FetchError(f"http {status}", permanent=True)
                body = self._read(r, max_bytes)
                links = {rel: v.get("url") for rel, v in r.links.items()}
                return Response(r.url, status, CaseInsensitiveDict(r.headers), body, links)
            finally:
                r.close()
                exchange.stop_clock()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", permanent=True)

    def _read(self, r: requests.Response, max_bytes: int) -> bytes:
        declared = r.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"too large ({int(declared)} bytes > {max_bytes})", permanent=True)
        chunks, size = [], 0
        try:
            for chunk in r.iter_content(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"too large (more than {max_bytes} bytes)", permanent=True)
                chunks.append(chunk)
                exchange = getattr(self._local, "exchange", None)
                if exchange is not None and exchange.expired:
                    raise _Transient("deadline")
                if self.stop.is_set():
                    raise Stopped()
        except requests.Timeout:
            raise _Transient("timeout while reading the body") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as e:
            raise _Transient(f"connection broken mid-body ({_short(e)})") from None
        return b"".join(chunks)


class _Exchange:
    """One try of one request on one thread, redirects included: the time it has left (the
    clock runs while a server is being talked to, not while the pacer makes us wait) and the
    connection it is using, so that the deadline can shut that connection's socket (which wakes
    a read blocked on a trickling server)."""

    def __init__(self, deadline: float | None):
        self.lock = threading.Lock()
        self.conn = None
        self.expired = False
        self.left = deadline
        self._timer = None
        self._started = 0.0

    def start_clock(self) -> None:
        if self.left is None:
            return
        if self.left <= 0:
            self.cut()
            return
        self._started = time.monotonic()
        self._timer = threading.Timer(self.left, self.cut)
        self._timer.daemon = True
        self._timer.start()

    def stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.left -= time.monotonic() - self._started

    def use(self, conn) -> None:
        with self.lock:
            self.conn = conn
            if self.expired:
                _shut(conn)

    def cut(self) -> None:
        with self.lock:
            self.expired = True
            if self.conn is not None:
                _shut(self.conn)


def _shut(conn) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watched:
    """Mixed into urllib3's connections: each new socket is checked against the fetcher's
    address policy, and each request tells the fetcher's deadline which connection it uses."""

    fetcher: "Fetcher"

    def _new_conn(self):
        sock = super()._new_conn()
        policy = self.fetcher.addresses
        if policy is not None:
            try:
                policy.check(self.host, self.port, sock.getpeername()[0])
            except AddressRefused:
                sock.close()
                raise
        return sock

    def request(self, *args, **kwargs):
        exchange = getattr(self.fetcher._local, "exchange", None)
        if exchange is not None:
            exchange.use(self)
        return super().request(*args, **kwargs)


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connection pools make _Watched connections for ``fetcher``."""

    def __init__(self, fetcher: "Fetcher"):
        self.fetcher = fetcher
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        http_conn = type("WatchedHTTPConnection", (_Watched, urllib3.connection.HTTPConnection),
                         {"fetcher": self.fetcher})
        https_conn = type("WatchedHTTPSConnection",
                          (_Watched, urllib3.connection.HTTPSConnection),
                          {"fetcher": self.fetcher})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("WatchedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("WatchedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": https_conn})}


_KNOWN = [("NameResolutionError", "host not found"), ("Failed to resolve", "host not found"),
          ("Name or service not known", "host not found"),
          ("nodename nor servname", "host not found"),
          ("reset by peer", "connection reset"), ("IncompleteRead", "body cut short"),
          ("timed out", "read timed out"), ("Connection refused", "connection refused"),
          ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
          ("RemoteDisconnected", "server closed the connection")]


def _short(e: Exception) -> str:
    """A few words for a requests/urllib3 exception (whose text nests several layers)."""
    text = str(e)
    for needle, words in _KNOWN:
        if needle in text:
            return words
    text = text.splitlines()[0] if text else type(e).__name__
    return (text[:80] + "...") if len(text) > 80 else text
