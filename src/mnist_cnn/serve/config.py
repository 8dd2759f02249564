"""`mnist-cnn serve`'s settings, checked; importable without FastAPI or torch (for `--help`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from mnist_cnn.config import setting
from mnist_cnn.errors import UsageError

DEFAULT_MAX_UPLOAD_MB = 16     # a phone photo is 3-8 MB; base64 in JSON adds a third


@dataclass
class ServeConfig:
    """`mnist-cnn serve`'s settings; the command's flags and --help are generated from these fields."""

    run: str = setting(help="run directory, a .pt checkpoint file (the file named is the one loaded), or an "
                            "exported .onnx file", flag="RUN")
    host: str = setting("127.0.0.1", "address to listen on: 127.0.0.1 = this machine only, 0.0.0.0 = every "
                                     "interface")
    port: int = setting(8000, "TCP port (0 = any free port)")
    device: str = setting("auto", "where the model runs", ("auto", "cpu", "cuda"))
    max_upload_mb: float = setting(DEFAULT_MAX_UPLOAD_MB, "largest request body accepted, MiB; larger ones get "
                                                          "HTTP 413 (a phone photo is 3-8 MB; base64 in JSON adds a third)",
                                   metavar="MB")
    workers: int = setting(1, "server processes, each with its own copy of the model", metavar="N")
    concurrency: int = setting(2, "images decoded at once per process in worker threads (each may take tens of "
                                  "MB); the rest wait their turn", metavar="N")
    max_connections: int = setting(4096, "open connections per process before new requests get HTTP 503",
                                   metavar="N")
    header_timeout: float = setting(10.0, "seconds a client has to send its request headers, else 408",
                                    metavar="S")
    body_timeout: float = setting(30.0, "seconds a client has to send its request body, else 408", metavar="S")
    keep_alive: float = setting(5.0, "seconds an idle kept-alive connection stays open", flag=None)
    allow_hosts: tuple[str, ...] = setting((), "answer requests whose Host is NAME too (repeatable; localhost, "
                                               "127.0.0.1 and ::1 always; '*.example.com' = its subdomains; "
                                               "'*' = any, which lets other web sites reach the server by DNS "
                                               "rebinding)", flag="--allow-host", metavar="NAME")
    cors: tuple[str, ...] = setting((), "let web pages from ORIGIN (e.g. http://localhost:3000) call the API "
                                        "(repeatable; by default cross-origin POSTs are refused)", metavar="ORIGIN")
    log_all: bool = setting(False, "log every request, not only refused ones", flag="--log-requests")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, not {self.port}")
        if not 0 < self.max_upload_mb < 1 << 20:  # also refuses NaN and inf
            raise UsageError(f"--max-upload-mb must be a positive number of megabytes below 1048576, not {self.max_upload_mb}")
        for name in ("workers", "concurrency", "max_connections"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("header_timeout", "body_timeout", "keep_alive"):
            if not 0 < getattr(self, name) < 3600:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 3600 seconds")
        for name in self.allow_hosts:   # TrustedHostMiddleware's patterns: a name, "*", or "*.domain"
            if not name or "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
                raise UsageError(f"--allow-host takes a host name, *.domain or *, not {name!r}")
        for origin in self.cors:
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise UsageError(f"--cors takes an origin like http://localhost:3000 (scheme, host, port), not {origin!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        fields = json.loads(text)
        return cls(**{**fields, "allow_hosts": tuple(fields["allow_hosts"]), "cors": tuple(fields["cors"])})


def limit_torch_threads() -> None:
    """One intra-op thread per server process: a batch of 28x28 images gains nothing from more,
    and with --workers N the processes would fight over the cores."""
    import torch  # at call time: this module is imported for `serve --help`, which needs no torch

    torch.set_num_threads(1)
