"""Slowloris check for `mnist-cnn serve` (issue #13): many connections that never finish their headers.

    mnist-cnn serve RUN --port 8000 &
    python bench/slow_sockets.py --port 8000 --sockets 3000

Opens N connections to 127.0.0.1 (loopback only), each sending a partial request and then one byte
now and then; meanwhile times normal POSTs of a 28x28 PNG. Reports the normal requests' latency
with the sockets open, how many slow sockets were answered (408) and closed by the header
deadline, and the server's RSS when --pid is given. Stops by itself after --seconds.
"""
from __future__ import annotations

import argparse
import re
import resource
import socket
import statistics
import time
import urllib.request
from pathlib import Path

from loadtest import digit_png  # bench/ is on sys.path when this script runs


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def normal_request(port: int, body: bytes) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sockets", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=15, help="how long to keep trickling (default: 15)")
    p.add_argument("--pid", type=int, help="the server's process id, to report its RSS")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sockets + 256), hard))
    body = digit_png()
    before = [normal_request(args.port, body) for _ in range(20)]
    rss0 = rss_mb(args.pid)
    socks, t0 = [], time.perf_counter()
    for _ in range(args.sockets):
        s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        s.setblocking(False)
        socks.append(s)
    opened_s = time.perf_counter() - t0
    during, answered, closed = [], 0, 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        during.append(normal_request(args.port, body))
        for s in socks:
            try:
                s.send(b"a")
            except (BlockingIOError, OSError):
                pass
        time.sleep(0.2)
    rss1 = rss_mb(args.pid)
    for s in socks:
        try:
            data = s.recv(64)
            answered += data.startswith(b"HTTP/1.1 408")
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except (BlockingIOError, OSError):
            pass
        s.close()
    q = lambda xs, f: statistics.quantiles(xs, n=100, method="inclusive")[f - 1] if len(xs) > 1 else xs[0]  # noqa: E731
    print(f"{args.sockets} slow sockets opened in {opened_s:.1f} s; normal requests before: "
          f"median {statistics.median(before):.1f} ms; while open ({len(during)}): median "
          f"{statistics.median(during):.1f} ms, p99 {q(during, 99):.1f} ms, max {max(during):.1f} ms")
    print(f"slow sockets answered 408 {answered}, closed {closed} of {args.sockets}"
          + (f"; server RSS {rss0:.0f} -> {rss1:.0f} MB" if rss0 is not None else ""))


if __name__ == "__main__":
    main()
