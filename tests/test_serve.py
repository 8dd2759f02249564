"""`mnist-cnn serve`: the JSON API, its refusals, concurrency, and the command's start and stop.

The server is the real command (uvicorn) in a subprocess on 127.0.0.1 with a free port, serving a
run trained for one epoch on synthetic data (labelled with Fashion-MNIST's class names, so we can
see the run's names reach the page). Hostile inputs are in test_serve_hostile.py, the
real-browser test in test_serve_browser.py.
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_cnn import config as cfg
from mnist_cnn.cli import main
from mnist_cnn.data.registry import DATASETS
from mnist_cnn.inference import load_classifier, to_input
from mnist_cnn.preprocess import preprocess
from mnist_cnn.serve.bodies import decode_data_url
from mnist_cnn.train import train
from serve_process import ServerProcess
from synthetic import toy_dataset

FASHION = DATASETS["fashion-mnist"].class_names
LIMIT_MB = 0.25            # the test server's upload limit: 262,144 bytes


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    data = dataclasses.replace(toy_dataset(n_train=300, n_validation=50, n_test=50), class_names=FASHION)
    config = cfg.make_config("default", epochs=1, batch_size=50, device="cpu")
    return train(config, out_dir=tmp_path_factory.mktemp("serve"), name="toy", dataset=data,
                 print_fn=lambda s: None, progress=False).run_dir


@pytest.fixture(scope="module")
def server(toy_run, tmp_path_factory):
    with ServerProcess(toy_run, "--max-upload-mb", str(LIMIT_MB), log=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


def request(srv: ServerProcess, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return srv.request(method, path, body, headers)


def post_json(srv: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return srv.post_json(body, headers)


def drawing(x0: int = 90, y0: int = 40, size: int = 200, **kw) -> bytes:
    """A dark '7'-like stroke on a white canvas, as the page sends it (PNG bytes)."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.line([(x0, y0), (x0 + 60, y0), (x0 + 20, y0 + 120)], fill="black", width=kw.get("width", 14))
    buf = io.BytesIO()
    im.save(buf, format=kw.get("format", "PNG"))
    return buf.getvalue()


def expected(run: Path, images: list[bytes]) -> list[np.ndarray]:
    """What the model says about each image when called directly: the probabilities the API must return."""
    model = load_classifier(run, "cpu").model
    with torch.inference_mode():
        return [torch.softmax(model(to_input(preprocess(im).image[None], False)), 1)[0].numpy() for im in images]


# ---------------------------------------------------------------- good requests
def test_good_image_gets_probabilities_class_names_and_the_28x28_input(server, toy_run):
    image = drawing()
    status, answer = server.post_json(image, path="/api/predict?view=1")
    assert status == 200
    assert answer["class_names"] == list(FASHION)                 # the run's names, not digits
    probs = np.array(answer["probabilities"])
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-4 and (probs >= 0).all()
    np.testing.assert_allclose(probs, expected(toy_run, [image])[0], atol=2e-6)
    assert answer["prediction"] == int(probs.argmax()) and answer["label"] == FASHION[answer["prediction"]]
    assert answer["inverted"] is True                               # dark ink on white
    png = decode_data_url(answer["image"])
    seen = Image.open(io.BytesIO(png))
    assert (seen.format, seen.mode, seen.size) == ("PNG", "L", (28, 28))
    assert np.array_equal(np.asarray(seen), preprocess(image).image[0].numpy())
    status, plain = post_json(server, image)              # API clients get the view only when they ask
    assert status == 200 and "image" not in plain and plain["probabilities"] == answer["probabilities"]
    assert set(plain) == {"prediction", "label", "probabilities", "class_names", "inverted", "ms"}


def test_predictor_runs_onnx_runtime_with_pytorch_classes_and_writes_the_same_json(toy_run, monkeypatch):
    from mnist_cnn.serve.predictor import Predictor

    predictor = Predictor(toy_run, "cpu")
    assert predictor.device == "cpu (ONNX Runtime)"
    images = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    got = np.array(predictor.probabilities(images))
    want = predictor.classifier.probabilities(images).numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1)) and np.abs(got - want).max() < 1e-5
    for view in (True, False):
        prepared = predictor.prepare(drawing(), view=view)
        answer = predictor.answer(prepared, got[0].tolist())
        written = json.loads(predictor.answer_json(prepared, got[0].tolist()))
        assert written.pop("ms") >= 0 and answer.pop("ms") >= 0 and written == answer
        assert ("image" in written) == view
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # not installed: PyTorch serves
    assert Predictor(toy_run, "cpu").device == torch.device("cpu")


def test_data_url_json_raw_bytes_and_jpeg_agree(server):
    png = drawing()
    _, raw = post_json(server, png)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    _, from_json = post_json(server, json.dumps({"image": url}).encode(), {"Content-Type": "application/json"})
    _, from_url = post_json(server, url.encode(), {"Content-Type": "text/plain"})
    assert raw["probabilities"] == from_json["probabilities"] == from_url["probabilities"]
    status, jpeg = post_json(server, drawing(format="JPEG"), {"Content-Type": "image/jpeg"})
    assert status == 200 and abs(sum(jpeg["probabilities"]) - 1) < 1e-4


def test_page_static_files_and_info(server, toy_run):
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<canvas id="pad"' in page and b'src="app.js"' in page
    assert "script-src 'self'" in headers["content-security-policy"]
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(kind) and len(body) > 500
    status, headers, _ = request(server, "HEAD", "/")
    assert status == 200 and int(headers["content-length"]) == len(page)
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["class_names"] == list(FASHION) and info["run"] == toy_run.name
    assert info["max_upload_bytes"] == int(LIMIT_MB * 2**20) and info["model"] == "seed"


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("body, headers, status, words", [
    (b"hello, not an image", {}, 422, "not a readable image"),
    (drawing()[:300], {"Content-Type": "image/png"}, 422, "not a readable image"),      # truncated PNG
    (b"", {}, 400, "empty request body"),
    (b'{"image": ', {"Content-Type": "application/json"}, 400, "not valid JSON"),
    (b'{"picture": "data:image/png;base64,AAAA"}', {}, 400, "\"image\""),
    (b'{"image": "http://example.com/7.png"}', {}, 400, "not a data URL"),
    (b'{"image": "data:image/png,%89PNG"}', {}, 400, "only base64"),
    (b'{"image": "data:image/png;base64,@@@not base64@@@"}', {}, 400, "malformed"),
    (b"data:image/png;base64,aGVsbG8=", {}, 422, "not a readable image"),            # base64 of "hello"
])
def test_bad_requests_get_a_json_error(server, body, headers, status, words):
    got, answer = post_json(server, body, headers)
    assert (got, answer["status"]) == (status, status)
    assert words in answer["error"] and "\n" not in answer["error"]


@pytest.mark.parametrize("mode, colour", [("RGB", "white"), ("RGBA", (0, 0, 0, 0)), ("L", 0), ("L", 200)])
def test_empty_drawing_is_refused_politely(server, mode, colour):
    """A blank canvas (white, fully transparent as an untouched <canvas> exports, black, grey)."""
    buf = io.BytesIO()
    Image.new(mode, (280, 280), colour).save(buf, format="PNG")
    status, answer = post_json(server, buf.getvalue())
    assert status == 422 and "no visible ink" in answer["error"]


def test_oversized_body_is_413_and_the_server_keeps_serving(server):
    limit = int(LIMIT_MB * 2**20)
    status, answer = post_json(server, b"\x89PNG" + b"\0" * limit)
    assert status == 413 and f"{limit:,}" in answer["error"]
    big_photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big_photo.save(buf, format="PNG")                                  # ~480 KB of noise
    assert len(buf.getvalue()) > limit
    assert post_json(server, buf.getvalue())[0] == 413
    assert post_json(server, drawing())[0] == 200
    assert any('"POST /api/predict HTTP/1.1" 413' in line for line in server.log().splitlines())


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/api/predict", "POST"), ("PUT", "/api/predict", "POST"), ("DELETE", "/api/predict", "POST"),
    ("POST", "/", "GET, HEAD"), ("DELETE", "/", "GET, HEAD"), ("PATCH", "/api/info", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(server, method, path, allow):
    status, headers, body = request(server, method, path, b"ignored" if method != "GET" else None)
    assert status == 405 and headers["allow"] == allow
    assert json.loads(body)["error"].startswith(f"{method} is not allowed on {path}")


def test_unknown_path_is_404_and_a_missing_length_is_411(server):
    status, _, body = request(server, "GET", "/etc/passwd")
    assert status == 404 and json.loads(body)["status"] == 404
    with socket.create_connection(server.address, timeout=10) as s:   # no Content-Length
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        reply = s.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length" in reply.split(b"\r\n\r\n", 1)[1]


# ---------------------------------------------------------------- concurrency, no writes
def test_50_parallel_requests_each_get_their_own_answer(server, toy_run):
    # 50 different drawings sent at once; each answer must match that drawing's direct prediction.
    images = [drawing(x0=20 + 3 * i, y0=20 + (i % 7) * 5, width=8 + i % 9) for i in range(50)]
    wants = expected(toy_run, images)
    start = threading.Barrier(50)

    def send(im: bytes) -> tuple[int, dict]:
        start.wait()
        return post_json(server, im)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(send, images))
    elapsed = time.perf_counter() - t0
    assert [s for s, _ in answers] == [200] * 50
    for (_, got), want in zip(answers, wants):
        np.testing.assert_allclose(got["probabilities"], want, atol=2e-6)
    assert len({tuple(a["probabilities"]) for _, a in answers}) > 1      # really different inputs
    assert elapsed < 30


def test_serving_writes_no_files(server, toy_run, tmp_path, monkeypatch):
    def snapshot(root: Path) -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}

    monkeypatch.chdir(tmp_path)
    before = snapshot(toy_run)
    for body in (drawing(), b"junk", b""):
        post_json(server, body)
    assert snapshot(toy_run) == before and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command
def test_command_prints_its_url_serves_and_stops_cleanly_on_ctrl_c(toy_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", str(toy_run), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "classes T-shirt/top, Trouser" in lines[0]
        url = lines[1].split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        host, port = url[len("http://"):-1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/api/predict", body=drawing())
        assert conn.getresponse().status == 200
        conn.close()
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0 and "Stopped." in out
    assert "Traceback" not in err and time.perf_counter() - t0 < 5
    with pytest.raises(OSError):                                   # the port is closed
        socket.create_connection((host, int(port)), timeout=2)


def test_command_errors_are_one_line(toy_run, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-cnn: error: no run directory") and err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(toy_run), "--port", str(taken.getsockname()[1]), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-cnn: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    assert main(["serve", str(toy_run), "--port", "70000"]) == 2
    assert "between 0 and 65535" in capsys.readouterr().err


# ---------------------------------------------------------------- batch route, OpenAPI, .onnx with workers
def test_batch_route_answers_each_image_in_order(server, toy_run):
    images = [drawing(x0=40), drawing(x0=100, width=20), b"hello"]
    urls = ["data:image/png;base64," + base64.b64encode(im).decode() for im in images]
    status, answer = server.post_json(json.dumps({"images": urls}).encode(), {"Content-Type": "application/json"},
                                      path="/api/predict/batch?view=1")
    assert status == 200 and len(answer["results"]) == 3
    for got, want in zip(answer["results"][:2], expected(toy_run, images[:2])):
        np.testing.assert_allclose(got["probabilities"], want, atol=2e-6)
        assert got["class_names"] == list(FASHION) and got["image"].startswith("data:image/png;base64,")
    assert answer["results"][2]["status"] == 422 and "not a readable image" in answer["results"][2]["error"]
    for body, words in ((json.dumps({"images": urls[:1] * 65}).encode(), "send 1 to 64"),
                        (json.dumps({"images": []}).encode(), "send 1 to 64"),
                        (b'{"images": "data:image/png;base64,AAAA"}', "a list of data URL strings")):
        status, answer = server.post_json(body, path="/api/predict/batch")
        assert status == 400 and words in answer["error"]


def test_openapi_schema_and_docs_page(server):
    status, _, body = request(server, "GET", "/openapi.json")
    schema = json.loads(body)
    assert status == 200 and {"/api/predict", "/api/predict/batch", "/api/info"} <= set(schema["paths"])
    predict = schema["paths"]["/api/predict"]["post"]
    assert {"image/png", "application/json"} <= set(predict["requestBody"]["content"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    assert predict["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert {"Prediction", "Error", "Info", "BatchResponse"} <= set(schema["components"]["schemas"])
    status, headers, page = request(server, "GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"openapi.json" in page


def test_onnx_file_served_by_two_worker_processes(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from mnist_cnn.export import export_onnx

    path = tmp_path / "toy.onnx"
    export_onnx(toy_run, path)
    images = [drawing(x0=30 + 10 * i) for i in range(6)]
    with ServerProcess(path, "--workers", "2", log=tmp_path / "serve.log") as srv:
        assert "2 worker processes" in srv.banner[0]
        info = json.loads(srv.request("GET", "/api/info", timeout=180)[2])   # workers load torch + model first
        assert info["status"] == "exported" and info["class_names"] == list(FASHION)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(srv.post_json, images))
        assert len(srv.children()) >= 2                             # the supervisor's worker processes
    for (status, got), want in zip(answers, expected(toy_run, images)):
        assert status == 200
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)   # ONNX Runtime vs PyTorch


def test_serve_without_the_web_stack_says_how_to_install(toy_run, tmp_path):
    # A Python that cannot import fastapi: a path entry whose fastapi package fails to import.
    (tmp_path / "fastapi").mkdir()
    (tmp_path / "fastapi" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "mnist_cnn", "serve", str(toy_run), "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "mnist-cnn: error: mnist-cnn serve needs FastAPI and uvicorn: pip install 'mnist-cnn[serve]'\n"
