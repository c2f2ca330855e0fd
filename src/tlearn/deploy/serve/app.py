"""The FastAPI app: POST /predict, GET / (the web page), /health, /model, /docs.

Uploads are decoded in a thread of the app's pool (tlearn's decoding, `tlearn.deploy.inputs`)
and the network runs in the batcher's single worker thread, so the event loop only moves bytes.
Annotations are evaluated here (no `from __future__ import annotations`): FastAPI reads the
endpoint's `fastapi.Request`, a name only the function that imports fastapi can see.
"""

import asyncio
import contextlib
import time
from importlib import resources
from typing import Any

import numpy as np

from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS
from tlearn.deploy.batcher import Batcher
from tlearn.deploy.extras import require
from tlearn.deploy.inputs import decode_upload
from tlearn.deploy.serve.limits import BodyLimit
from tlearn.deploy.serve.uploads import BadRequest, read_images
from tlearn.errors import TlearnError

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string"}}},
                    "required": ["images"],
                }
            },
        },
    }
}


def static_dir() -> str:
    return str(resources.files("tlearn.deploy") / "static")


def create_app(
    engine,
    *,
    max_batch: int = 32,
    max_wait_ms: float | None = None,
    max_upload_mb: float = 10.0,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Any:
    """An ASGI app serving `engine` (`tlearn.deploy.engines`); the batcher lives with the app.
    `max_wait_ms` None: the engine's own `max_wait_ms`."""
    fastapi = require("fastapi")
    offline = require("fastapi_offline")
    require("python_multipart")
    responses = require("fastapi.responses")
    staticfiles = require("fastapi.staticfiles")
    concurrency = require("fastapi.concurrency")
    max_wait_ms = engine.max_wait_ms if max_wait_ms is None else max_wait_ms
    if max_upload_mb <= 0:
        raise TlearnError(f"--max-upload-mb {max_upload_mb} must be more than 0")
    Batcher(engine, max_batch, max_wait_ms).close()  # validates the options before serving
    holder: dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        holder["batcher"] = Batcher(engine, max_batch, max_wait_ms, getattr(engine, "workers", 1))
        yield
        await asyncio.get_running_loop().run_in_executor(None, holder["batcher"].close)

    app = offline.FastAPIOffline(
        title="tlearn", summary=f"{len(engine.classes)}-class image classifier", lifespan=lifespan,
        static_url="/docs-assets", redoc_url=None,
    )  # fmt: skip
    app.mount("/static", staticfiles.StaticFiles(directory=static_dir()), name="static")
    started = time.time()
    serving = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_upload_mb": max_upload_mb}

    @app.get("/", include_in_schema=False)
    async def page():
        return responses.FileResponse(f"{static_dir()}/index.html")

    @app.get("/health")
    async def health() -> dict:
        """Whether the server is up, and how it has batched so far."""
        b = holder.get("batcher")
        return {
            "status": "ok",
            "engine": engine.name,
            "uptime_s": round(time.time() - started, 1),
            "batches": b.batches if b else 0,
            "images": b.images if b else 0,
            "mean_batch": round(b.mean_batch, 2) if b else 0.0,
        }

    @app.get("/model")
    async def model_info() -> dict:
        """Classes, backbones, preprocessing, metrics and versions of the served model."""
        return {**engine.describe(), "engine": engine.name, "serving": serving}

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: fastapi.Request, topk: int = fastapi.Query(5, ge=1, le=1000)):
        """Top-k labels and probabilities of each image: multipart files in the field `file`, or
        JSON `{"images": ["<base64>", ...]}`. A body that is no image gets 4xx with the reason."""
        try:
            items = await read_images(request)
            batch = await concurrency.run_in_threadpool(
                decode_all, items, engine.input_preprocessing, max_image_pixels
            )
        except BadRequest as e:
            return responses.JSONResponse({"detail": e.detail}, status_code=e.status)
        probabilities = await asyncio.wrap_future(holder["batcher"].submit(batch))
        k = min(topk, len(engine.classes))
        names = [name for name, _ in items]
        rows = [
            top_k(n, row, engine.classes, k) for n, row in zip(names, probabilities, strict=True)
        ]
        return {"predictions": rows, "engine": engine.name}

    return BodyLimit(app, int(max_upload_mb * 2**20))


def decode_all(items, pre, max_pixels) -> np.ndarray:
    """Every upload decoded, or BadRequest naming the first that is no image."""
    tensors = []
    for name, data in items:
        try:
            tensors.append(decode_upload(data, name, pre, max_pixels).numpy())
        except TlearnError as e:
            raise BadRequest(400, str(e)) from e
        except Exception as e:  # a decoder failing in a way Pillow does not document
            raise BadRequest(400, f"cannot read image {name} ({type(e).__name__}: {e})") from e
    return np.stack(tensors)


def top_k(name: str, row: np.ndarray, classes: list[str], k: int) -> dict:
    order = np.argsort(-row, kind="stable")[:k]
    return {
        "name": name,
        "labels": [classes[i] for i in order],
        "probabilities": [round(float(row[i]), 6) for i in order],
    }
