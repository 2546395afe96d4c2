"""JSON read and written exactly. orjson is fast, but reads an integer beyond 64 bits as a float
(`123456789012345678901234567890` becomes `1.2345678901234568e+29`) and refuses to write one;
the standard library keeps every integer exact. A sender's numbers must survive as sent."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# orjson is exact up to 64 bits: 19 digits always fit. A longer run of digits may be such an
# integer (or only text inside a string: then the slower parser costs time, nothing else).
_LONG_DIGITS = re.compile(rb"\d{19}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes) -> Any:
    """Parse JSON; ValueError if it is not (also for invalid UTF-8, NaN or Infinity)."""
    if _LONG_DIGITS.search(data) is None:
        return orjson.loads(data)
    try:
        return json.loads(data.decode(), parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested deeper than the parser allows") from None


def dumps(value: Any) -> bytes:
    """Compact JSON, non-ASCII as UTF-8; TypeError for what JSON cannot hold."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits (or nesting past orjson's limit): the standard library
        # writes both. RecursionError for nesting beyond Python's own limit.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
