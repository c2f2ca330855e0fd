"""The fault test: 200 hostile requests interleaved with good ones against a real `tlearn serve`
process: no 5xx, every good request answered correctly, the process still up, Ctrl-C clean."""

from __future__ import annotations

import base64
import io
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import tlearn
from hostile import png_header_only
from serving import tlearn_serve
from tiny_run import CLASSES, train_tiny

pytest.importorskip("fastapi")


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), color, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def hostile_requests() -> list[tuple[str, dict]]:
    """(kind, httpx.post keyword arguments): every way a client can send something wrong."""
    truncated = jpeg((200, 30, 30))
    truncated = truncated[: len(truncated) // 2]
    bomb = png_header_only(20_000, 20_000)
    kinds = [
        ("empty body", dict(content=b"")),
        ("empty file", dict(files={"file": ("a.jpg", b"")})),
        ("text as image", dict(files={"file": ("a.jpg", b"hello, I am text\n" * 40)})),
        ("truncated JPEG", dict(files={"file": ("t.jpg", truncated)})),
        ("20000x20000 PNG", dict(files={"file": ("bomb.png", bomb)})),
        ("wrong field name", dict(files={"image_file": ("a.jpg", jpeg((30, 30, 200)))})),
        ("invalid base64", dict(json={"images": ["not*base64!"]})),
        ("base64 of text", dict(json={"images": [base64.b64encode(b"plain text").decode()]})),
        ("JSON without images", dict(json={"picture": 1})),
        (
            "broken JSON",
            dict(content=b'{"images": [', headers={"content-type": "application/json"}),
        ),
    ]
    big = ("50 MB upload", dict(files={"file": ("big.jpg", b"\xff" * (50 << 20))}))
    requests = [kinds[i % len(kinds)] for i in range(196)]
    for at in (10, 60, 110, 160):  # four of the 200: each is 50 MB over loopback
        requests.insert(at, big)
    return requests


@pytest.mark.slow
def test_200_hostile_requests_interleaved_with_good_ones(tmp_path):
    run = train_tiny(tmp_path)
    files = {c: run.parent / "images" / c / f"{c}_001.png" for c in CLASSES}
    want = {c: tlearn.load(run).predict([str(p)])[0].labels[0] for c, p in files.items()}
    good = [
        (c, dict(files={"file": (p.name, p.read_bytes(), "image/png")})) for c, p in files.items()
    ]
    hostile = hostile_requests()
    assert len(hostile) == 200
    mixed = []
    for i, item in enumerate(hostile):
        mixed.append(("bad", *item))
        if i % 2 == 0:
            mixed.append(("good", *good[i % len(good)]))
    with tlearn_serve(run, "--max-upload-mb", "10", "--engine", "onnx") as (url, process):

        def send(entry):
            role, kind, kwargs = entry
            try:
                r = httpx.post(f"{url}/predict", timeout=60, **kwargs)
            except httpx.HTTPError as e:
                return role, kind, None, repr(e)
            return role, kind, r.status_code, r.text

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, mixed))
        assert process.poll() is None, "the server died"
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        for role, kind, status, text in answers:
            assert status is not None, (kind, text)
            assert status < 500, (kind, status, text)
            if role == "bad":
                assert 400 <= status < 500 and "detail" in text, (kind, status, text)
            else:
                assert status == 200, (kind, text)
                assert (
                    httpx.Response(200, text=text).json()["predictions"][0]["labels"][0]
                    == want[kind]
                )
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        err = process.stderr.read()
        assert "Traceback" not in err, err[-3000:]
