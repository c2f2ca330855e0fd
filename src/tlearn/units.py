"""Sizes and durations as people write them: `4G`, `90s`, `1h30m`."""

from __future__ import annotations

import re

from tlearn.errors import TlearnError


def parse_bytes(text: str | int) -> int:
    """`4G`, `500M`, `1.5GB` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise TlearnError(f"--memory-limit {text!r} must be a size like 4G, 500M or 2000000000")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def parse_duration(text: str | int | float) -> float:
    """`90s`, `10m`, `2h`, `1h30m` or a plain number of seconds, in seconds."""
    value = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", value)
    if not value or not re.fullmatch(r"(\s*\d+(\.\d+)?\s*[hms]?)+", value):
        parts = []
    if len(parts) > 1 and any(not unit for _, unit in parts):
        parts = []
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit] for n, unit in parts)
    if not parts or seconds <= 0:
        raise TlearnError(f"--budget {text!r} must be a duration like 90s, 10m, 2h or 1h30m")
    return seconds
