"""Hostile JSONL lines for the spool and `devdiag load`: each must be one bad line, never fatal."""

from __future__ import annotations

import json
from typing import Any

from mcp_devdiag.spool import MAX_LINE_BYTES


def malformed_lines(row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(name, raw line without its newline), built around a valid run row ``row``."""

    def field(name: str, raw_json: bytes) -> bytes:
        return json.dumps({**row, name: "@@"}).encode().replace(b'"@@"', raw_json)

    def outcome(**body: Any) -> bytes:
        return json.dumps(
            {"outcome": {"resolution": "fixed", "at": row["ts"], "run_id": row["run_id"], **body}}
        ).encode()

    base = json.dumps(row).encode()
    return [
        ("deep array", b"[" * 100_000 + b"]" * 100_000),
        ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("deep value in a field", field("error_msg", b"[" * 5_000 + b"]" * 5_000)),
        ("huge integer", b"9" * 5_000),
        ("huge integer in a field", field("confidence", b"9" * 5_000)),
        ("huge float", field("confidence", b"1e999999")),
        ("NaN", field("confidence", b"NaN")),
        ("invalid UTF-8", field("error_msg", b'"\xff\xfe broken"')),
        ("lone surrogate in a value", field("error_msg", b'"\\ud800"')),
        ("lone surrogate in a key", base[:-1] + b', "\\udc00": 1}'),
        ("raw NUL", field("error_msg", b'"a\x00b"')),
        ("escaped NUL in a label", field("tenant_id", b'"t\\u0000"')),
        ("truncated", base[: len(base) // 2]),
        ("list id", field("id", b"[1, 2]")),
        ("object resolution", field("resolution", b'{"a": 1}')),
        ("array", b"[]"),
        ("string", b'"text"'),
        ("number", b"42"),
        ("null", b"null"),
        ("outcome: list run_id", outcome(run_id=[1])),
        ("outcome: number run_id", outcome(run_id=12)),
        ("outcome: object fix_id", outcome(fix_id={"a": 1})),
        ("outcome: NUL in fix_id", outcome(fix_id="fix\x00")),
        ("outcome: lone surrogate in fix_id", outcome(fix_id="\ud800")),
        ("outcome: huge at", outcome(at=int("9" * 4_000))),
        ("outcome: not an object", b'{"outcome": "fixed"}'),
        ("gigantic line", b'{"error_msg": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}'),
    ]
