"""A real `mnist-cnn serve` in a subprocess on a free loopback port, for the serve tests.

    with ServerProcess(run, "--max-upload-mb", "0.25", log=tmp_path / "serve.log") as srv:
        srv.request("GET", "/api/info")
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServerProcess:
    def __init__(self, run: str | Path, *args: str, log: Path, timeout: float = 120) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path = log
        self.proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", str(run), "--port", "0",
                                      "--device", "cpu", *args],
                                     stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
        self.banner: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"serve exited ({self.proc.wait()}): {log.read_text()[-2000:]}")
            self.banner.append(line)
            if line.startswith("Open "):
                self.url = line.split()[1]
                self.host, port = re.fullmatch(r"http://([\d.]+):(\d+)/", self.url).groups()
                self.port = int(port)
                return
        self.stop()
        raise RuntimeError("serve did not print its URL in time")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The server process's resident memory (VmRSS) or its peak so far (VmHWM), MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024

    def reset_peak_rss(self) -> None:
        """Start VmHWM afresh at the current RSS (Linux: writing 5 to clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def children(self) -> list[int]:
        """Processes whose parent is the server (its workers with --workers N)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return found

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def post_json(self, body: bytes, headers: dict[str, str] | None = None,
                  path: str = "/api/predict") -> tuple[int, dict]:
        status, hdrs, data = self.request("POST", path, body, headers)
        assert hdrs["content-type"] == "application/json"
        return status, json.loads(data)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
