"""``deepselfie serve``: a web page and a JSON API that score one selfie.

    GET  /             the page: drop or pick a photo, see its score, percentile and best crop
    GET  /api/health   {"status": "ok", "model": ..., "reference": N, limits}
    POST /api/score    the image as the raw request body, or multipart/form-data (any file
                       field); ?crop=0 skips the crop search. Answers {"score", "percentile",
                       "reference", "width", "height", "crop": {"box", "score", "image"}}

The model is loaded once; requests are served on threads (ThreadingHTTPServer) and the net's
forwards are serialized by the Scorer's lock, so decoding and resizing overlap. Uploads over
``max_bytes`` get 413, images over ``max_pixels`` and non-images get 400, each with
{"error": "..."} saying what is wrong.

Memory is budgeted (serve section of config.yaml): bodies are held in memory up to
``body_memory_mb`` in all and spooled to disk beyond (serve.uploads); an upload is decoded only
inside one of ``concurrent`` slots and once ``memory_mb`` has room for its pixels (known from
the header), by the project's one image loader (models.caffe.image), with one full-size copy.
Only JPEG, PNG, GIF, BMP, TIFF and WebP are decoded (never PostScript: no Ghostscript). The listen backlog holds ``backlog`` waiting
clients, and health checks are answered while uploads wait.
"""
from __future__ import annotations

import base64
import bisect
import ctypes
import dataclasses
import http.server
import io
import json
import pathlib
import socket
import threading
import time
import urllib.parse

import numpy as np

from deepselfie.console import get_logger
from deepselfie.embed import json_for_html
from deepselfie.errors import UserError

from models.selfie.crop import CropSearch, cut_box, search_crop
from models.caffe import background
from models.caffe import image as images
from models.selfie.score import list_images, load_bgr, read_scores
from .uploads import ApiError, Body, ByteBudget, read_body

log = get_logger("serve")

PAGE_FILE = pathlib.Path(__file__).with_name("page.html")
DRAIN_LIMIT = 256 * 1024 * 1024     # an oversized body is read and dropped up to this, then cut


@dataclasses.dataclass
class Reference:
    """The scores that percentiles are taken among, sorted."""

    scores: list[float]
    source: str = ""

    @classmethod
    def load(cls, spec, scorer=None) -> "Reference":
        """From a scores.csv, or a folder scored now with ``scorer``; None = no reference."""
        if not spec:
            return cls([], "")
        p = pathlib.Path(spec)
        if p.is_file() and p.suffix.lower() == ".csv":
            scores = [s for _, s in read_scores(p)]
        elif p.is_dir():
            log.info("scoring the reference folder %s", p)
            results, _ = scorer.score_paths(list_images(p))
            scorer.close()          # no worker processes idle for the server's lifetime
            scores = [s for _, s in results]
        else:
            raise UserError("expected a scores.csv or a folder of images", path=p,
                            field="serve.reference")
        if not scores:
            raise UserError("no scores in the reference set", path=p, field="serve.reference")
        return cls(sorted(scores), str(p))

    def percentile(self, score: float) -> float | None:
        """Percent of the reference below ``score`` (ties count half)."""
        if not self.scores:
            return None
        lo = bisect.bisect_left(self.scores, score)
        hi = bisect.bisect_right(self.scores, score)
        return 100.0 * (lo + hi) / 2 / len(self.scores)


def parse_multipart(body: bytes, content_type: str) -> bytes:
    """The first file (or else the first field) of a multipart/form-data body."""
    start, end = Body(data=body, size=len(body)).find_file_part(content_type)
    return bytes(body[start:end])


def jpeg_data_url(image_bgr: np.ndarray, max_side: int = 512) -> str:
    from PIL import Image
    im = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class App:
    """What the server answers, apart from HTTP: score an upload, describe itself."""

    def __init__(self, scorer, reference: Reference, search: CropSearch | None = CropSearch(),
                 max_bytes=20_000_000, max_pixels=50_000_000, concurrent=8, memory_mb=1536,
                 body_memory_mb=64, read_seconds=60.0):
        self.scorer, self.reference, self.search = scorer, reference, search
        self.max_bytes, self.max_pixels = int(max_bytes), int(max_pixels)
        # Decoded uploads are big: at most this many are decoded and scored at once ...
        self.slots = threading.BoundedSemaphore(max(1, int(concurrent)))
        # ... and only while their pixels fit the decoding budget; bodies have their own.
        self.memory = ByteBudget(int(memory_mb * 2 ** 20))
        self.bodies = ByteBudget(int(body_memory_mb * 2 ** 20))
        self.read_seconds = float(read_seconds)

    def health(self) -> dict:
        return {"status": "ok", "model": self.scorer.deploy.name,
                "weights": self.scorer.weights.name, "reference": len(self.reference.scores),
                "max_bytes": self.max_bytes, "max_pixels": self.max_pixels,
                "crop": self.search is not None}

    def page(self) -> bytes:
        text = PAGE_FILE.read_text(encoding="utf-8")
        return text.replace("__MAX_BYTES__", json_for_html(self.max_bytes)).encode("utf-8")

    def score(self, data, crop: bool = True) -> dict:
        """Score an upload: bytes, or a seekable binary file positioned at its start."""
        fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        if not fp.read(1):
            raise ApiError(400, "empty upload: send an image")
        fp.seek(0)
        with self.slots:
            try:
                head = images.probe(fp, self.max_pixels)   # the header only: nothing decoded
            except images.ImageError as e:
                raise _unreadable(e) from None
            finally:
                fp.seek(0)
            need = bytes_needed(head.width, head.height)
            held = self.memory.take(need)
            try:
                return self._score(fp, crop)
            finally:
                self.memory.give(held)
                _give_back_memory()

    def _score(self, fp, crop: bool) -> dict:
        try:
            image = load_bgr(fp, max_pixels=self.max_pixels)
        except images.ImageError as e:
            raise _unreadable(e) from None
        h, w = image.shape[:2]
        result = {"width": w, "height": h}
        if crop and self.search is not None:
            found = search_crop(self.scorer, image, self.search)
            score = found.original_score
            x, y, cw, ch = found.box
            result["crop"] = {"box": {"x": x, "y": y, "width": cw, "height": ch},
                              "score": round(found.score, 6), "uncropped": found.uncropped,
                              "percentile": self.reference.percentile(found.score),
                              "image": jpeg_data_url(cut_box(image, found.box))}
        else:
            score = float(self.scorer.score_images([image])[0])
        result.update(score=round(score, 6), percentile=self.reference.percentile(score),
                      reference=len(self.reference.scores))
        return result


def bytes_needed(width: int, height: int) -> int:
    """Memory to reserve for decoding and scoring an image: the decoded image (at most 4 bytes a
    pixel), the BGR result (3) and the scorer's resized working copy (at most 4)."""
    return int(width) * int(height) * 11


def _unreadable(e: images.ImageError) -> ApiError:
    if e.kind == "too_large":
        return ApiError(400, f"image too large: {e}")
    return ApiError(400, f"not an image we can read ({e}); send a JPEG, PNG, GIF, BMP, TIFF or "
                         "WebP file")


def _give_back_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise, and a server that
    decoded a few big images would stay big). A no-op where there is no malloc_trim."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


try:
    _LIBC = ctypes.CDLL(None)
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _LIBC = None


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "deepselfie"
    timeout = 60               # seconds a connection may sit idle mid-request before it is cut
    app: App = None            # set on the subclass that make_server builds

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def send_json(self, status: int, data: dict, close: bool = False):
        body = json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def handle_expect_100(self):
        """A client that asks before sending a body hears 'too large' before it sends it."""
        if self._declared_length() > self.app.max_bytes:
            self.send_json(413, self._too_large(), close=True)
            return False
        return super().handle_expect_100()

    def _declared_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    def _too_large(self):
        return {"error": f"upload too large: {self._declared_length():,} bytes; the limit is "
                         f"{self.app.max_bytes:,} bytes"}

    def _drain(self, n: int):
        """Read and drop a refused body (after answering), so that a client still sending it
        reads our answer instead of a reset connection."""
        self.connection.settimeout(10)
        left = min(n, DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, socket.timeout):
            pass

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            body = self.app.page()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/api/health":
            self.send_json(200, self.app.health())
        elif path == "/api/score":
            self.send_json(405, {"error": "POST an image to /api/score"})
        else:
            self.send_json(404, {"error": f"no such page: {path}"})

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/api/score":
            self.send_json(404, {"error": f"no such endpoint: {url.path}"})
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.send_json(411, {"error": "send a Content-Length (chunked uploads are not "
                                          "accepted)"}, close=True)
            return
        length = self._declared_length()
        if length < 0:
            self.send_json(411, {"error": "send a Content-Length with the upload"}, close=True)
            return
        if length > self.app.max_bytes:
            log.info("refused an upload of %d bytes (limit %d)", length, self.app.max_bytes)
            self.send_json(413, self._too_large(), close=True)
            self._drain(length)
            return
        query = urllib.parse.parse_qs(url.query)
        crop = query.get("crop", ["1"])[0] not in ("0", "false", "no")
        started = time.perf_counter()
        try:
            body = read_body(self.rfile, self.connection, length, self.app.bodies,
                             seconds=self.app.read_seconds)
        except ApiError as e:
            self.send_json(e.status, {"error": str(e)}, close=True)
            return
        try:
            with body:
                start, end = 0, body.size
                ctype = self.headers.get("Content-Type", "")
                if ctype.lower().startswith("multipart/form-data"):
                    start, end = body.find_file_part(ctype)
                with body.open(start, end) as fp:
                    result = self.app.score(fp, crop=crop)
        except ApiError as e:
            self.send_json(e.status, {"error": str(e)})
            return
        except Exception:
            log.exception("scoring failed")
            self.send_json(500, {"error": "internal error while scoring (see the server log)"})
            return
        finally:
            self.connection.settimeout(self.timeout)
        result["seconds"] = round(time.perf_counter() - started, 4)
        self.send_json(200, result)


class Server(http.server.ThreadingHTTPServer):
    """One thread a request. The threads in flight are known: when the process exits (Ctrl-C,
    SIGTERM) they finish their request first, for up to models.caffe.background.EXIT_JOIN_S,
    instead of being killed inside OpenCV's or torch's C++ code, which aborts the process."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128   # the listen backlog (socketserver's default of 5 resets a burst)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._in_flight: set[threading.Thread] = set()
        self._in_flight_lock = threading.Lock()
        background.watch(self)

    def process_request_thread(self, request, client_address):
        with self._in_flight_lock:
            self._in_flight.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(threading.current_thread())

    def _stop_for_exit(self):
        with self._in_flight_lock:
            return list(self._in_flight)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(app: App, host="127.0.0.1", port=8000, backlog=128) -> Server:
    handler = type("AppHandler", (Handler,), {"app": app})
    server_class = type("AppServer", (Server,), {"request_queue_size": max(1, int(backlog))})
    try:
        return server_class((host, port), handler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                        path="--port") from None


def start_in_thread(app: App, host="127.0.0.1", port=0,
                    backlog=128) -> tuple[Server, threading.Thread]:
    """A running server on a background thread (for tests and notebooks); server.shutdown()
    stops it."""
    server = make_server(app, host, port, backlog)
    thread = threading.Thread(target=server.serve_forever, name="deepselfie-serve", daemon=True)
    thread.start()
    return server, thread
