"""Load test for `mnist-cnn serve` (issues #13, #24): wrk POSTing a 28x28 PNG to /api/predict,
beside the framework's own ceiling, in one run.

    python bench/loadtest.py RUN                 # ceiling and serve, --workers 2 each
    python bench/loadtest.py RUN --workers 1 --duration 3
    python bench/loadtest.py RUN --target old='PYTHONPATH=/tmp/oldserve/src python -m mnist_cnn serve {run} --port {port} --device cpu'

The default targets: "ceiling", a FastAPI route that reads the body and returns a constant JSON
(bench/ceiling_app.py) on uvicorn with the same workers, httptools and uvloop; "serve", `mnist-cnn
serve RUN --workers N`; "serve ?view=1", the same asked for the 28x28 view as the page does. Each
target is a shell command with {run}, {port} and {workers}; it is started here on 127.0.0.1,
waited for, warmed up, measured with `wrk --latency -t2 -c20 -d10s` (loopback only, fixed
duration, stops by itself), and stopped. Reports requests/s and its ratio to the ceiling's,
latency p50/p90/p99, errors and non-2xx answers, the server's RSS (the process and its children)
before and after, and its CPU time per request. Prints a table and writes
bench/results/serve-<date>-<host>.json. Needs `wrk` (Debian: apt-get install wrk).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
NEW = f"{sys.executable} -m mnist_cnn serve {{run}} --port {{port}} --device cpu --workers {{workers}}"
CEILING = (f"{sys.executable} -m uvicorn ceiling_app:app --app-dir bench --host 127.0.0.1 --port {{port}} "
           "--workers {workers} --http httptools --loop uvloop --no-access-log --log-level warning")
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = assert(io.open("{path}", "rb"))
wrk.body = f:read("*all")
f:close()
"""


def digit_png() -> bytes:
    """A 28x28 grey '7', white on black (~150 bytes of PNG)."""
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(8, 7), (20, 7), (12, 22)], fill=255, width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its descendants, MiB (from /proc)."""
    total = 0
    for p in tree_pids(pid):
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) in tree_pids(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def tree_pids(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def wait_ready(port: int, proc: subprocess.Popen, body: bytes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"loadtest: the server exited with status {proc.returncode} before answering")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body,
                                         headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"loadtest: no answer on port {port} within {timeout:.0f} s")


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"],
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def measure(name: str, command: str, path: str, args: argparse.Namespace, lua: Path, body: bytes) -> dict:
    port = free_port()
    cmd = command.format(run=args.run, port=port, workers=args.workers)
    url = f"http://127.0.0.1:{port}{path}"
    proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_ready(port, proc, body)
        subprocess.run(["wrk", "-t2", "-c20", f"-d{args.warmup}s", "-s", str(lua), url],
                       capture_output=True, check=True)                      # warm-up, not reported
        rss_before, cpu_before = tree_rss_mb(proc.pid), tree_cpu_s(proc.pid)
        out = subprocess.run(["wrk", "--latency", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                              "-s", str(lua), url],
                             capture_output=True, text=True, check=True, timeout=args.duration + 60).stdout
        rss_after, cpu_after = tree_rss_mb(proc.pid), tree_cpu_s(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = parse_wrk(out)
    result["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / max(result["requests"], 1), 3)
    return {"name": name, "command": cmd, "path": path, **result, "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1), "wrk_output": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (or .onnx) every target serves")
    p.add_argument("--target", action="append", default=[], metavar="NAME=COMMAND",
                   help="a server command with {run}, {port} and {workers} (repeatable; default: the "
                        "ceiling, serve, and serve asked for the view with ?view=1)")
    p.add_argument("--workers", type=int, default=2, help="server processes of each default target (default: 2)")
    p.add_argument("--duration", type=int, default=10, help="seconds of load per target (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unreported load first (default: 2)")
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/serve-<date>-<host>.json)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("loadtest: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    targets = ([(*t.split("=", 1), "/api/predict") for t in args.target]
               or [("ceiling", CEILING, "/api/predict"), ("serve", NEW, "/api/predict"),
                   ("serve ?view=1", NEW, "/api/predict?view=1")])
    body = digit_png()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "digit.png").write_bytes(body)
        lua = Path(tmp) / "post.lua"
        lua.write_text(LUA.format(path=Path(tmp) / "digit.png"))
        for name, command, path in targets:
            print(f"loadtest: {name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, command, path, args, lua, body))
    ceiling = next((r["requests_per_s"] for r in rows if r["name"] == "ceiling"), None)
    for r in rows:
        r["of_ceiling"] = round(r["requests_per_s"] / ceiling, 3) if ceiling else None
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, POST /api/predict with a "
          f"{len(body)}-byte 28x28 PNG; {platform.node()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'target':<22}{'req/s':>9}{'of ceiling':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}{'non-2xx':>9}{'RSS MB':>16}{'CPU ms/req':>12}")
    for r in rows:
        share = f"{r['of_ceiling']:.0%}" if r["of_ceiling"] is not None else "-"
        print(f"{r['name']:<22}{r['requests_per_s']:>9.0f}{share:>11}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['socket_errors']:>8}{r['non_2xx']:>9}{r['rss_before_mb']:>8.0f}->{r['rss_after_mb']:<6.0f}{r['server_cpu_ms_per_request']:>10.2f}")
    out = args.out or ROOT / "bench" / "results" / f"serve-{datetime.now():%Y-%m-%d-%H%M}-{platform.node()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    out.write_text(json.dumps({"when": datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                               "cpu": cpu, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                               "body_bytes": len(body), "duration_s": args.duration, "workers": args.workers,
                               "connections": args.connections, "results": rows}, indent=2))
    print(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
