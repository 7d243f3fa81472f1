"""The annotation web server: stdlib ``ThreadingHTTPServer``, a JSON API and static files.

Security model: bound to 127.0.0.1 by default; bound anywhere else it requires a token
(``?token=`` on the page URL, then an ``X-Token`` header on every API call). On loopback
the ``Host`` header must name the loopback too, so a web page elsewhere cannot reach the
API through DNS rebinding. Writes must be ``application/json`` (a plain HTML form cannot
send that cross-site). Request bodies are capped at :data:`MAX_BODY`, nested at most as deep
as the JSON parser allows, and checked field by field (a 400 names the field). A token off
loopback must have at least :data:`MIN_TOKEN_LENGTH` characters. Every socket read times out
after ``read_timeout`` seconds without data, the request line and headers must arrive within
``read_timeout`` seconds in total, and so must a request body, so a client that trickles
its headers, idles on a kept-alive connection or announces a body and sends less cannot
hold a thread. The page never puts
data into HTML: the JavaScript sets ``textContent``/``value`` only, and a strict
Content-Security-Policy forbids inline scripts, so text in the data cannot run as code.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from editalign.annotate.store import AnnotationStore, Conflict, Invalid
from editalign.data.pairs import save_pairs_jsonl

logger = logging.getLogger(__name__)

MAX_BODY = 1_000_000
MIN_TOKEN_LENGTH = 16
READ_TIMEOUT = 30.0
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/diff.js": ("diff.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_NO_BODY = object()  # not None: a body of JSON null must still get its 400
_ITEM = re.compile(r"/api/items/(\d{1,9})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return (resources.files("editalign.annotate") / "static" / name).read_bytes()


def _json_bytes(data: Any) -> bytes:
    # "<" escaped too, so even a browser that sniffed JSON as HTML would find no tag in it
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").encode("utf-8")


class AnnotateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: AnnotationStore, host: str = "127.0.0.1", port: int = 8765, *,
                 token: str | None = None, export_path: str | Path | None = None,
                 read_timeout: float = READ_TIMEOUT) -> None:
        if not is_loopback(host) and not token:
            raise ValueError(f"binding to {host} (not loopback) needs a token")
        if not is_loopback(host) and len(token or "") < MIN_TOKEN_LENGTH:
            raise ValueError(f"binding to {host} (not loopback) needs a token of at least "
                             f"{MIN_TOKEN_LENGTH} characters (leave --token out for a random one)")
        if read_timeout <= 0:
            raise ValueError(f"read_timeout must be > 0, got {read_timeout}")
        self.store, self.token, self.read_timeout = store, token, read_timeout
        self.export_path = Path(export_path) if export_path else None
        self.loopback = is_loopback(host)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")


class _Handler(BaseHTTPRequestHandler):
    server: AnnotateServer
    protocol_version = "HTTP/1.1"

    @property  # type: ignore[override]
    def timeout(self) -> float:
        """Socket timeout (``StreamRequestHandler`` applies it in ``setup``); a read that
        times out ends the connection (``handle_one_request`` catches ``TimeoutError``)."""
        return self.server.read_timeout

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        """One request, whose request line and headers must arrive within ``read_timeout``
        seconds in total: the per-read timeout alone lets a client that trickles a header
        byte now and then (or idles on a kept-alive connection) hold a thread forever."""
        watchdog = threading.Timer(self.server.read_timeout, self._drop_connection)
        watchdog.daemon = True
        self._header_watchdog = watchdog
        watchdog.start()
        try:
            super().handle_one_request()
        finally:
            watchdog.cancel()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._header_watchdog.cancel()  # headers are in: the body has its own deadline
        return parsed

    def _drop_connection(self) -> None:
        # wakes the blocked header read with EOF; handle_one_request then ends the connection
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, _json_bytes(data), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # ------------------------------------------------------------------ checks

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name.strip("[]"))

    def _token_ok(self) -> bool:
        if not self.server.token:
            return True
        given = self.headers.get("X-Token") or ""
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = given or auth[7:]
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _body(self) -> Any:
        """The parsed JSON body, or ``_NO_BODY`` once an error has been answered."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            return _NO_BODY
        try:
            length = int(self.headers.get("Content-Length") or "x")
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return _NO_BODY
        if length > MAX_BODY or length < 0:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"request body over {MAX_BODY} bytes")
            return _NO_BODY
        raw = self._read_exactly(length)
        if raw is None:
            return _NO_BODY
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "body is not valid JSON")
        except RecursionError:
            self._error(HTTPStatus.BAD_REQUEST, "body is nested too deeply")
        return _NO_BODY

    def _read_exactly(self, length: int) -> bytes | None:
        """``length`` bytes of body within ``read_timeout`` seconds in total (a trickle of
        bytes that keeps every single read alive still runs out), else answer 408."""
        deadline = time.monotonic() + self.server.read_timeout
        chunks, remaining = [], length
        while remaining > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.connection.settimeout(left)
            try:
                chunk = self.rfile.read1(min(remaining, 65536))
            except TimeoutError:
                break
            if not chunk:  # the client closed the connection
                self.close_connection = True
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        self.connection.settimeout(self.server.read_timeout)
        if remaining > 0:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"the request body did not arrive within "
                        f"{self.server.read_timeout:g} s")
            return None
        return b"".join(chunks)

    def _guard(self) -> bool:
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return False
        if urlsplit(self.path).path.startswith("/api/") and not self._token_ok():
            self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong token")
            return False
        return True

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        if not self._guard():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            self._send(HTTPStatus.OK, _static(name), content_type)
        elif url.path == "/api/info":
            self._json(HTTPStatus.OK, {"count": self.server.store.count(),
                                       "export_path": str(self.server.export_path or "")})
        elif match := _ITEM.fullmatch(url.path):
            item = self.server.store.item(int(match.group(1)))
            if item is None:
                self._error(HTTPStatus.NOT_FOUND, "no such item")
                return
            annotator = (query.get("annotator") or [""])[0]
            item["count"] = self.server.store.count()
            item["annotation"] = (self.server.store.annotation(item["id"], annotator)
                                  if annotator else None)
            self._json(HTTPStatus.OK, item)
        elif url.path == "/api/export.jsonl":
            pairs = self.server.store.export_pairs()
            body = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
            self._send(HTTPStatus.OK, body.encode("utf-8"), "application/x-ndjson",
                       {"Content-Disposition": 'attachment; filename="edits.jsonl"'})
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if not self._guard():
            return
        path = urlsplit(self.path).path
        match = _ITEM.fullmatch(path)
        if not match and path != "/api/export":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        body = self._body()
        if body is _NO_BODY:
            return
        if path == "/api/export":
            self._export()
            return
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "expected a JSON object")
            return
        try:
            version = self.server.store.save(
                int(match.group(1)), body.get("annotator"), body.get("revised"),
                body.get("spans", []), body.get("version", 0))
        except Invalid as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except KeyError:
            self._error(HTTPStatus.NOT_FOUND, "no such item")
        except Conflict as err:
            self._json(HTTPStatus.CONFLICT, {"error": str(err), "current": err.current})
        else:
            self._json(HTTPStatus.OK, {"version": version})

    def _export(self) -> None:
        if self.server.export_path is None:
            self._error(HTTPStatus.CONFLICT, "no export file: start with --out FILE, or "
                        "download /api/export.jsonl")
            return
        pairs = self.server.store.export_pairs()
        save_pairs_jsonl(pairs, self.server.export_path)
        self._json(HTTPStatus.OK, {"count": len(pairs), "path": str(self.server.export_path)})
