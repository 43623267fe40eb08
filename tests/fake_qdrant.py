"""A stand-in Qdrant server: the part of Qdrant's REST API our client uses at search time, in its own process.

No package on PyPI or Debian ships the Qdrant server binary, and qdrant-client's local mode runs in the caller's
process, so an outage test starts this one (`FakeQdrant`), kills it with SIGKILL mid-run (or stops it with SIGSTOP)
and starts it again on the same port. It answers `collection_exists`, `count` and `query_batch_points` for one
collection of `points` documents; every query gets the first `limit` documents, best first (what is under test is
reaching the server, not ranking).

Run as: python tests/fake_qdrant.py PORT COLLECTION POINTS
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def document(i: int) -> dict:
    """Payload of point `i`: the fields a search returns."""
    return {
        "id": f"fake:{i}",
        "doc_id": f"fake:{i}",
        "title": f"Fake passage {i}",
        "text": f"First-line treatment facts, passage {i}.",
        "source": "fake",
    }


def serve(port: int, collection: str, points: int) -> None:
    ok = {"status": "ok", "time": 0.0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server: the client's pooled connection breaks on a kill

        def do_GET(self) -> None:
            found = re.fullmatch(r"/collections/([^/]+)/exists", self.path)
            if found:
                self.reply(200, {"result": {"exists": found.group(1) == collection}, **ok})
            else:
                self.reply(404, {"status": {"error": f"Not found: {self.path}"}, "time": 0.0})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == f"/collections/{collection}/points/count":
                self.reply(200, {"result": {"count": points}, **ok})
            elif self.path == f"/collections/{collection}/points/query/batch":
                result = [
                    {
                        "points": [
                            {"id": i, "version": 0, "score": 1.0 / (1 + i), "payload": document(i)}
                            for i in range(min(s.get("limit", 10), points))
                        ]
                    }
                    for s in body["searches"]
                ]
                self.reply(200, {"result": result, **ok})
            else:
                self.reply(404, {"status": {"error": f"Not found: {self.path}"}, "time": 0.0})

        def reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class FakeQdrant:
    """The fake server as a child process on a fixed loopback port: `start`, `kill` (SIGKILL) and `start` again, or
    `pause` and `resume` it."""

    def __init__(self, collection: str, points: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.collection, self.points = f"http://127.0.0.1:{self.port}", collection, points
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        args = [sys.executable, str(Path(__file__)), str(self.port), self.collection, str(self.points)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake Qdrant on port {self.port} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections are still accepted, nothing answers, as from a hung or lost host."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
