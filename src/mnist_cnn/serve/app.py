"""The FastAPI application of `mnist-cnn serve`: the page, the JSON API and its OpenAPI schema.

    GET  /                    the page (static/index.html, app.js, style.css)
    GET  /api/info            Info: run, model, dataset, status, class_names, max_upload_bytes
    POST /api/predict         raw image bytes, a data URL, or JSON {"image": data URL} -> Prediction
    POST /api/predict/batch   JSON {"images": [data URL, ...]} (1-64) -> {"results": [Prediction | Error]}
                              (both with ?view=1: each Prediction carries the 28x28 view as a PNG)
    GET  /docs, /openapi.json the API described (Swagger UI loads its script from a CDN)
    errors                    Error {"error": "one line", "status": N}

Decoding and preprocessing of anything but a PNG of at most 28x28 run in worker threads, at most
`concurrency` at once per process (each may hold tens of MB); forward passes run on batches
gathered across requests (batching.py). The rules every
request passes first (Host, origin, body limits) are in guard.py.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from importlib import resources
from typing import Any, Callable

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnist_cnn import __version__
from mnist_cnn.errors import MnistCnnError, escape_controls
from mnist_cnn.predict import prediction_fields
from mnist_cnn.preprocess import FORMATS, ImageError, png_size
from mnist_cnn.serve.bodies import MAX_BATCH, RequestError, batch_images_from_body, image_bytes_from_body
from mnist_cnn.serve.config import ServeConfig
from mnist_cnn.serve.batching import Batcher
from mnist_cnn.serve.guard import Guard
from mnist_cnn.serve.predictor import Predictor, Prepared

CONFIG_ENV = "MNIST_CNN_SERVE_CONFIG"   # the ServeConfig as JSON, for worker processes
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
# The page loads only its own files; images it shows are data: and blob: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
POST_ROUTES = ("/api/predict", "/api/predict/batch")
# A body this small is parsed on the event loop, and a PNG of at most 28x28 preprocessed there too
# (MNIST's plain recipe, or nothing for an image already in MNIST's form): well under a
# millisecond, less than a hop to a worker thread and back costs under load. Anything larger (the
# page's 280x280 canvas included) gets the photo steps, ~10-20 ms, in the threads, `concurrency` at a time.
INLINE_BODY = 64 << 10
INLINE_PIXELS = 28 * 28


# The API's answer: the fields of the one prediction type (predict.Prediction), and what the page
# shows besides. "label" here is the class's name, as the page and its clients have always read it.
Prediction = create_model(
    "Prediction",
    prediction=(int, Field(description="index of the most probable class")),
    label=(str, Field(description="its name, class_names[prediction]")),
    **{name: (kind, Field(description=text)) for name, (kind, text) in prediction_fields().items()},
    image=(str | None, Field(None, description="the 28x28 view the network saw, as a PNG data URL; only with ?view=1")),
    ms=(float, Field(description="server time for decoding, preprocessing and the forward pass, ms")),
)


class Error(BaseModel):
    error: str = Field(description="one line saying what was wrong")
    status: int = Field(description="the HTTP status (per image in a batch: 422 for an unusable image)")


class Info(BaseModel):
    run: str
    model: str
    dataset: str
    status: str = Field(description="the run's status (complete, interrupted, ...) or 'exported' for ONNX")
    class_names: list[str]
    max_upload_bytes: int


class PredictJSON(BaseModel):
    image: str = Field(description="a base64 data URL, data:image/png;base64,...")


class BatchRequest(BaseModel):
    images: list[str] = Field(min_length=1, max_length=MAX_BATCH, description="base64 data URLs")


class BatchResponse(BaseModel):
    results: list[Prediction | Error] = Field(description="one per image, in order")


ERRORS = {code: {"model": Error, "description": text} for code, text in {
    400: "malformed body", 403: "cross-origin request", 408: "body too slow", 411: "no Content-Length",
    413: "body over the limit", 421: "Host not allowed", 422: "not a usable image", 429: "too many large uploads at once",
}.items()}
VIEW_PARAMETER = {"name": "view", "in": "query", "required": False, "schema": {"type": "integer", "enum": [0, 1]},
                  "description": "1: add the 28x28 view the network saw (`image`) to each answer; the page asks for it"}
IMAGE_TYPES = {f"image/{f.lower()}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS}
PREDICT_BODY = {"parameters": [VIEW_PARAMETER], "requestBody": {"required": True, "content": {
    "application/json": {"schema": PredictJSON.model_json_schema()},
    **IMAGE_TYPES, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string", "description": "a data URL"}}}}}
BATCH_BODY = {"parameters": [VIEW_PARAMETER], "requestBody": {"required": True, "content": {"application/json": {"schema": BatchRequest.model_json_schema()}}}}


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    """`obj` as JSON (a str is taken as JSON text already)."""
    return Response(obj if isinstance(obj, str) else json.dumps(obj), status, {"Cache-Control": "no-store", **(headers or {})}, "application/json")


def create_app(config: ServeConfig, predictor: Predictor | None = None,
               log: Callable[[str], None] | None = None) -> Guard:
    """The ASGI application: FastAPI routes behind the Guard. Loads the model unless given one."""
    predictor = predictor or Predictor(config.run, config.device)
    app = FastAPI(title="mnist-cnn serve", version=__version__, redoc_url=None,
                  description="Draw or upload a digit; get the run's class probabilities.")
    add_prediction_routes(app, predictor, anyio.CapacityLimiter(config.concurrency))
    info = {**predictor.info, "max_upload_bytes": config.max_upload_bytes}

    @app.api_route("/api/info", methods=["GET", "HEAD"], response_model=Info, summary="The run being served")
    async def get_info() -> Response:
        return json_response(200, info)

    add_page_routes(app)
    add_error_handlers(app)
    asgi: Any = app
    if config.cors:  # answers preflights and adds Access-Control-* headers; Guard refuses other origins
        from starlette.middleware.cors import CORSMiddleware

        asgi = CORSMiddleware(app, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                              allow_headers=["Content-Type"], max_age=600)
    return Guard(asgi, allow_hosts=config.allow_hosts, cors=config.cors, max_body=config.max_upload_bytes,
                 body_timeout=config.body_timeout, log=log, log_all=config.log_all)


def add_prediction_routes(app: FastAPI, predictor: Predictor, limiter: anyio.CapacityLimiter) -> None:
    """POST /api/predict and /api/predict/batch: prepare (inline or in a thread), batch, answer."""
    batcher = Batcher(predictor.probabilities)

    def prepare_one(body: bytes, content_type: str, view: bool) -> Prepared:
        return predictor.prepare(image_bytes_from_body(body, content_type), view)

    def prepare_batch(body: bytes, view: bool) -> list[Prepared | ImageError]:
        out: list[Prepared | ImageError] = []
        for data in batch_images_from_body(body):
            try:
                out.append(predictor.prepare(data, view))
            except ImageError as e:
                out.append(e)
        return out

    @app.post("/api/predict", response_model=Prediction, responses=ERRORS, openapi_extra=PREDICT_BODY,
              summary="Classify one image")
    async def predict(request: Request) -> Response:
        body, ctype, view = await request.body(), request.headers.get("content-type", ""), wants_view(request)
        if len(body) <= INLINE_BODY:
            data = image_bytes_from_body(body, ctype)
            size = png_size(data)
            if size is not None and size[0] * size[1] <= INLINE_PIXELS:
                prepared = predictor.prepare(data, view)
            else:
                prepared = await anyio.to_thread.run_sync(predictor.prepare, data, view, limiter=limiter)
        else:
            prepared = await anyio.to_thread.run_sync(prepare_one, body, ctype, view, limiter=limiter)
        probs = await batcher.run(prepared.image[None])
        return json_response(200, predictor.answer_json(prepared, probs[0]))

    @app.post("/api/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY,
              summary=f"Classify 1 to {MAX_BATCH} images")
    async def batch(request: Request) -> Response:
        prepared = await anyio.to_thread.run_sync(prepare_batch, await request.body(), wants_view(request), limiter=limiter)
        good = [p for p in prepared if isinstance(p, Prepared)]
        rows = iter(await batcher.run(torch.stack([p.image for p in good])) if good else [])
        return json_response(200, {"results": [{"error": str(p), "status": 422} if isinstance(p, ImageError)
                                               else predictor.answer(p, next(rows)) for p in prepared]})


def wants_view(request: Request) -> bool:
    """?view=1 (or true): the client wants the 28x28 view in each answer (a PNG, ~0.1 ms each)."""
    return request.query_params.get("view", "").lower() in ("1", "true")


def add_page_routes(app: FastAPI) -> None:
    """The page's files, read once; not part of the API schema."""
    pkg = resources.files("mnist_cnn.serve") / "static"
    static = {name: (pkg / name).read_bytes() for name in set(STATIC.values())}

    async def page(request: Request) -> Response:
        name = STATIC[request.url.path]
        headers = {"Cache-Control": "no-cache"}
        if name.endswith(".html"):
            headers["Content-Security-Policy"] = CSP
        return Response(static[name], 200, headers, CONTENT_TYPES[name[name.rindex("."):]])

    for path in STATIC:
        app.add_api_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/favicon.ico", lambda: Response(status_code=204), methods=["GET", "HEAD"], include_in_schema=False)


def add_error_handlers(app: FastAPI) -> None:
    """Every failure is an Error JSON; a bug is logged with its traceback and answered 500."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> Response:
        return json_response(e.status, {"error": str(e), "status": e.status})

    @app.exception_handler(ImageError)
    async def unusable(request: Request, e: ImageError) -> Response:
        return json_response(422, {"error": str(e), "status": 422})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        path = request.url.path
        if e.status_code == 405:
            allow = "POST" if path in POST_ROUTES else "GET, HEAD"
            return json_response(405, {"error": f"{request.method} is not allowed on {path}; use {allow}",
                                       "status": 405}, {"Allow": allow})
        message = f"no such page: {path}" if e.status_code == 404 else str(e.detail)
        return json_response(e.status_code, {"error": message, "status": e.status_code})

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> Response:
        traceback.print_exc(file=sys.stderr)
        return json_response(500, {"error": f"internal error ({type(e).__name__}); see the server's console",
                                   "status": 500})


def app_from_env() -> Guard:
    """The app for a uvicorn worker process: its ServeConfig comes as JSON in MNIST_CNN_SERVE_CONFIG.

    A worker that cannot load the model says why in one line and exits with uvicorn's
    STARTUP_FAILURE, which the supervisor takes as "do not restart" (supervisor.py)."""
    from uvicorn.config import STARTUP_FAILURE

    from mnist_cnn.serve.config import limit_torch_threads

    limit_torch_threads()
    try:
        return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
    except MnistCnnError as e:
        print(f"serve: worker process {os.getpid()} cannot start: {escape_controls(str(e))}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
