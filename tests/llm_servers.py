"""Loopback OpenAI-compatible servers for tests: what a real server cannot be made to do on demand
(500s, hangs, garbage). `serve(handler)` runs a handler class on 127.0.0.1 and yields the /v1 base URL;
`ChatHandler` reads the JSON body and answers; `faulty_server()` fails chosen requests."""

from __future__ import annotations

import json
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class ChatHandler(BaseHTTPRequestHandler):
    """Subclasses implement `respond(body)` for POSTed JSON bodies."""

    def do_POST(self):
        self.respond(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def respond(self, body: dict) -> None:
        raise NotImplementedError

    def reply(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(payload)

    def answer(self, content: str, prompt_tokens: int = 3, completion_tokens: int = 2) -> None:
        """A well-formed chat completion whose message is `content`."""
        self.reply(200, json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": prompt_tokens,
                                              "completion_tokens": completion_tokens}}).encode())

    def log_message(self, *a):
        pass


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


#: markers in a request's last message -> what the faulty server does with it
FAULTS = {
    "[fault:500]": "HTTP 500 on every attempt",
    "[fault:flaky]": "HTTP 500 on the first attempt of each request (same messages and seed), then an answer",
    "[fault:hang]": "no answer: the handler blocks on an Event the test never sets (the client times out)",
    "[fault:garbage]": "HTTP 200 with a body that is not JSON",
}


def fault_of(text: str) -> str:
    return next((m for m in FAULTS if m in text), "")


@contextmanager
def faulty_server(content: str) -> Iterator[tuple[str, type]]:
    """A server that answers `content` to every request, except the requests whose last message
    carries a marker of FAULTS. Yields (base URL, handler class); `handler.hits` counts requests per
    (marker or "", seed). The hung handlers are released when the server stops."""
    release = threading.Event()

    class Faulty(ChatHandler):
        hits: Counter = Counter()
        lock = threading.Lock()

        def respond(self, body: dict) -> None:
            fault = fault_of(body["messages"][-1]["content"])
            with Faulty.lock:
                Faulty.hits[fault, body.get("seed")] += 1
                attempt = Faulty.hits[fault, body.get("seed")]
            if fault == "[fault:500]" or (fault == "[fault:flaky]" and attempt == 1):
                self.reply(500, b"boom")
            elif fault == "[fault:hang]":
                release.wait()
            elif fault == "[fault:garbage]":
                self.reply(200, b"<html>502 Bad Gateway</html>")
            else:
                self.answer(content)

        def handle_one_request(self):
            try:
                super().handle_one_request()
            except OSError:  # a released hang writes to a socket the client has closed
                pass

    try:
        with serve(Faulty) as url:
            yield url, Faulty
    finally:
        release.set()


@contextmanager
def counting_proxy(upstream: str) -> Iterator[tuple[str, Counter]]:
    """A loopback reverse proxy in front of a real server (`upstream`: its /v1 base URL): forwards every
    request unchanged and counts them per path before forwarding, so once a client has its answer the
    count holds that request (a server's own log lines may be written later, and their wording changes
    between versions). Yields (the proxy's /v1 base URL, the Counter of paths)."""
    import urllib.error
    import urllib.request

    root = upstream.removesuffix("/v1")
    hits: Counter = Counter()
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            with lock:
                hits[self.path] += 1
            req = urllib.request.Request(root + self.path, data=body, method=method,
                                         headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
            try:
                with urllib.request.urlopen(req, timeout=900) as r:
                    status, payload = r.status, r.read()
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            self._forward("POST")

        def do_GET(self):
            self._forward("GET")

        def log_message(self, *a):
            pass

    with serve(Proxy) as url:
        yield url, hits
