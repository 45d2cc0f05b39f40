"""`devdiag load` (bulk import, idempotent, bad lines by number, --strict) and its fast lane."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from mcp_devdiag.ids import uuid7
from mcp_devdiag.writer import COLUMNS, RunRow
from orchestrator.ingest import fast_values, load

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def good(i: int, *, tenant: str, resolved: bool = False) -> dict[str, Any]:
    ts = T0 + timedelta(minutes=i)
    return RunRow(
        id=uuid7(ts),
        run_id=uuid7(ts),
        ts=ts,
        tenant_id=tenant,
        environment="linux/python-3.12/node-20",
        problem_code="PORT_IN_USE",
        fix_suggestion="port-kill-old-process",
        confidence=0.8,
        resolution="fixed" if resolved else None,
        resolved_at=ts + timedelta(hours=1) if resolved else None,
        error_msg=f"Error: listen EADDRINUSE: address already in use :::{3000 + i}",
    ).to_json()


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(load, list(args), input=input)


def count(pg, tenant: str) -> int:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute("select count(*) from devdiag.diag_run where tenant_id = %s", (tenant,)).fetchone()[0]


# --- the fast lane accepts only what the writer accepts -------------------------------------------


def _variants() -> list[dict[str, Any]]:
    base = good(0, tenant="lane")
    clean = {**base, "problem_code": None, "fix_suggestion": None, "confidence": None}
    out = [base, clean, {**base, "resolution": "failed", "resolved_at": base["ts"]}, {**base, "error_msg": "x" * 5000}]
    out += [{**base, "confidence": 1}, {**base, "ts": "2025-03-01T09:00:00Z"}]
    changes: list[dict[str, Any]] = [
        {"id": "not-a-uuid"},
        {"id": base["id"].upper()},
        {"run_id": None},
        {"ts": "2025-03-01T09:00:00"},  # naive
        {"ts": "2025-02-30T09:00:00+00:00"},  # no such day (the database judges it)
        {"ts": 1700000000},
        {"tenant_id": ""},
        {"tenant_id": " padded "},
        {"tenant_id": "t" * 201},
        {"environment": None},
        {"problem_code": "port_in_use"},
        {"problem_code": "PORT_IN_USE\n"},
        {"problem_code": None},  # a fix without a problem
        {"fix_suggestion": None},  # confidence without a fix
        {"confidence": 1.5},
        {"confidence": True},
        {"confidence": "0.5"},
        {"resolution": "worked", "resolved_at": base["ts"]},
        {"resolution": "fixed"},  # no resolved_at
        {"resolved_at": base["ts"]},  # no resolution
        {"resolution": "fixed", "resolved_at": base["ts"], "fix_suggestion": None, "confidence": None},
        {"resolution": "manual", "resolved_at": "yesterday"},
        {"error_msg": 42},
        {"error_msg": "nul\x00byte"},
        {"extra": "field"},
    ]
    out += [{**base, **change} for change in changes]
    out += [{k: v for k, v in base.items() if k != "ts"}, [base], "text", None]
    return out


@pytest.mark.parametrize("data", _variants())
def test_fast_lane_never_accepts_what_the_writer_refuses(data):
    values = fast_values(data)
    if values is None:
        return  # the writer decides; nothing to compare
    row = RunRow.from_json(data)  # raises if the fast lane accepted a row the writer refuses
    expected = {c: getattr(row, c) for c in COLUMNS} | {"id": str(row.id), "run_id": str(row.run_id)}
    assert dict(zip(COLUMNS, values, strict=True)) == expected


def test_fast_lane_takes_ordinary_rows():
    assert fast_values(good(1, tenant="lane")) is not None
    assert fast_values(good(1, tenant="lane", resolved=True)) is not None


# --- loading files --------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_is_idempotent_and_reports_bad_lines_by_number(pg, tmp_path):
    tenant = f"load-{uuid.uuid4().hex[:8]}"
    rows = [good(i, tenant=tenant) for i in range(50)]
    first = rows[0]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")  # line 4
    lines.insert(10, json.dumps({**rows[0], "id": "nope"}))  # line 11
    lines.insert(20, "")  # line 21: blank, ignored
    lines.insert(30, json.dumps({**rows[1], "id": str(uuid.uuid4()), "ts": "2025-02-30T09:00:00+00:00"}))  # line 31
    lines.insert(40, json.dumps({**rows[2], "id": str(uuid.uuid4()), "error_msg": "nul\x00"}))  # line 41
    lines.append(json.dumps({"outcome": {"run_id": first["run_id"], "resolution": "fixed", "at": T0.isoformat()}}))
    path = write_jsonl(tmp_path / "runs.jsonl", lines)

    result = invoke(str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inserted"] == 50 and report["already_present"] == 0
    assert report["outcomes_applied"] == 1
    assert [b["line"] for b in report["bad_lines"]] == [4, 11, 31, 41]
    messages = {b["line"]: b["error"] for b in report["bad_lines"]}
    assert "not JSON" in messages[4] and "not a UUID" in messages[11]
    assert "ISO-8601" in messages[31] and "refused by the database" in messages[41]
    assert count(pg, tenant) == 50

    again = json.loads(invoke(str(path), "--json").output)
    assert (again["inserted"], again["already_present"]) == (0, 50)
    assert count(pg, tenant) == 50
    with psycopg.connect(pg.conninfo()) as conn:
        assert conn.execute("select resolution from devdiag.diag_run where id = %s", (first["id"],)).fetchone() == (
            "fixed",
        )


def test_strict_loads_all_or_nothing(pg, tmp_path):
    tenant = f"strict-{uuid.uuid4().hex[:8]}"
    rows = [json.dumps(good(i, tenant=tenant)) for i in range(20)]
    broken = write_jsonl(tmp_path / "broken.jsonl", [*rows[:15], '{"id": 1}', *rows[15:]])
    result = invoke(str(broken), "--strict")
    assert result.exit_code == 1
    assert "line 16" in result.output and "nothing loaded" in result.output
    assert count(pg, tenant) == 0
    fine = write_jsonl(tmp_path / "fine.jsonl", rows)
    result = invoke(str(fine), "--strict")
    assert result.exit_code == 0 and "20 rows inserted" in result.output
    assert count(pg, tenant) == 20


def test_partial_reload_inserts_only_the_rest(pg, tmp_path):
    tenant = f"partial-{uuid.uuid4().hex[:8]}"
    rows = [json.dumps(good(i, tenant=tenant)) for i in range(30)]
    # uppercase ids take the writer's path; they are stored canonically all the same
    rows[5] = json.dumps({**json.loads(rows[5]), "id": json.loads(rows[5])["id"].upper()})
    write_jsonl(tmp_path / "head.jsonl", rows[:12])
    write_jsonl(tmp_path / "all.jsonl", rows)
    assert json.loads(invoke(str(tmp_path / "head.jsonl"), "--json").output)["inserted"] == 12
    report = json.loads(invoke(str(tmp_path / "all.jsonl"), "--json", "--batch-size", "7").output)
    assert (report["inserted"], report["already_present"], report["bad_lines"]) == (18, 12, [])
    assert count(pg, tenant) == 30


def test_gzip_and_stdin(pg, tmp_path):
    tenant = f"gz-{uuid.uuid4().hex[:8]}"
    rows = [json.dumps(good(i, tenant=tenant)) for i in range(10)]
    packed = tmp_path / "runs.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(rows[:5]) + "\n")
    assert json.loads(invoke(str(packed), "--json").output)["inserted"] == 5
    assert json.loads(invoke("-", "--json", input="\n".join(rows) + "\n").output)["inserted"] == 5
    assert count(pg, tenant) == 10


def test_invalid_utf8_line_is_reported(pg, tmp_path):
    tenant = f"utf-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(good(0, tenant=tenant)).encode() + b"\n\xff\xfe broken\n")
    report = json.loads(invoke(str(path), "--json").output)
    assert report["inserted"] == 1 and report["bad_lines"] == [{"line": 2, "error": "not UTF-8 (byte 1)"}]


def test_missing_file_is_a_one_line_error(pg, tmp_path):
    result = invoke(str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no such file" in result.output
