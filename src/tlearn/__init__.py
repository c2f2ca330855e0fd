"""tlearn: transfer learning for image classification on PyTorch.

import tlearn
model = tlearn.train("fashion-mnist", strategy="linear-probe", image_size=64)
model.evaluate("fashion-mnist").accuracy
model.save("fm.safetensors"); tlearn.load("fm.safetensors").predict(["a.png"])
"""

from tlearn.api import Model, Prediction, doctor, export, load, lr_find, predict_onnx, serve, train
from tlearn.errors import TlearnError
from tlearn.version import __version__

__all__ = [
    "Model",
    "Prediction",
    "TlearnError",
    "doctor",
    "load",
    "lr_find",
    "train",
    "__version__",
]
__all__ += ["export", "predict_onnx", "serve"]
