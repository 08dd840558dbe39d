"""Durations as people write them (``90``, ``1.5h``, ``7d``), read the same by the daemon's
configuration and by ``pyrexisctl``."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text like ``90``, ``90s``, ``1.5h``, ``7d``, ``2w``;
    ``ValueError`` for anything else (negative values included)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, 90s, 12h or 7d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 30, 90s, 12h or 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]
