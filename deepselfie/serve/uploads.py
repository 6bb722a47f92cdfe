"""Upload bodies within a memory budget: read (or spooled to disk), then found in a form.

- ``ByteBudget``: bytes that may be held at once; ``take`` waits for room, ``try_take`` does not.
  One budget bounds the bodies kept in memory, another the decoded pixels (server.App).
- ``read_body``: a body that fits the body budget is read into memory; any other is spooled to
  an unnamed temporary file, so that waiting uploads cost disk, not memory. Either way the
  client has ``seconds`` to send it all (a slow client cannot hold a thread forever).
- ``find_file_part``: the first file part (else the first part) of a multipart/form-data body,
  as offsets, scanned in place (no copy of the body, no list of parts) and with at most
  ``MAX_PARTS`` parts: a form of four million tiny parts costs nothing but its refusal.
- ``Body.open(start, end)``: a read-only, seekable file over those bytes, whose offset 0 is the
  part's first byte (image decoders seek to absolute offsets).
"""
from __future__ import annotations

import io
import mmap
import os
import socket
import tempfile
import threading
import time

MAX_PARTS = 100
MAX_PART_HEAD = 16 * 1024     # bytes of a part's headers looked at for filename=
CHUNK = 1 << 20


class ApiError(Exception):
    """The upload is unusable: ``status`` (400, 408) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ByteBudget:
    """A counting semaphore over bytes. A request larger than the whole budget still gets its
    turn, alone (it waits until nothing else is held)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.capacity

    def take(self, n: int) -> int:
        n = min(int(n), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._fits(n))
            self.used += n
            self.peak = max(self.peak, self.used)
        return n

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.used + n > self.capacity:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class Body:
    """An upload body: bytes in memory (holding part of a budget) or an unnamed spooled file."""

    def __init__(self, data: bytearray | None = None, file=None, size: int = 0,
                 release=None):
        self.data, self.file, self.size = data, file, size
        self._release = release

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.data = None
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self, start: int = 0, end: int | None = None) -> io.BufferedReader:
        """A seekable read-only file over bytes [start, end) of the body."""
        end = self.size if end is None else end
        return io.BufferedReader(_Window(self, start, end), buffer_size=64 * 1024)

    def find_file_part(self, content_type: str) -> tuple[int, int]:
        if self.data is not None:
            return find_file_part(self.data, content_type)
        if self.size == 0:
            return find_file_part(b"", content_type)
        with mmap.mmap(self.file.fileno(), self.size, access=mmap.ACCESS_READ) as mm:
            return find_file_part(mm, content_type)


class _Window(io.RawIOBase):
    def __init__(self, body: Body, start: int, end: int):
        self.body, self.start, self.end, self.pos = body, start, end, start

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos - self.start

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: self.start, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = max(self.start, base + offset)
        return self.pos - self.start

    def readinto(self, b):
        n = max(0, min(len(b), self.end - self.pos))
        if n == 0:
            return 0
        if self.body.data is not None:
            memoryview(b)[:n] = memoryview(self.body.data)[self.pos:self.pos + n]
        else:
            chunk = os.pread(self.body.file.fileno(), n, self.pos)
            n = len(chunk)
            memoryview(b)[:n] = chunk
        self.pos += n
        return n


def read_body(rfile, connection, length: int, budget: ByteBudget, *, seconds: float,
              spool_dir=None) -> Body:
    """Read ``length`` bytes from the client within ``seconds``: into memory when the body
    budget has room, else into a temporary file. ApiError(408/400) when the client is too
    slow or stops early."""
    in_memory = budget.try_take(length)
    sink = bytearray() if in_memory else tempfile.TemporaryFile(dir=spool_dir)
    try:
        _receive(rfile, connection, length, sink, seconds)
    except BaseException:
        if in_memory:
            budget.give(length)
        else:
            sink.close()
        raise
    if in_memory:
        return Body(data=sink, size=length, release=lambda: budget.give(length))
    sink.flush()
    return Body(file=sink, size=length)


def _receive(rfile, connection, length: int, sink, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    too_slow = f"the upload took longer than {seconds:g} s to arrive"
    got = 0
    while got < length:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ApiError(408, too_slow)
        connection.settimeout(min(left, 60))
        try:
            chunk = rfile.read1(min(CHUNK, length - got))
        except (socket.timeout, TimeoutError):
            raise ApiError(408, too_slow) from None
        if not chunk:
            raise ApiError(400, f"the upload stopped after {got:,} of {length:,} bytes")
        got += len(chunk)
        if isinstance(sink, bytearray):
            sink += chunk
        else:
            sink.write(chunk)


def content_type_boundary(content_type: str) -> bytes:
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip().strip('"')
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart/form-data without a usable boundary")
    return boundary.encode("latin-1", "replace")


def find_file_part(buf, content_type: str) -> tuple[int, int]:
    """Offsets [start, end) of the first file part of a multipart body (else of its first
    part) in ``buf`` (bytes or mmap: anything with find). ApiError when there is none."""
    delimiter = b"--" + content_type_boundary(content_type)
    size = len(buf)
    pos = buf.find(delimiter)
    first, parts = None, 0
    while pos >= 0:
        start = pos + len(delimiter)
        if buf[start:start + 2] == b"--":                 # the closing delimiter
            break
        parts += 1
        if parts > MAX_PARTS:
            raise ApiError(400, f"the form has more than {MAX_PARTS} parts: send one file")
        nxt = buf.find(delimiter, start)
        end = size if nxt < 0 else nxt
        head_end = buf.find(b"\r\n\r\n", start, end)
        if head_end >= 0:
            content_start, content_end = head_end + 4, end
            if content_end - 2 >= content_start and buf[content_end - 2:content_end] == b"\r\n":
                content_end -= 2
            head = bytes(buf[start:min(head_end, start + MAX_PART_HEAD)]).lower()
            if b"filename=" in head:
                return content_start, content_end
            if first is None:
                first = (content_start, content_end)
        pos = nxt
    if first is None:
        raise ApiError(400, "the form has no file in it: send the image as a file field")
    return first
