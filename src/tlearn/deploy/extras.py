"""Optional dependencies of deploy: imported when used, so `import tlearn` never needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from tlearn.errors import TlearnError

# module -> the extra that installs it (pyproject.toml's optional-dependencies)
EXTRAS = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
}


def require(module: str) -> ModuleType:
    """Import an optional module, or end in one sentence naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module.split(".")[0], "export")
        raise TlearnError(
            f"{module} is not installed ({e.msg}): run pip install 'tlearn[{extra}]'"
        ) from e
