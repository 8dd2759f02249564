"""`mnist-cnn serve`'s settings, checked; importable without FastAPI or torch (for `--help`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from mnist_cnn.errors import UsageError

DEFAULT_MAX_UPLOAD_MB = 16     # a phone photo is 3-8 MB; base64 in JSON adds a third


@dataclass
class ServeConfig:
    run: str                          # run directory, its checkpoint.pt, or an exported .onnx file
    host: str = "127.0.0.1"           # loopback: only this machine can reach the page
    port: int = 8000                  # 0 = any free port
    device: str = "auto"
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB   # largest request body, MiB
    workers: int = 1                  # server processes, each with its own copy of the model
    concurrency: int = 2              # decodes + forward passes at once per process (tens of MB each)
    max_connections: int = 4096       # open connections per process; beyond it requests get 503
    header_timeout: float = 10.0      # seconds from connecting to the end of the request's headers
    body_timeout: float = 30.0        # seconds to send the whole body
    keep_alive: float = 5.0           # seconds an idle kept-alive connection stays open
    allow_hosts: tuple[str, ...] = () # Host names answered besides localhost, 127.0.0.1, ::1 ("*.d": d's subdomains, "*": any)
    cors: tuple[str, ...] = ()        # origins whose pages may POST (e.g. http://localhost:3000)
    log_all: bool = False             # log every request, not only refused ones

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
    import torch

    torch.set_num_threads(1)
