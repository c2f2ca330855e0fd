"""Strategies, the training loop and the feature cache."""
