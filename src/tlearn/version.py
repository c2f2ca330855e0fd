"""The version of tlearn: on the ground floor, so a model file can record it."""

__version__ = "0.1.0"
