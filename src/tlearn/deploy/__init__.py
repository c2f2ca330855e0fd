"""Using a trained model: predict (and, later, export and serve)."""
