"""The HTTP shell of ``labctl web``: the standard library's ThreadingHTTPServer, and the guards.

The page can stop hosts and send mail, so the server listens on 127.0.0.1 only and answers only a
request that
- carries the token printed with the URL (``?token=`` on the page and the event stream, the
  ``X-Maillab-Token`` header on every other /api/ call: a header another site's page cannot send
  without a CORS preflight, which this server never grants);
- names this server in its Host header (``127.0.0.1:PORT`` or ``localhost:PORT``: a DNS-rebinding
  page names its own host) and, if it has an Origin, comes from this server's origin;
- does what it does by POST (an action by GET is refused, so no link or image can act).
Every answer carries a strict Content-Security-Policy (``default-src 'self'``: the page runs only
its own modules and talks only to this server) and no Referer leaves it (the URL holds the token).
Errors are JSON, ``{"error": "what happened and what to do"}``. The static files (the page's code)
need no token: they hold nothing of the lab.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from labctl.errors import LabctlError
from labctl.web import events
from labctl.web.events import EventLog
from labctl.web.live import LiveLab

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
TOKEN_HEADER = "X-Maillab-Token"
MAX_BODY = 1 << 20  # a message typed into the page's form; anything larger is refused


class Refused(Exception):
    def __init__(self, status: HTTPStatus, text: str) -> None:
        super().__init__(text)
        self.status = status


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, live: LiveLab, port: int = 0, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.live = live
        self.log: EventLog = live.log
        self.token = token or secrets.token_urlsafe(24)
        self.port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.heartbeat = events.HEARTBEAT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def start_following(self) -> threading.Thread:
        thread = threading.Thread(target=self.live.run, name="labctl-web-follow", daemon=True)
        thread.start()
        return thread

    def server_close(self) -> None:
        self.live.stop()
        self.log.close()
        super().server_close()


Route = Callable[["Handler", dict[str, list[str]], Any], Any]


class Handler(BaseHTTPRequestHandler):
    server: WebServer
    server_version = "labctl-web"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the terminal shows the URL and errors, not every request

    # -- the guards -------------------------------------------------------------------------------

    def _guard(self, *, api: bool, action: bool) -> None:
        if self.headers.get("Host", "") not in self.server.hosts:
            raise Refused(HTTPStatus.MISDIRECTED_REQUEST, f"this server answers only as 127.0.0.1:{self.server.port} "
                          f"or localhost:{self.server.port}; open the URL labctl web printed")
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            raise Refused(HTTPStatus.FORBIDDEN, f"requests from {origin} are refused: only the page of this "
                          "server may call it")
        if not api:
            return
        given = self.headers.get(TOKEN_HEADER)
        if given is None and not action:
            given = self._query().get("token", [None])[0]
        if given is None or not hmac.compare_digest(given.encode(), self.server.token.encode()):
            how = f"the {TOKEN_HEADER} header" if action else f"?token= or the {TOKEN_HEADER} header"
            raise Refused(HTTPStatus.UNAUTHORIZED, f"no valid token: give the one labctl web printed ({how})")

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    # -- answers ----------------------------------------------------------------------------------

    def _headers(self, status: HTTPStatus, ctype: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _json(self, status: HTTPStatus, value: Any) -> None:
        body = json.dumps(value, ensure_ascii=False).encode()
        self._headers(status, "application/json; charset=utf-8", len(body))
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, text: str, allow: str | None = None) -> None:
        body = json.dumps({"error": text}).encode()
        self.send_response(status)
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- dispatch ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            if not path.startswith("/api/"):
                self._guard(api=path == "/", action=False)
                if method != "GET":
                    raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "the page and its files are read with GET")
                self._static(path)
                return
            found = _route(path)
            if found is None:
                raise Refused(HTTPStatus.NOT_FOUND, f"no {path}; the API is listed in README (labctl web)")
            wanted, route = found
            if method != wanted:
                self._guard(api=False, action=False)
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} is {wanted} only"
                              + (": every action is a POST" if wanted == "POST" else ""))
            self._guard(api=True, action=wanted == "POST")
            if route is _events:
                self._events()
                return
            body = self._body() if wanted == "POST" else None
            self._json(HTTPStatus.OK, route(self, self._query(), body))
        except Refused as exc:
            self._error(exc.status, str(exc), "POST" if exc.status == HTTPStatus.METHOD_NOT_ALLOWED
                        and path.startswith("/api/") else None)
        except LabctlError as exc:
            self._error(HTTPStatus.CONFLICT, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug: the page gets JSON, the terminal the traceback to report
            traceback.print_exc()
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"labctl web failed ({type(exc).__name__}); the "
                        "terminal running it shows the traceback: please report it")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} octets")
        if not length:
            return {}
        try:
            value = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refused(HTTPStatus.BAD_REQUEST, "the body must be a JSON object") from None
        if not isinstance(value, dict):
            raise Refused(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return value

    def _static(self, path: str) -> None:
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        file = (STATIC / name).resolve()
        if (path != "/" and not path.startswith("/static/")) or file.parent != STATIC.resolve() \
                or file.suffix not in TYPES or not file.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"no {path} here; open the URL labctl web printed")
        data = file.read_bytes()
        self._headers(HTTPStatus.OK, TYPES[file.suffix], len(data))
        self.wfile.write(data)

    def _events(self) -> None:
        last = events.parse_last_id(self.headers.get("Last-Event-ID"), self._query().get("since", [None])[0])
        self._headers(HTTPStatus.OK, "text/event-stream; charset=utf-8")
        try:
            for chunk in self.server.log.stream(last, self.server.heartbeat):
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        self.close_connection = True


# -- routes ---------------------------------------------------------------------------------------


def _one(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values or not values[0].strip():
        raise Refused(HTTPStatus.BAD_REQUEST, f"say which: ?{name}=...")
    return values[0]


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise Refused(HTTPStatus.BAD_REQUEST, f"the body needs {name!r} (text)")
    return value


def _events(h: Handler, q: dict[str, list[str]], body: Any) -> Any:
    raise AssertionError("streamed by Handler._events")


def _send(h: Handler, q: dict[str, list[str]], body: Any) -> Any:
    to = body.get("to")
    rcpts = [to] if isinstance(to, str) else to
    if not isinstance(rcpts, list) or not rcpts or not all(isinstance(r, str) and r.strip() for r in rcpts):
        raise Refused(HTTPStatus.BAD_REQUEST, "the body needs 'to': an address or a list of addresses")
    return h.server.live.send(_text(body, "from"), [r.strip() for r in rcpts], _text(body, "subject"),
                              _text(body, "body", ""))


ROUTES: dict[str, tuple[str, Route]] = {
    "/api/topology": ("GET", lambda h, q, b: h.server.live.topology()),
    "/api/exchanges": ("GET", lambda h, q, b: h.server.live.exchange_list()),
    "/api/messages": ("GET", lambda h, q, b: h.server.live.messages()),
    "/api/journey": ("GET", lambda h, q, b: h.server.live.journey(_one(q, "id"))),
    "/api/queue": ("GET", lambda h, q, b: h.server.live.queue()),
    "/api/mailboxes": ("GET", lambda h, q, b: h.server.live.mailboxes()),
    "/api/runs": ("GET", lambda h, q, b: h.server.live.runs()),
    "/api/events": ("GET", _events),
    "/api/queue/flush": ("POST", lambda h, q, b: h.server.live.flush()),
    "/api/send": ("POST", _send),
    "/api/fetch": ("POST", lambda h, q, b: h.server.live.fetch(_text(b, "user"))),
}


def _route(path: str) -> tuple[str, Route] | None:
    if path in ROUTES:
        return ROUTES[path]
    parts = path.split("/")  # /api/hosts/NAME/ACTION
    if len(parts) == 5 and parts[2] == "hosts" and parts[3]:
        host, action = parts[3], parts[4]
        return "POST", lambda h, q, b: h.server.live.host_action(host, action)
    return None
