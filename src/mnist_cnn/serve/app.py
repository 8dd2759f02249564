"""`mnist-cnn serve`: a local web page to draw a digit on, and the JSON API behind it.

Standard library only (http.server): one page, three static files and one JSON endpoint do not
need a framework. The model is loaded once at start-up (predictor.py); requests are served by
one thread each. Nothing is written to disk.

    GET  /                 the page (static/index.html, app.js, style.css)
    GET  /api/info         {"run", "model", "dataset", "class_names", "max_upload_bytes"}
    POST /api/predict      body: raw image bytes (any format PIL reads), a data URL, or JSON
                           {"image": "data:image/png;base64,..."}
                           -> {"prediction", "label", "probabilities", "class_names",
                               "image" (the 28x28 input as a PNG data URL), "inverted", "ms"}
    errors                 {"error": "one line", "status": N}: 400 malformed request, 404,
                           405 wrong method, 411 no Content-Length, 413 body too large,
                           422 not an image / blank drawing, 500 a bug
"""
from __future__ import annotations

import base64
import binascii
import json
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

from mnist_cnn.errors import MnistCnnError, UsageError

if TYPE_CHECKING:
    from mnist_cnn.serve.predictor import Predictor

DEFAULT_MAX_UPLOAD_MB = 16     # a phone photo is 3-8 MB; base64 in JSON adds a third
REQUEST_TIMEOUT_S = 30         # a client that stalls mid-request loses its connection
DRAIN_LIMIT_BYTES = 64 << 20   # an oversized body up to this is read and discarded so the
                               # client sees the 413 (closing on unread data resets the socket)
STATIC_FILES = {               # URL path -> (file in serve/static, Content-Type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page loads only its own files; images it shows are data: and blob: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class RequestError(MnistCnnError):
    """A request the server refuses; `status` is the HTTP code sent back with the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- request bodies
def image_bytes_from_body(body: bytes, content_type: str = "") -> bytes:
    """The encoded image in a request body: raw bytes, a data URL, or JSON {"image": data URL}.

    Sniffed from the first bytes too, because `curl --data-binary @x.png` labels everything
    application/x-www-form-urlencoded.
    """
    if not body:
        raise RequestError(400, "empty request body; send image bytes or JSON {\"image\": \"data:image/png;base64,...\"}")
    head = body[:16].lstrip()
    if content_type.startswith("application/json") or head.startswith(b"{"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"request body is not valid JSON ({e})") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise RequestError(400, "JSON body needs a string field \"image\" holding a data URL")
        return decode_data_url(payload["image"])
    if head.startswith(b"data:"):
        try:
            return decode_data_url(body.decode("ascii"))
        except UnicodeDecodeError:
            raise RequestError(400, "data URL contains non-ASCII characters") from None
    return body


def decode_data_url(url: str) -> bytes:
    """"data:image/png;base64,iVBOR..." -> the PNG's bytes (only base64 data URLs, as canvases make)."""
    url = url.strip()
    header, comma, data = url.partition(",")
    if not header.startswith("data:") or not comma:
        raise RequestError(400, "\"image\" is not a data URL (expected data:image/...;base64,...)")
    if not header.endswith(";base64"):
        raise RequestError(400, "only base64 data URLs are accepted (data:image/...;base64,...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the data URL's base64 payload is malformed") from None


# ---------------------------------------------------------------- the HTTP side
class Handler(BaseHTTPRequestHandler):
    server: "PredictServer"
    server_version = "mnist-cnn"
    timeout = REQUEST_TIMEOUT_S

    # -- routing
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._guard(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _other(self) -> None:
        self._guard(lambda: self._refuse_method())

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other  # noqa: N815

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            headers = {"Cache-Control": "no-cache"}
            if name.endswith(".html"):
                headers["Content-Security-Policy"] = CSP
            self._send(200, self.server.static[name], ctype, headers)
        elif path == "/api/info":
            self._send_json(200, {**self.server.predictor.info, "max_upload_bytes": self.server.max_upload_bytes})
        elif path == "/api/predict":
            self._refuse_method()
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            raise RequestError(404, f"no such page: {path}")

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/api/predict":
            if path in STATIC_FILES or path == "/api/info":
                self._refuse_method()
                return
            raise RequestError(404, f"no such endpoint: {path}")
        body = self._read_body()
        image = image_bytes_from_body(body, self.headers.get("Content-Type", ""))
        with self.server.slots:   # bounds the memory of simultaneous decodes
            answer = self.server.predictor.predict(image)
        self._send_json(200, answer)

    def _refuse_method(self) -> None:
        path = self.path.split("?", 1)[0]
        allow = "POST" if path == "/api/predict" else "GET, HEAD"
        self._discard_body()
        self._send_json(405, {"error": f"{self.command} is not allowed on {path}; use {allow}", "status": 405},
                        {"Allow": allow})

    # -- request bodies
    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if n < 0:
            raise RequestError(400, f"bad Content-Length: {raw!r}")
        return n

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "chunked uploads are not supported; send a Content-Length")
        n = self._content_length()
        if n is None:
            raise RequestError(411, "the request needs a Content-Length header")
        if n > self.server.max_upload_bytes:
            self._discard_body()
            raise RequestError(413, f"request body is {n:,} bytes; the limit is {self.server.max_upload_bytes:,} "
                                    f"(mnist-cnn serve --max-upload-mb)")
        body = self.rfile.read(n)
        if len(body) < n:
            raise RequestError(400, f"request body ended after {len(body):,} of {n:,} bytes")
        return body

    def _discard_body(self) -> None:
        """Read and drop a body we will not use, so the client can read our answer."""
        try:
            n = self._content_length() or 0
        except RequestError:
            n = 0
        if n > DRAIN_LIMIT_BYTES:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                break
            n -= len(chunk)

    # -- responses
    def _guard(self, action: Callable[[], None]) -> None:
        """Every failure becomes a JSON error; a bug is logged with its traceback and answered 500."""
        from mnist_cnn.preprocess import ImageError

        try:
            action()
        except RequestError as e:
            self._send_json(e.status, {"error": str(e), "status": e.status})
        except ImageError as e:
            self._send_json(422, {"error": str(e), "status": 422})
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True   # the client went away; nobody to answer
        except Exception as e:  # noqa: BLE001 (a bug must not kill the server)
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, {"error": f"internal error ({type(e).__name__}); see the server's console",
                                  "status": 500})

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store", **(headers or {})})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Successful requests are the normal case (one per stroke); only refusals are worth a line.
        if isinstance(code, HTTPStatus):
            code = code.value
        if self.server.log_all or (isinstance(code, int) and code >= 400):
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        self.server.log(f"{self.address_string()} {format % args}")


class PredictServer(ThreadingHTTPServer):
    """The HTTP server; holds the predictor, the static files and the limits."""

    daemon_threads = True        # Ctrl-C does not wait for a stalled client
    allow_reuse_address = True   # a restart right after Ctrl-C can take the same port
    request_queue_size = 128     # listen backlog; socketserver's 5 resets bursts of connections

    def __init__(self, address: tuple[str, int], predictor: Predictor, *,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20, workers: int = 4,
                 log: Callable[[str], None] | None = None, log_all: bool = False) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.predictor = predictor
        self.max_upload_bytes = max_upload_bytes
        self.slots = threading.BoundedSemaphore(workers)
        self.log = log or (lambda line: print(f"serve: {line}", file=sys.stderr, flush=True))
        self.log_all = log_all
        pkg = resources.files("mnist_cnn.serve") / "static"
        self.static = {name: (pkg / name).read_bytes() for name, _ in STATIC_FILES.values()}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@dataclass
class ServeConfig:
    run: str
    host: str = "127.0.0.1"           # loopback: only this machine can reach the page
    port: int = 8000                  # 0 = any free port
    device: str = "auto"
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    workers: int = 4                  # requests preprocessed at once (each may hold a large photo)
    log_all: bool = False             # log every request, not only refused ones


def make_server(config: ServeConfig, log: Callable[[str], None] | None = None) -> PredictServer:
    """Load the run and bind the socket (not yet serving). Port 0 picks a free port: see `.url`."""
    if not 0 <= config.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {config.port}")
    if not 0 < config.max_upload_mb < 1 << 20:  # also refuses NaN and inf, which int() below cannot take
        raise UsageError(f"--max-upload-mb must be a positive number of megabytes below 1048576, not {config.max_upload_mb}")
    if config.workers < 1:
        raise UsageError("--workers must be at least 1")
    from mnist_cnn.serve.predictor import Predictor  # torch: imported only when serving

    predictor = Predictor(config.run, config.device)
    try:
        return PredictServer((config.host, config.port), predictor, max_upload_bytes=int(config.max_upload_mb * (1 << 20)),
                             workers=config.workers, log=log, log_all=config.log_all)
    except OSError as e:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None


def serve(config: ServeConfig, print_fn: Callable[[str], None] = print) -> None:
    """Run the server until Ctrl-C or SIGTERM, then close the socket and return."""
    server = make_server(config)
    info = server.predictor.info
    print_fn(f"Serving run {server.predictor.run_dir} ({info['model']} on {info['dataset']}, "
             f"classes {', '.join(info['class_names'])}) on {server.predictor.device}")
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print_fn(f"warning: listening on {config.host}: other machines on the network can reach this page")
    print_fn(f"Open {server.url} in a browser. Press Ctrl-C to stop.")
    sys.stdout.flush()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print_fn("Stopped.")
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
