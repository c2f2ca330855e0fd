"""An exported `.onnx` file run by onnxruntime, with tlearn's own decoding in front of it.

`tlearn predict --onnx FILE` and `tlearn serve FILE.onnx` use this: anyone can reproduce the
export's check, and a served ONNX model decodes uploads exactly as the PyTorch one does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.data import find_images
from tlearn.deploy.extras import require
from tlearn.deploy.inputs import load_files
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing


class OnnxModel:
    """A tlearn-exported ONNX file: its classes, its input preprocessing and a session."""

    def __init__(self, path: str | Path, threads: int | None = None, serving: bool = False) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise TlearnError(f"no ONNX file at {self.path}: give a file written by tlearn export")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if serving:  # spinning pool threads took the cores that decode uploads: 2.0 against
            # 4.9 requests/s at concurrency 1 in benchmarks/serve.py on the shared 2-core machine
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own types for a damaged file
            raise TlearnError(
                f"{self.path} is not a readable ONNX model ({str(e)[:200]}): export it again"
            ) from e
        self.meta: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("tlearn.format") != "tlearn.exported":
            raise TlearnError(
                f"{self.path} was not written by `tlearn export`: it has no tlearn metadata"
            )
        self.classes: list[str] = json.loads(self.meta["classes"])
        pre = json.loads(self.meta["preprocessing"])["model_input"]
        self.input_preprocessing = Preprocessing.from_dict(pre)

    @property
    def input_size(self) -> int:
        return self.input_preprocessing.input_size

    def describe(self) -> dict[str, Any]:
        """The file's metadata, decoded, for `/model`."""
        info: dict[str, Any] = {}
        for key, value in self.meta.items():
            try:
                info[key] = json.loads(value)
            except json.JSONDecodeError:
                info[key] = value
        info["file"] = os.fspath(self.path)
        return info

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float32 probabilities [N, classes]."""
        return self.session.run(None, {"images": np.ascontiguousarray(images)})[0]

    def predict_paths(
        self, paths: list[str | Path], topk: int = 5, batch_size: int = 64
    ) -> list[tuple[str, list[str], list[float]]]:
        """(path, top-k labels, their probabilities) per decodable image, in order."""
        if topk < 1:
            raise TlearnError(f"--topk {topk} must be at least 1")
        files = find_images(paths)
        k = min(topk, len(self.classes))
        results = []
        for start in range(0, len(files), batch_size):
            batch, kept = load_files(files[start : start + batch_size], self.input_preprocessing)
            if not kept:
                continue
            probabilities = self(batch.numpy())
            for path, row in zip(kept, probabilities, strict=True):
                top = np.argsort(-row, kind="stable")[:k]
                labels = [self.classes[i] for i in top]
                results.append((str(path), labels, [round(float(row[i]), 6) for i in top]))
        if not results:
            raise TlearnError("none of the given images could be decoded: check the files")
        return results
