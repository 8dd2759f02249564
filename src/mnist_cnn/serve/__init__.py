"""A local web page to draw a digit on, and a JSON API, for a trained run (`mnist-cnn serve`).

FastAPI on uvicorn (the optional extra `serve`). `config` holds the settings (no heavy imports,
so `--help` stays fast); `app` the routes; `guard` the rules every request passes; `protocol`
uvicorn's HTTP parser with header limits; `bodies` request-body parsing; `predictor` the model
side; `server` starts it all, and `supervisor` watches the worker processes of `--workers N`. From Python:

    from mnist_cnn.serve.config import ServeConfig
    from mnist_cnn.serve.server import serve
    serve(ServeConfig("runs/my-run", port=0))            # until Ctrl-C

or mount `mnist_cnn.serve.app.create_app(ServeConfig(...))` in any ASGI server.
"""
