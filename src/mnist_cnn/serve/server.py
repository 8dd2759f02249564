"""Running the app on uvicorn: bind the socket, start one process or N, stop on Ctrl-C / SIGTERM.

The socket is bound here rather than by uvicorn so that port 0 and "address in use" work the same
for one worker and many, and fail as one clear line. With --workers N, uvicorn's supervisor
spawns N processes that share the socket; each loads the model (app.app_from_env) and applies
the limits on its own (connections, decode slots, body budget are per process).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Callable

from mnist_cnn.errors import UsageError
from mnist_cnn.serve.config import ServeConfig

INSTALL_HINT = "mnist-cnn serve needs FastAPI and uvicorn: pip install 'mnist-cnn[serve]'"
BACKLOG = 2048                 # connections waiting for accept(); bursts beyond it are reset by the kernel
GRACEFUL_S = 3                 # seconds Ctrl-C waits for requests in flight
WORKER_START_S = 120           # a worker imports torch and loads the model before it answers the
                               # supervisor's health check; uvicorn's 5 s kills it on a busy machine.
                               # The wait ends early when the worker dies or Ctrl-C comes (supervisor.py)


def require_web_stack() -> None:
    try:
        import fastapi  # noqa: F401
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart right after Ctrl-C
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)   # connections made before uvicorn starts wait in the kernel's queue
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def raise_fd_limit(connections: int) -> None:
    """Room for `connections` sockets (the soft open-file limit is often 1,024)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def uvicorn_config(config: ServeConfig, app: Any) -> Any:
    import uvicorn

    from mnist_cnn.serve.protocol import DeadlineProtocol

    try:
        import uvloop  # noqa: F401  (a faster event loop when installed)
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uv = uvicorn.Config(app, factory=isinstance(app, str), workers=config.workers, http=DeadlineProtocol, loop=loop,
                        lifespan="off", limit_concurrency=config.max_connections, backlog=BACKLOG,
                        timeout_keep_alive=config.keep_alive, timeout_graceful_shutdown=GRACEFUL_S,
                        proxy_headers=False, server_header=False, access_log=False, log_level="warning",
                        timeout_worker_healthcheck=WORKER_START_S)
    uv.header_timeout = config.header_timeout   # read by DeadlineProtocol, in every worker
    return uv


def serve(config: ServeConfig, print_fn: Callable[[str], None] = print) -> None:
    """Run the server until Ctrl-C or SIGTERM, then close the socket and return."""
    config.check()
    require_web_stack()
    import uvicorn

    from mnist_cnn.serve.app import CONFIG_ENV, create_app
    from mnist_cnn.serve.config import limit_torch_threads
    from mnist_cnn.serve.predictor import Predictor

    limit_torch_threads()
    predictor = Predictor(config.run, config.device)    # a bad RUN fails here, before any worker starts
    sock = bind(config.host, config.port)
    raise_fd_limit(config.max_connections)
    info = predictor.info
    print_fn(f"Serving {predictor.source} ({info['model']} on {info['dataset']}, classes {', '.join(info['class_names'])}) "
             f"on {predictor.device}, {config.workers} worker process{'es' if config.workers > 1 else ''}")
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print_fn(f"warning: listening on {config.host}: other machines can connect; requests must name an "
                 "allowed Host (--allow-host)")
    print_fn(f"Open {url_of(sock)} in a browser. Press Ctrl-C to stop.")
    sys.stdout.flush()
    if config.workers == 1:
        app: Any = create_app(config, predictor)
    else:
        os.environ[CONFIG_ENV] = config.to_json()
        app, predictor = "mnist_cnn.serve.app:app_from_env", None
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        uv = uvicorn_config(config, app)
        if config.workers == 1:
            uvicorn.Server(uv).run(sockets=[sock])
        else:
            from mnist_cnn.serve.supervisor import Supervisor

            Supervisor(uv, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print_fn("Stopped.")


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
