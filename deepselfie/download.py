"""One bounded, resumable HTTP download into a file: what ``fetch-weights`` uses.

Limits that hold whatever the server does:
  * a total deadline: a watchdog shuts the connection's socket when the time is up, so a server
    that trickles its headers or body one byte at a time cannot keep the download alive;
  * a byte cap: a body announced larger than the cap is refused before anything is written, a
    body that grows past it is cut and discarded (never more than the cap on disk);
  * only http(s): redirects are followed here, one hop at a time, and a hop to any other scheme
    ends the download with one clear line;
  * resume is checked: a ``206`` must carry a ``Content-Range`` that starts at the byte asked
    for and agrees with the known total; otherwise the partial file is dropped and the download
    starts again from byte 0 -- a body is never appended at the wrong offset.

The bytes go to ``<dest>.part`` and are renamed over ``dest`` only when complete and verified,
so nothing half-written ever sits at the final path. Every failure is a UserError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import pathlib
import re
import socket
import threading
import time
import urllib.parse

from .console import get_logger, progress
from .errors import UserError

log = get_logger("download")

CHUNK = 1 << 16
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclasses.dataclass(frozen=True)
class Checksum:
    """An expected digest: ``Checksum("sha1", <40 hex>)`` or ``Checksum("sha256", <prefix>)``
    (torch.hub names files ``name-<first 8+ hex digits of the SHA-256>.ext``)."""

    algo: str
    hexdigest: str

    def __post_init__(self):
        hx = self.hexdigest.lower()
        full = hashlib.new(self.algo).digest_size * 2
        if not re.fullmatch(r"[0-9a-f]+", hx) or not 8 <= len(hx) <= full:
            raise UserError(f"not a {self.algo.upper()} digest or a prefix of one "
                            f"(8 to {full} hex digits): {self.hexdigest!r}",
                            path=f"--{self.algo}")
        object.__setattr__(self, "hexdigest", hx)

    def of(self, path) -> str:
        h = hashlib.new(self.algo)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def matches(self, path) -> bool:
        return self.of(path).startswith(self.hexdigest)

    def verify(self, path, what: str):
        got = self.of(path)
        if not got.startswith(self.hexdigest):
            kind = "" if len(self.hexdigest) == len(got) else " prefix"
            raise UserError(f"checksum mismatch: {self.algo.upper()} {got}, expected{kind} "
                            f"{self.hexdigest} ({what}); the file was not kept", path=path)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long and how much: ``timeout`` per connect/read wait, ``deadline`` for the whole
    download (retries included), ``max_bytes`` on disk, ``retries`` on broken connections."""

    timeout: float = 30.0
    deadline: float = 7200.0
    max_bytes: int = 1_000_000_000
    retries: int = 5
    backoff: float = 0.5


class _Deadline:
    """A watchdog: when the time is up it shuts every socket handed to ``watch``, which ends
    any read blocked on them (header or body), however slowly the peer sends."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._socks = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def watch(self, sock):
        with self._lock:
            self._socks = [s for s in self._socks if s.fileno() != -1] + [sock]
            if self.expired:
                _shut(sock)

    def _fire(self):
        with self._lock:
            self.expired = True
            for s in self._socks:
                _shut(s)


def _shut(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _session(deadline: _Deadline):
    """A requests session whose every new connection reports its socket to ``deadline``."""
    import requests
    from urllib3 import connection, connectionpool

    def watched(pool_cls, conn_cls):
        class Conn(conn_cls):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        return type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": Conn})

    pools = {"http": watched(connectionpool.HTTPConnectionPool, connection.HTTPConnection),
             "https": watched(connectionpool.HTTPSConnectionPool, connection.HTTPSConnection)}

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *a, **kw):
            super().init_poolmanager(*a, **kw)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *a, **kw):
            manager = super().proxy_manager_for(*a, **kw)
            manager.pool_classes_by_scheme = pools
            return manager

    sess = requests.Session()
    sess.mount("http://", Adapter())
    sess.mount("https://", Adapter())
    return sess


class _Restart(Exception):
    """The server's answer cannot continue the partial file: drop it and start at byte 0."""


def _check_http(url: str, what: str = "URL") -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UserError(f"{what} {url!r} is not http(s): only http and https downloads are "
                        "allowed (use --path for a local file)", path=url)
    return url


def _content_range(r, have: int, size: int | None) -> int | None:
    """Check a 206 against the request ``bytes=have-``; returns the total it states (None for
    '*'). A range that starts elsewhere, or a total other than the published size, restarts."""
    m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
    if not m:
        raise _Restart(f"206 without a usable Content-Range "
                       f"({r.headers.get('Content-Range')!r})")
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if start != have or end < start or (total is not None and end >= total):
        raise _Restart(f"206 with Content-Range {m.group(0)!r} for bytes={have}-")
    if size is not None and total is not None and total != size:
        raise _Restart(f"206 says the file has {total} bytes, the published size is {size}")
    length = r.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) != end - start + 1:
        raise _Restart(f"206 with Content-Length {length} for Content-Range {m.group(0)!r}")
    return total


def _open(sess, url: str, have: int, limits: Limits, deadline: _Deadline):
    """GET url (asking for ``bytes=have-`` when resuming), following redirects by hand so that
    every hop is checked; returns the streaming response."""
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    for _ in range(MAX_REDIRECTS + 1):
        wait = max(0.001, min(limits.timeout, deadline.remaining()))
        r = sess.get(url, headers=headers, stream=True, timeout=wait, allow_redirects=False)
        if r.status_code not in REDIRECTS:
            return r
        location = r.headers.get("Location")
        r.close()
        if not location:
            raise UserError(f"HTTP {r.status_code} redirect without a Location", path=url)
        url = _check_http(urllib.parse.urljoin(url, location), "redirect to")
    raise UserError(f"more than {MAX_REDIRECTS} redirects", path=url)


def _receive(r, part: pathlib.Path, have: int, cap: int, size: int | None, name: str,
             deadline: _Deadline) -> int:
    """Write the body of ``r`` into ``part`` from offset ``have``; returns the bytes on disk.
    Raises _Restart when the answer cannot continue the partial file."""
    if r.status_code == 206:
        _content_range(r, have, size)
    elif r.status_code == 200:
        have = 0                                    # a whole file: (re)start from byte 0
    else:
        raise UserError(f"download failed: HTTP {r.status_code}", path=r.url)
    length = r.headers.get("Content-Length")
    total = have + int(length) if length is not None and length.strip().isdigit() else None
    if total is not None and total > cap:
        raise UserError(f"the server announces {total} bytes, more than the {cap} allowed "
                        f"({'the published size' if size == cap else 'fetch.max_bytes'})",
                        path=r.url)
    with open(part, "r+b" if have else "wb") as f, \
            progress(total=total, initial=have, unit="B", unit_scale=True, desc=name) as bar:
        f.seek(have)
        f.truncate()
        for block in r.raw.stream(CHUNK, decode_content=False):
            if deadline.expired:
                break
            if have + len(block) > cap:
                f.write(block[:cap - have])
                raise _TooBig(cap, size)
            f.write(block)
            have += len(block)
            bar.update(len(block))
    if deadline.expired:
        raise _Expired()
    if total is not None and have < total:
        raise _Short(f"connection closed after {have} of {total} bytes")
    return have


class _TooBig(Exception):
    def __init__(self, cap, size):
        super().__init__(f"the server sent more than the {cap} bytes allowed "
                         f"({'the published size' if size == cap else 'fetch.max_bytes'}); "
                         "the partial file was removed")


class _Expired(Exception):
    pass


class _Short(Exception):
    pass


def download(url: str, dest, *, checksum: Checksum | None = None, size: int | None = None,
             limits: Limits = Limits()) -> pathlib.Path:
    """Download ``url`` to ``dest`` within ``limits``: resume ``dest.part`` with a checked
    Range request, never write more than ``size`` (the published size, when known) or
    ``limits.max_bytes``, verify ``checksum``, then rename into place."""
    import requests
    import urllib3

    dest = pathlib.Path(dest)
    if dest.exists() and (checksum is None or checksum.matches(dest)):
        log.info("%s is already there", dest)
        return dest
    _check_http(url)
    cap = size if size is not None else limits.max_bytes
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and part.stat().st_size > cap:
        part.unlink()
    broken = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.HTTPError, _Short)
    attempt = 0
    restarted = False
    with _Deadline(limits.deadline) as deadline:
        sess = _session(deadline)
        try:
            while True:
                have = part.stat().st_size if part.exists() else 0
                try:
                    if deadline.remaining() <= 0:
                        raise _Expired()
                    with _open(sess, url, have, limits, deadline) as r:
                        if r.status_code == 416 and have:
                            m = re.match(r"bytes\s+\*/(\d+)", r.headers.get("Content-Range", ""))
                            if m and int(m.group(1)) == have:
                                break                       # every byte is already here
                            raise _Restart(f"416 for bytes={have}-")
                        _receive(r, part, have, cap, size, dest.name, deadline)
                    break
                except _Restart as e:
                    part.unlink(missing_ok=True)
                    if restarted or not have:
                        raise UserError(f"the server's partial answer cannot be used ({e})",
                                        path=url) from None
                    restarted = True
                    log.warning("resume refused (%s); starting again from byte 0", e)
                except _TooBig as e:
                    part.unlink(missing_ok=True)
                    raise UserError(str(e), path=url) from None
                except broken as e:
                    if deadline.expired:
                        raise _Expired() from None
                    attempt += 1
                    if attempt > limits.retries:
                        raise UserError(
                            f"cannot download {url} ({type(e).__name__}); offline? Download it "
                            f"yourself and put it at {dest}, or pass --path FILE",
                            path=dest) from None
                    wait = min(30.0, limits.backoff * 2 ** (attempt - 1), deadline.remaining())
                    log.warning("download interrupted (%s); resuming in %.1f s",
                                type(e).__name__, wait)
                    time.sleep(max(0.0, wait))
                except requests.RequestException as e:
                    raise UserError(f"cannot download ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else 'no detail'})",
                                    path=url) from None
        except _Expired:
            kept = (f"; what arrived is kept in {part.name} and a rerun resumes it"
                    if part.exists() and part.stat().st_size else "")
            raise UserError(f"no complete download within the deadline of {limits.deadline:g} s "
                            f"(fetch.deadline){kept}", path=url) from None
        finally:
            sess.close()
    if checksum is not None:
        try:
            checksum.verify(part, url)
        except UserError:
            part.unlink(missing_ok=True)
            raise
    part.replace(dest)
    return dest
