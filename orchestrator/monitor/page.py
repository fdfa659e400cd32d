"""The status page's HTTP server (`orchestrator serve`): the page, its JSON, and /metrics.

Standard library only (http.server, one thread a request). GET and HEAD only: nothing a
request says can change the run. Routes:

    /                  the page (static/index.html; page.js and page.css beside it)
    /api/status        `orchestrator status --json`, with the parts' rows folded as status folds them
    /api/curves        loss, validation per stage, learning rate, tokens/s, GPU temperature, pauses
    /api/events        the latest events;  /api/samples  the latest evaluations' completions
    /metrics           the Prometheus exposition (orchestrator.monitor.metrics)

With a token (required off the loopback interface), every request must carry it: an
`Authorization: Bearer TOKEN` header (Prometheus' `authorization` setting), or a cookie the
page sets when opened once as `/?token=TOKEN`. Without one, only a Host header naming
the loopback interface is answered, so that a web page elsewhere cannot reach the server
by rebinding a name of its own to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import socket
import sys
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from orchestrator.monitor.view import View, lock_holder
from runtime.paths import RunPaths

STATIC = Path(__file__).parent / "static"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
COOKIE = "orchestrator_token"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
HEADERS = {
    # the page's own files and nothing else: no script from elsewhere, no inline script
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def finite(value):
    """NaN and infinities (a non-finite loss in a heartbeat) as null: JSON has no word for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection never holds up Ctrl-C
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], paths: RunPaths, token: str | None):
        self.view = View(paths)
        self.token = token
        self.address_family = _family(address[0])
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class Handler(BaseHTTPRequestHandler):
    server: StatusServer
    server_version = "orchestrator-serve"

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        refusal = self._refusal(query)
        if refusal:
            return self._send(refusal[0], refusal[1].encode(), "text/plain; charset=utf-8", head)
        if self.server.token and query.get("token"):  # the link with the token: keep it in a cookie, not the URL
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", url.path or "/")
            self.send_header("Set-Cookie", f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/")
            self._common_headers()
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            body, kind = self._route(url.path, query)
        except KeyError:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head)
        except Exception as e:  # a run file mid-change, a bug: the page says so and keeps polling
            return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"{e!r}\n".encode(), "text/plain; charset=utf-8", head)
        self._send(HTTPStatus.OK, body, kind, head)

    def _route(self, path: str, query: dict) -> tuple[bytes, str]:
        view = self.server.view
        if path in FILES:
            name, kind = FILES[path]
            return (STATIC / name).read_bytes(), kind
        if path == "/metrics":
            from orchestrator.monitor.metrics import CONTENT_TYPE, exposition

            return exposition(view.paths, lock_holder), CONTENT_TYPE
        api = {
            "/api/status": view.status,
            "/api/curves": view.curves,
            "/api/events": view.events,
            "/api/samples": view.samples,
        }
        data = api[path]()
        return json.dumps(finite(data), default=str, allow_nan=False).encode(), "application/json"

    def _refusal(self, query: dict) -> tuple[HTTPStatus, str] | None:
        token = self.server.token
        if token is None:
            host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
            if not is_loopback(host):
                return HTTPStatus.FORBIDDEN, (
                    f"this server answers only requests for localhost (Host: {host or 'none'}); "
                    "start it with --token to open it to other names\n"
                )
            return None
        offered = [*query.get("token", [])]
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:
            pass
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        if any(hmac.compare_digest(o.encode(), token.encode()) for o in offered):
            return None
        return HTTPStatus.UNAUTHORIZED, "a token is needed: open the page as /?token=TOKEN once\n"

    def _common_headers(self) -> None:
        for k, v in HEADERS.items():
            self.send_header(k, v)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, head: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self._common_headers()
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away

    def log_message(self, format: str, *args) -> None:
        """Only failures, on stderr: a page polling every two seconds would bury anything else."""
        if len(args) >= 2 and str(args[1])[:1] in "45":
            sys.stderr.write(f"{self.address_string()} {format % args}\n")
