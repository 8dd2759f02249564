"""The framework's ceiling for bench/loadtest.py: a FastAPI route that reads the body and returns
a constant JSON of the size `mnist-cnn serve` answers with, nothing else (no model, no image).

    python -m uvicorn ceiling_app:app --app-dir bench --workers 2 --http httptools --loop uvloop
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = (b'{"prediction": 7, "label": "7", "probabilities": [1e-06, 2e-06, 3.1e-05, 0.000412, 1e-06, '
          b'4e-06, 0.0, 0.999512, 1.2e-05, 2.5e-05], "class_names": ["0", "1", "2", "3", "4", "5", "6", '
          b'"7", "8", "9"], "inverted": false, "ms": 0.4}')

app = FastAPI()


@app.post("/api/predict")
async def predict(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, 200, {"Cache-Control": "no-store"}, "application/json")
