"""A request body larger than --max-upload-mb gets 413 before the app sees any of it.

Pure ASGI, in front of everything: the body is counted as it arrives (a declared
Content-Length is believed only when it says too much), so a chunked upload cannot slip past.
A refused body is read to its end (up to a cap) before answering, so the client, still
sending, hears the 413 rather than a reset connection.
"""

from __future__ import annotations

import json

_DRAIN_CAP = 1 << 30  # beyond this much, answer at once and let the connection drop


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if length is not None and length > self.max_bytes:
            if length <= _DRAIN_CAP:
                await _drain(receive)
            await _answer(send, 413, self._too_large())
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await _drain(receive)
                await _answer(send, 413, self._too_large())
                return
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        mb = self.max_bytes / 2**20
        return (
            f"the request is larger than the {mb:g} MB limit (--max-upload-mb): send smaller images"
        )


async def _drain(receive) -> None:
    read = 0
    while read <= _DRAIN_CAP:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
