"""Using a trained model: predict, export (ONNX, torch.export) and serve (FastAPI, a web page)."""
