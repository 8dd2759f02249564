"""The rules every request passes before it reaches a route.

Standard parts do what they can (wired in app.create_app and server.uvicorn_config):
- Host: Starlette's TrustedHostMiddleware decides whether Host names this machine (localhost
  names, plus --allow-host), against DNS rebinding: a page on another site that re-points its
  name at 127.0.0.1 sends its own name as Host. The refusal is ours: 421 as JSON.
- --cors: Starlette's CORSMiddleware answers preflights and adds Access-Control-* headers.
- uvicorn: limit_concurrency (--max-connections, 503 beyond), timeout_keep_alive (--keep-alive);
  protocol.py adds the header deadline and size cap that uvicorn's httptools parser lacks.

`Guard` keeps only what those lack:
- POSTs from a browser on another origin (Origin / Sec-Fetch-Site) are refused unless that origin
  was given with --cors. Browsers send text/plain, form and multipart POSTs across origins without
  asking first (CORS "simple" requests), so the server refuses them itself; CORS headers alone
  would only stop the page from reading the answer after the work was done.
- Bodies need a Content-Length no larger than the limit, are read here chunk by chunk with a
  deadline, and reserve their size from a per-process byte budget first, so many large uploads
  at once are refused (429) instead of held in memory together.
- Paths with control characters and repeated Host/Content-Length/Origin headers are refused (400),
  and the request log escapes control characters.
"""
from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable

import anyio
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

from mnist_cnn.errors import escape_controls

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SINGLE_HEADERS = (b"host", b"content-length", b"origin")   # two of them: which one counts is ambiguous
SMALL_BODY = 1 << 20           # bodies up to 1 MiB draw on their own pool: big uploads never starve drawings
SMALL_POOL = 32 << 20          # bytes of small bodies held at once per process
LARGE_POOL = 24 << 20          # bytes of larger bodies held at once per process: one 16 MiB upload, three 8 MiB


class ByteBudget:
    """Bytes of request bodies held at once; `take` fails at once rather than queueing the body."""

    def __init__(self, size: int) -> None:
        self.free = size

    def take(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def give(self, n: int) -> None:
        self.free += n


class Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def trusted_host_patterns(allow_hosts: tuple[str, ...]) -> list[str]:
    """TrustedHostMiddleware's allowed_hosts: the local names and --allow-host ones, each also with
    the trailing dot of a fully qualified name ("localhost."); IPv6 literals in brackets."""
    names = [*LOCAL_HOSTS, *(f"[{h}]" if ":" in h and not h.startswith("[") else h.rstrip(".") for h in allow_hosts)]
    return [p for n in names for p in ((n,) if n == "*" or n.startswith("[") else (n, n + "."))]


class HostCheck:
    """Starlette's TrustedHostMiddleware as a yes/no question, so the refusal can be our JSON 421."""

    def __init__(self, allow_hosts: tuple[str, ...]) -> None:
        self.names = ", ".join(sorted({*LOCAL_HOSTS, *allow_hosts}))
        self.middleware = TrustedHostMiddleware(self.allowed, trusted_host_patterns(allow_hosts), www_redirect=False)

    @staticmethod
    async def allowed(scope: Scope, receive: Receive, send: Send) -> None:
        scope["mnist_cnn.host_ok"] = True       # reached only when the middleware lets the request through

    async def check(self, scope: Scope, host: str) -> None:
        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:   # the middleware's own plain-text 400
            pass

        await self.middleware(scope, nothing, discard)
        if not scope.pop("mnist_cnn.host_ok", False):
            raise Refusal(421, f"this server answers to {self.names}, not Host {host!r}; "
                               "start it with --allow-host NAME to add a name")


class Guard:
    """ASGI middleware applying the module's rules, then logging refusals (or every request)."""

    def __init__(self, app: Callable, *, allow_hosts: tuple[str, ...] = (), cors: tuple[str, ...] = (),
                 max_body: int = 16 << 20, body_timeout: float = 30.0,
                 log: Callable[[str], None] | None = None, log_all: bool = False) -> None:
        self.app = app
        self.hosts = HostCheck(allow_hosts)
        self.cors = frozenset(o.rstrip("/") for o in cors)
        self.max_body, self.body_timeout = max_body, body_timeout
        self.small, self.large = ByteBudget(SMALL_POOL), ByteBudget(max(LARGE_POOL, max_body))
        self.log = log or (lambda line: print(f"serve: {line}", file=sys.stderr, flush=True))
        self.log_all = log_all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def send_checked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            headers = await self.check(scope)
            if scope["method"] in BODY_METHODS:
                await self.with_body(scope, receive, send_checked, headers)
            else:
                await self.app(scope, receive, send_checked)
        except Refusal as r:
            if status == 0:
                answer = JSONResponse({"error": str(r), "status": r.status}, r.status,
                                      {"Cache-Control": "no-store", **r.headers})
                await answer(scope, receive, send_checked)
        finally:
            if self.log_all or status >= 400 or status == 0:
                self.log_request(scope, status)

    async def check(self, scope: Scope) -> dict[bytes, bytes]:
        """Refuse bad paths, foreign Host names and cross-origin writes; the headers as a dict."""
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in scope["path"]):
            raise Refusal(400, "control characters in the request path")
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers and name in SINGLE_HEADERS:
                raise Refusal(400, f"more than one {name.decode()} header")
            headers[name] = value
        host = headers.get(b"host", b"").decode("latin-1")
        await self.hosts.check(scope, host)
        if scope["method"] not in ("GET", "HEAD"):
            self.check_origin(headers, host)
        return headers

    def check_origin(self, headers: dict[bytes, bytes], host: str) -> None:
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/") or None
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1")
        if origin in self.cors:
            return
        if origin is not None and origin != f"http://{host}":
            raise Refusal(403, f"cross-origin request from {origin!r} refused; start the server with "
                               f"--cors {origin if origin != 'null' else 'ORIGIN'} to allow it")
        if site in ("cross-site", "same-site"):
            raise Refusal(403, f"cross-origin request refused (Sec-Fetch-Site: {site}); see --cors")

    async def with_body(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        n = self.content_length(headers)
        pool = self.small if n <= SMALL_BODY else self.large
        if not pool.take(n):
            raise Refusal(429, "too many large uploads at once; try again in a moment", {"Retry-After": "1"})
        try:
            body = await self.read_body(receive, n)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            pool.give(n)

    def content_length(self, headers: dict[bytes, bytes]) -> int:
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            raise Refusal(411, "chunked uploads are not supported; send a Content-Length", {"Connection": "close"})
        raw = headers.get(b"content-length")
        if raw is None:
            raise Refusal(411, "the request needs a Content-Length header")
        if not raw.isdigit():
            raise Refusal(400, f"bad Content-Length: {raw.decode('latin-1')!r}")
        n = int(raw)
        if n > self.max_body:
            # Up to a few limits' worth is read and dropped so the client sees the 413; beyond, close.
            close = {"Connection": "close"} if n > 4 * self.max_body else {}
            raise Refusal(413, f"request body is {n:,} bytes; the limit is {self.max_body:,} "
                               f"(mnist-cnn serve --max-upload-mb)", close)
        return n

    async def read_body(self, receive: Receive, n: int) -> bytes:
        """The whole body, read within body_timeout; stops at the declared length or the limit."""
        chunks, got = [], 0
        with anyio.move_on_after(self.body_timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Refusal(400, "the client closed the connection mid-body")
                chunk = message.get("body", b"")
                got += len(chunk)
                if got > min(n, self.max_body):
                    raise Refusal(413, "request body longer than its Content-Length or the limit", {"Connection": "close"})
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            raise Refusal(408, f"request body not received within {self.body_timeout:g} s", {"Connection": "close"})
        return b"".join(chunks)

    def log_request(self, scope: Scope, status: int) -> None:
        client = scope.get("client") or ("-", 0)
        query = scope.get("query_string", b"").decode("latin-1")
        target = escape_controls(scope["path"] + (f"?{query}" if query else ""))
        self.log(f'{client[0]}:{client[1]} - "{scope["method"]} {target} HTTP/{scope["http_version"]}" '
                 f"{status or 'no answer'}")
