"""JSON from untrusted lines with bounded cost: nesting depth and integer size are checked before
``json.loads`` can recurse or build a huge int, so a hostile line is a ``ValueError`` that names
what is wrong, never a ``RecursionError`` (the C scanner recurses once a level) or a stall.

Used by the stdio transport (``mcp_devdiag.stdio``), the spool and ``devdiag load``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

# Python's own default for int(str) (sys.int_info.default_max_str_digits); the SDK's parser (jiter)
# refuses longer integers too.
MAX_INT_DIGITS = 4_300
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_DELTA = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # read as signed bytes: +1, -1
_LONE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), or ``limit + 1``
    as soon as it is known to be deeper than ``limit``. Linear, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return limit  # cannot be deeper; the exact figure is not needed
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    deltas = memoryview(brackets.encode("ascii").translate(_DEPTH_DELTA)).cast("b")
    return min(max(itertools.accumulate(deltas), default=0), limit + 1)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer with more than {MAX_INT_DIGITS:,} digits")
    return int(digits)


def loads(text: str, *, max_depth: int) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` and integers longer than
    ``MAX_INT_DIGITS`` digits. Raises ``ValueError`` with a short reason (no input echoed)."""
    if nesting_depth(text, max_depth) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:  # only if the caller's own stack is nearly exhausted
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None


def may_hold_lone_surrogates(text: str) -> bool:
    """False when the parsed value of ``text`` certainly holds no lone surrogate (cheap pre-check)."""
    return bool(_SURROGATE_ESCAPE.search(text) or _LONE.search(text))


def first_lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any string (key or value) of a parsed JSON value, else None."""
    if isinstance(value, str):
        found = _LONE.search(value)
        return found.group() if found else None
    if isinstance(value, dict):
        items: Any = itertools.chain.from_iterable(value.items())
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        if (inner := first_lone_surrogate(item)) is not None:
            return inner
    return None


def replace_lone_surrogates(value: Any) -> Any:
    """A copy of a parsed JSON value with every lone surrogate (keys too) replaced by U+FFFD.

    JSON lets ``"\\ud800"`` through; it is not Unicode text, and UTF-8 cannot encode it.
    Recursion is bounded by the depth ``loads`` allowed.
    """
    if isinstance(value, str):
        return _LONE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_LONE.sub("\ufffd", key): replace_lone_surrogates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(item) for item in value]
    return value
