"""`tlearn serve`'s app in-process (FastAPI's TestClient): answers, bad requests, batching."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import tlearn
import tlearn.deploy.auto
from tiny_run import CLASSES, train_tiny
from tlearn.deploy.batcher import Batcher
from tlearn.deploy.engines import OnnxEngine
from tlearn.deploy.export import ProbabilityGraph, fp32_copy
from tlearn.deploy.inputs import load_files

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tlearn.deploy.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(run):
    app = create_app(tlearn.api.serving_engine(run, "torch"), max_upload_mb=1)
    with TestClient(app) as c:
        yield c


def png(color, size=(20, 16)) -> bytes:
    a = np.clip(np.array(color)[None, None, :] + np.zeros((size[1], size[0], 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def expected(run) -> dict[str, str]:
    """What the PyTorch model says of each class's first training image."""
    files = [str(run.parent / "images" / c / f"{c}_000.png") for c in CLASSES]
    return {p.path: p.labels[0] for p in tlearn.load(run).predict(files)}


def test_predict_multipart_json_and_topk(run, client):
    want = expected(run)
    files = [("file", (p.rsplit("/", 1)[1], open(p, "rb").read(), "image/png")) for p in want]
    r = client.post("/predict?topk=2", files=files)
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert [a["labels"][0] for a in answers] == list(want.values())
    assert all(
        len(a["labels"]) == 2 and a["probabilities"][0] >= a["probabilities"][1] for a in answers
    )
    encoded = [base64.b64encode(open(p, "rb").read()).decode() for p in want]
    r = client.post("/predict", json={"images": encoded})
    assert r.status_code == 200
    assert [a["labels"][0] for a in r.json()["predictions"]] == list(want.values())
    assert len(r.json()["predictions"][0]["labels"]) == 3  # topk 5 capped at the 3 classes
    r = client.post("/predict", json={"image": "data:image/png;base64," + encoded[0]})
    assert r.json()["predictions"][0]["labels"][0] == list(want.values())[0]


MULTIPART_X = "multipart/form-data; boundary=x"


def test_bad_requests_get_4xx_with_reasons(client):
    from hostile import png_header_only

    good = png((220, 40, 40))
    cases = [
        (dict(content=b"", headers={"content-type": "image/png"}), 415, "content type"),
        (dict(files={"file": ("a.jpg", b"")}), 400, "empty"),
        (dict(files={"file": ("a.jpg", b"just text " * 50)}), 400, "not an image"),
        (dict(files={"file": ("a.png", good[: len(good) // 2])}), 400, "cannot read image"),
        (dict(files={"file": ("b.png", png_header_only(20_000, 20_000))}), 400, "pixel"),
        (dict(files={"picture": ("a.png", good)}), 400, "no field named 'file'"),
        (dict(data={"file": "text"}, files={"x": ("a.png", good)}), 400, "holds text"),
        (dict(data={"file": "not a file"}), 415, "content type"),  # a urlencoded form
        (dict(json={"images": ["%%%not base64"]}), 400, "base64"),
        (dict(json={"pictures": []}), 400, "'images'"),
        (dict(content=b"{oops", headers={"content-type": "application/json"}), 400, "JSON"),
        (dict(files={"file": ("big.png", b"\0" * (2 << 20))}), 413, "MB limit"),
        (dict(content=b"--x\r\nbroken", headers={"content-type": MULTIPART_X}), 400, ""),
    ]  # fmt: skip
    for kwargs, status, reason in cases:
        r = client.post("/predict", **kwargs)
        assert r.status_code == status, (kwargs.keys(), r.status_code, r.text)
        assert reason in r.json()["detail"], r.text
    assert client.post("/predict?topk=0", files={"file": ("a.png", good)}).status_code == 422
    assert client.post("/predict", files={"file": ("a.png", good)}).status_code == 200


def test_page_health_model_and_offline_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in client.get("/static/app.js").text  # nothing from elsewhere
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["images"] >= 0
    info = client.get("/model").json()
    assert info["classes"] == list(CLASSES) and info["backbones"][0]["name"] == "test_efficientnet"
    assert info["input"]["dtype"] == "uint8" and info["serving"]["max_batch"] == 32
    assert "tlearn" in info["versions"]["serving with"]
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/docs-assets/swagger-ui-bundle.js" in docs
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_serves_an_onnx_file_with_the_same_answers(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tlearn.export(run, tmp_path / "m.onnx", log=lambda s: None).path
    want = expected(run)
    engine = tlearn.api.serving_engine(path)
    assert engine.name == "onnxruntime"
    seven = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    whole = engine.onnx(seven)
    engine.onnx = CountingCalls(engine.onnx)
    np.testing.assert_allclose(engine(seven), whole, atol=1e-6)  # run 4 + 3 images at a time
    assert engine.onnx.sizes == [4, 3]
    engine.onnx = engine.onnx.inner
    # a lone batch runs on the thread team, a batch while another worker runs on one thread
    two = OnnxEngine(engine.onnx, workers=2)
    assert two.narrow.session.get_session_options().intra_op_num_threads == 1
    used: list[str] = []
    two.onnx = lambda x, run=two.onnx: used.append("team") or run(x)
    two.narrow = lambda x, run=two.narrow: used.append("one thread") or run(x)
    alone = two(seven)
    two._running = 1  # as while another worker's batch runs
    beside = two(seven)
    two._running = 0
    assert used == ["team", "team", "one thread", "one thread"]
    np.testing.assert_allclose(alone, whole, atol=1e-6)
    np.testing.assert_allclose(beside, whole, atol=1e-6)
    assert OnnxEngine(engine.onnx, workers=1).narrow is None and engine.workers >= 1
    # engine onnx serves a run from its verified export, exported once
    (run / "model.onnx").unlink(missing_ok=True)
    assert tlearn.api.serving_engine(run, "onnx").name == "onnxruntime"
    assert "top-1 agreement" in capsys.readouterr().out and (run / "model.onnx").is_file()
    assert tlearn.api.serving_engine(run, "onnx").onnx.path == run / "model.onnx"
    assert "exporting" not in capsys.readouterr().out
    with TestClient(create_app(engine)) as c:
        files = [("file", ("x.png", open(p, "rb").read())) for p in want]
        answers = c.post("/predict", files=files).json()["predictions"]
        assert [a["labels"][0] for a in answers] == list(want.values())
        assert c.get("/model").json()["classes"] == list(CLASSES)


def test_auto_serves_a_cached_verified_export_and_falls_back_to_pytorch(run, tmp_path, monkeypatch):
    """auto: onnxruntime from an export verified and cached once (no file beside the model);
    when it cannot be (here: no onnxruntime; no data to verify on), PyTorch, with one line."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    lines: list[str] = []
    engine = tlearn.api.serving_engine(run / "best.safetensors", log=lines.append)
    assert engine.name == "onnxruntime" and engine.max_wait_ms == 0.0
    assert engine.onnx.path.parent == tmp_path / "cache" / "onnx"
    assert any("top-1 agreement" in line for line in lines) and not (run / "best.onnx").exists()
    lines.clear()
    again = tlearn.api.serving_engine(run, log=lines.append)  # the run folder: the same file
    assert again.onnx.path == engine.onnx.path and lines == []  # from the cache, no export
    in_memory = tlearn.api.serving_engine(tlearn.load(run), log=lines.append)
    assert in_memory.name == "onnxruntime"
    want = expected(run)
    with TestClient(create_app(engine)) as c:
        files = [("file", ("x.png", open(p, "rb").read())) for p in want]
        answers = c.post("/predict", files=files).json()["predictions"]
        assert [a["labels"][0] for a in answers] == list(want.values())
        assert c.get("/model").json()["serving"]["max_wait_ms"] == 0.0

    moved = tmp_path / "moved.safetensors"  # trained on data that is not on this machine
    model = tlearn.load(run)
    model.spec.config["data"] = str(tmp_path / "missing")
    model.save(moved)
    lines.clear()
    fallback = tlearn.api.serving_engine(moved, log=lines.append)
    assert fallback.name.startswith("pytorch") and fallback.max_wait_ms == 5.0
    told = [line for line in lines if line.startswith("engine: PyTorch")]
    assert len(told) == 1 and "--check DIR" in told[0], lines

    def no_runtime(name):
        raise tlearn.TlearnError(f"{name} is not installed: pip install 'tlearn[export]'")

    monkeypatch.setattr(tlearn.deploy.auto, "require", no_runtime)
    lines.clear()
    assert tlearn.api.serving_engine(run, log=lines.append).name.startswith("pytorch")
    assert lines == [
        "engine: PyTorch, as onnxruntime cannot serve this model: onnxruntime is not "
        "installed: pip install 'tlearn[export]'"
    ]


class CountingCalls:
    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def __call__(self, images):
        self.sizes.append(len(images))
        return self.inner(images)


class SlowEngine:
    """Records batch sizes; each batch takes 20 ms whatever its size (a CPU's batching gain)."""

    name, classes = "slow", ["a", "b"]

    def __init__(self):
        self.sizes = []

    def __call__(self, images):
        self.sizes.append(len(images))
        time.sleep(0.02)
        p = images.reshape(len(images), -1)[:, :1].astype(np.float32) / 255
        return np.concatenate([p, 1 - p], axis=1)


def test_batcher_joins_concurrent_requests_and_answers_each_its_own():
    engine = SlowEngine()
    batcher = Batcher(engine, max_batch=8, max_wait_ms=50)
    values = list(range(0, 250, 10))
    futures = []

    def ask(v):
        futures.append((v, batcher.submit(np.full((1, 3, 2, 2), v, np.uint8))))

    threads = [threading.Thread(target=ask, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for v, f in futures:
        assert f.result(timeout=5)[0, 0] == pytest.approx(v / 255)
    batcher.close()
    assert sum(engine.sizes) == len(values) and max(engine.sizes) <= 8
    assert len(engine.sizes) <= len(values) // 2  # batched, not one at a time
    with pytest.raises(RuntimeError):
        batcher.submit(np.zeros((1, 3, 2, 2), np.uint8))


def test_batcher_close_runs_what_was_queued():
    engine = SlowEngine()
    batcher = Batcher(engine, max_batch=2, max_wait_ms=0)
    futures = [batcher.submit(np.zeros((1, 3, 2, 2), np.uint8)) for _ in range(7)]
    batcher.close()
    assert all(f.done() and f.result().shape == (1, 2) for f in futures)


def test_batcher_workers_run_batches_side_by_side_and_answer_each_its_own():
    """Several workers (onnxruntime's one a core): one gathers while the others run; every
    request still gets its own rows, and close() runs everything queued before it."""
    engine, lock = SlowEngine(), threading.Lock()
    running, most = [0], [0]

    def counting(images):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return engine(images)
        finally:
            with lock:
                running[0] -= 1

    batcher = Batcher(counting, max_batch=2, max_wait_ms=0, workers=2)
    values = list(range(0, 240, 20))
    futures = [(v, batcher.submit(np.full((1, 3, 2, 2), v, np.uint8))) for v in values]
    batcher.close()
    assert [f.result(timeout=0)[0, 0] for _, f in futures] == pytest.approx(
        [v / 255 for v in values]
    )
    assert most[0] == 2 and max(engine.sizes) <= 2
    assert batcher.images == len(values) and batcher.batches == len(engine.sizes)
    with pytest.raises(RuntimeError):
        batcher.submit(np.zeros((1, 3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="at least one worker"):
        Batcher(counting, workers=0)


def test_graceful_shutdown_answers_requests_in_flight(run):
    """What Ctrl-C does to uvicorn (should_exit): a request already being served is answered."""
    import socket

    import httpx
    import uvicorn

    engine = tlearn.api.serving_engine(run, "torch")
    real = engine.runner
    inside = threading.Event()

    def slow(x):  # a slow network, and a sign that the request reached it
        inside.set()
        time.sleep(1.0)
        return real(x)

    engine.runner = slow
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(engine), host="127.0.0.1", port=port, timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    answer = {}

    def ask():
        r = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            files={"file": ("a.png", png((40, 200, 60)))},
            timeout=20,
        )
        answer["status"] = r.status_code

    client = threading.Thread(target=ask)
    client.start()
    assert inside.wait(20)
    server.should_exit = True
    client.join(20)
    thread.join(20)
    assert answer.get("status") == 200
    assert not thread.is_alive()


@pytest.mark.slow
def test_fused_backbones_of_two_sizes_export_and_serve(run, tmp_path, monkeypatch):
    """Two backbones at 32 and 24 px: the second's resize lives in the graph, and the served
    answers are the fp32 PyTorch model's on the same decoded images."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    fused = train_tiny(run.parent, "fused", backbone=["test_efficientnet", "test_resnet"])
    model = tlearn.load(fused)
    model.spec.backbones[1]["preprocessing"]["input_size"] = 24  # both are size-agnostic convnets
    path = model.save(tmp_path / "fused.safetensors")
    model = tlearn.load(path)
    assert [p.input_size for p in model.spec.preprocessing] == [32, 24]
    assert model.input_preprocessing.input_size == 32

    result = tlearn.export(path, tmp_path / "fused.onnx", log=lambda s: None)
    assert result.max_difference <= 1e-4 and result.top1_agreement == 1.0
    engine = tlearn.api.serving_engine(path, log=lambda s: None)  # auto
    assert engine.name == "onnxruntime"
    sizes = [b["preprocessing"]["input_size"] for b in engine.describe()["backbones"]]
    assert sizes == [32, 24]

    files = [run.parent / "images" / c / f"{c}_00{i}.png" for c in CLASSES for i in (1, 2)]
    images, _ = load_files(files, model.input_preprocessing)
    with torch.inference_mode():
        want = ProbabilityGraph(fp32_copy(model.classifier)).eval()(images).numpy()
    torch_engine = tlearn.api.serving_engine(path, "torch")
    for served in (engine, torch_engine):
        with TestClient(create_app(served)) as c:
            body = [("file", (p.name, p.read_bytes())) for p in files]
            answers = c.post("/predict?topk=3", files=body).json()["predictions"]
        top1 = [a["labels"][0] for a in answers]
        assert top1 == [CLASSES[i] for i in want.argmax(1)], served.name
        if served is engine:
            rows = [dict(zip(a["labels"], a["probabilities"], strict=True)) for a in answers]
            got = np.array([[row[k] for k in CLASSES] for row in rows])
            assert np.abs(got - want).max() <= 1e-4
