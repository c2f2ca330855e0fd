"""The images of a /predict request: multipart files or base64 in JSON, or a 4xx saying why not.

Everything a client can get wrong ends in `BadRequest` (status and one sentence); nothing here
lets an exception through as a 500.
"""

from __future__ import annotations

import base64
import binascii
import json

FILE_FIELDS = ("file", "files")
MAX_IMAGES = 64  # per request; a larger batch is several requests (the server batches them)
USAGE = (
    "send multipart/form-data with the images in a field named 'file', or JSON "
    '{"images": ["<base64>", ...]}'
)


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def read_images(request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        items = await _multipart(request)
    elif kind == "application/json":
        items = _json_images(await request.body())
    else:
        raise BadRequest(415, f"unsupported content type {kind or '(none)'!r}: {USAGE}")
    if not items:
        raise BadRequest(400, f"the request holds no image: {USAGE}")
    if len(items) > MAX_IMAGES:
        raise BadRequest(413, f"{len(items)} images in one request: send at most {MAX_IMAGES}")
    return items


async def _multipart(request) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=MAX_IMAGES + 1, max_fields=100)
    except Exception as e:  # python-multipart and Starlette raise several kinds for bad bodies
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        raise BadRequest(400, f"the multipart body cannot be parsed ({detail}): {USAGE}") from e
    items = []
    for field in FILE_FIELDS:
        for value in form.getlist(field):
            if isinstance(value, str):
                raise BadRequest(400, f"field '{field}' holds text, not a file: {USAGE}")
            items.append((value.filename or "upload", await value.read()))
    if not items:
        fields = ", ".join(repr(k) for k in form.keys()) or "none"
        raise BadRequest(
            400, f"no field named 'file' in the multipart body (fields: {fields}): {USAGE}"
        )
    return items


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the JSON body cannot be parsed ({e}): {USAGE}") from e
    if isinstance(data, dict) and isinstance(data.get("image"), str):
        data = {"images": [data["image"]]}
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(v, str) for v in images):
        raise BadRequest(
            400, f"the JSON body has no list of base64 strings under 'images': {USAGE}"
        )
    if len(images) > MAX_IMAGES:
        raise BadRequest(413, f"{len(images)} images in one request: send at most {MAX_IMAGES}")
    items = []
    for i, text in enumerate(images):
        if text.startswith("data:") and "," in text:  # a data URL, as a browser makes them
            text = text.split(",", 1)[1]
        try:
            items.append((f"images[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError) as e:
            raise BadRequest(400, f"images[{i}] is not valid base64 ({e})") from e
    return items
