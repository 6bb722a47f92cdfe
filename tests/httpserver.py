"""A real HTTP server on 127.0.0.1 for tests: serves files with Range support and can be told to
misbehave: cut a response short (to test resume), trickle its headers or body, redirect, answer
a Range request with the whole file as a 206, or send a body without a Content-Length."""
import http.server
import threading


class FileServer:
    """``with FileServer({"/x.bin": data}) as srv: srv.url("/x.bin")``. ``cut_after`` makes the
    next N responses stop after that many bytes; ``trickle`` sends the body one byte per that
    many seconds, ``trickle_headers`` the headers; ``redirects`` maps a path to a Location;
    ``range_from_zero`` answers Range requests with a 206 of the whole file
    (Content-Range ``bytes 0-…``); ``no_length`` sends no Content-Length and closes."""

    def __init__(self, files: dict, cut_after=None, cut_times=0, trickle=None,
                 trickle_headers=None, redirects=None, range_from_zero=False, no_length=False):
        self.files = dict(files)
        self.cut_after, self.cut_times = cut_after, cut_times
        self.redirects = dict(redirects or {})
        self.requests = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def slowly(self, data: bytes, delay):
                for i in range(len(data)):
                    if outer.stop.wait(delay):
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if trickle_headers:
                    self.close_connection = True
                    try:
                        self.slowly(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000, trickle_headers)
                    except OSError:
                        pass
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if range_from_zero:
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if no_length:
                    self.close_connection = True
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if trickle:
                        self.close_connection = True
                        self.slowly(body, trickle)
                        return
                    if outer.cut_times > 0 and outer.cut_after is not None:
                        outer.cut_times -= 1
                        self.wfile.write(body[:outer.cut_after])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None     # clients that hang up are expected here
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
