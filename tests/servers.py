"""Real servers for storage tests, started by the tests on 127.0.0.1: moto's S3 server and
an HTTP file server with Range requests (and paths that stall or fail, on purpose)."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

STALL_S = 30


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` (206), HEAD with Content-Length; a path under
    ``/stall/`` answers nothing for STALL_S seconds, one under ``/error/`` is a 500."""

    protocol_version = "HTTP/1.1"
    requests_seen: list = []

    def log_message(self, *args):  # quiet
        pass

    def _file(self):
        """The file this request names, or None once a stall, an error or a 404 was answered."""
        if self.path.startswith("/stall/"):
            time.sleep(STALL_S)
            return None
        if self.path.startswith("/error/"):
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        return path

    def do_HEAD(self):
        RangeHandler.requests_seen.append(("HEAD", self.path, None))
        path = self._file()
        if path is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        path = self._file()
        if path is None:
            return
        size = os.path.getsize(path)
        m = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        with open(path, "rb") as f:
            if m:
                start = int(m.group(1) or 0)
                end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                f.seek(start)
                data = f.read(end - start + 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                data = f.read()
                self.send_response(200)
            RangeHandler.requests_seen.append(("GET", self.path, len(data)))
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data)


@contextlib.contextmanager
def http_server(directory: str):
    handler = lambda *a, **k: RangeHandler(*a, directory=directory, **k)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def s3_server():
    """moto's S3 server in this process; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    with contextlib.redirect_stdout(sys.stderr):  # its start-up line is no part of a caller's output
        server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
