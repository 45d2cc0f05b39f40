"""`devdiag load` (bulk import, idempotent, bad lines by number, --strict) and its fast lane."""

from __future__ import annotations

import gzip
import itertools
import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from malformed_lines import malformed_lines

from mcp_devdiag.ids import uuid7
from mcp_devdiag.writer import COLUMNS, RunRow
from orchestrator.ingest import canonical_row, fast_values, load, parse_line_to_row

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


# --- the canonical lane (regex over the raw line) accepts only what the writer accepts ----------

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def decode_wire(row: bytes) -> dict[str, Any]:
    """A binary COPY row back to Python values, by column type."""
    (count,), pos, values = struct.unpack_from(">h", row), 2, []
    for _ in range(count):
        (length,) = struct.unpack_from(">i", row, pos)
        pos += 4
        values.append(None if length < 0 else row[pos : pos + length])
        pos += max(length, 0)
    assert pos == len(row) and count == len(COLUMNS)
    out = dict(zip(COLUMNS, values, strict=True))
    for name, value in out.items():
        if value is None:
            continue
        if name in ("id", "run_id"):
            out[name] = uuid.UUID(bytes=value)
        elif name in ("ts", "resolved_at"):
            out[name] = PG_EPOCH + timedelta(microseconds=struct.unpack(">q", value)[0])
        elif name == "confidence":
            out[name] = struct.unpack(">d", value)[0]
        else:
            out[name] = value.decode()
    return out


def expected(data: Any) -> dict[str, Any]:
    row = RunRow.from_json(data)
    return {c: getattr(row, c) for c in COLUMNS}


def _canonical_variants() -> list[dict[str, Any]]:
    """What the regex must get right beyond the writer's rules: JSON spelling."""
    base = good(0, tenant="lane")
    changes: list[dict[str, Any]] = [
        {"error_msg": 'quote " backslash \\ tab \t newline \n slash /'},
        {"error_msg": "caf\u00e9 \u2603 \U0001f600"},  # escaped as \\uXXXX (a pair for the emoji) or raw
        {"error_msg": "a lone surrogate \ud800"},
        {"error_msg": "\u00e9" * 4100},  # capped at 4000 characters, not bytes
        {"error_msg": "\\" * 4100},
        {"error_msg": "a" * 3999 + "\u00e9"},
        {"error_msg": "a" * 5000},
        {"error_msg": ""},
        {"error_msg": "\x00"},
        {"error_msg": "\x7f\x1f"},
        {"tenant_id": 'has "quotes"'},
        {"tenant_id": "back\\slash"},
        {"tenant_id": "caf\u00e9"},
        {"tenant_id": "t" * 200},
        {"tenant_id": "t" * 199 + "\u00e9"},
        {"tenant_id": "a b"},
        {"tenant_id": "a\u00a0"},  # a no-break space at the end: the writer refuses it
        {"tenant_id": "\tx"},
        {"environment": "x"},
        {"fix_suggestion": "f" * 200},
        {"confidence": 0},
        {"confidence": 0.0},
        {"confidence": 1.0},
        {"confidence": 0.12345678901234568},
        {"confidence": 1e-05},
        {"confidence": -0.0},
        {"confidence": 1.0000000000000002},
        {"ts": "2025-03-01 09:00:00.5+05:30"},
        {"ts": "2025-03-01T09:00:00.123456-11:00"},
        {"ts": "2025-03-01T09:00:00.1234567+00:00"},
        {"ts": "2025-03-01T09:00:00+24:00"},
        {"ts": "2025-03-01T09:00:00+00:00 "},
        {"ts": "0001-01-01T00:00:00+00:00"},
        {"resolution": "manual", "resolved_at": "2025-03-01T10:00:00Z"},
        {"resolution": "fixed", "resolved_at": "2025-03-01T10:00:00Z"},
        {"resolution": "failed", "resolved_at": "2025-02-29T10:00:00Z"},
        {"problem_code": "A"},
        {"problem_code": "1A"},
    ]
    clean = {**base, "problem_code": None, "fix_suggestion": None, "confidence": None, "error_msg": None}
    out = [base, clean, {**clean, "confidence": 0.5}, {**clean, "resolved_at": base["ts"]}]
    out += [{**clean, "resolution": "manual", "resolved_at": base["ts"]}, {**base, "confidence": None}]
    out += [{**base, **change} for change in changes]
    return out + _variants()


def _spellings(data: Any) -> list[bytes]:
    """The line as RunRow.to_json() + json.dumps, the spool (compact) and ensure_ascii=False write it."""
    return [
        json.dumps(data).encode() + b"\n",
        json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode() + b"\n",
        json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\r\n",
    ]


@pytest.mark.parametrize("data", _canonical_variants())
def test_canonical_lane_never_accepts_what_the_writer_refuses(data):
    for raw in _spellings(data):
        try:
            raw.decode()
        except UnicodeDecodeError:
            continue  # a lone surrogate written raw: not UTF-8, reported before any lane
        taken = canonical_row(raw, raw.isascii())
        if taken is None:
            continue  # the next lane decides
        row_id, wire = taken
        assert expected(data) == decode_wire(wire)  # raises if the lane took a row the writer refuses
        assert row_id == uuid.UUID(data["id"]).bytes


def test_canonical_lane_takes_what_spools_and_exports_write():
    base = good(1, tenant="lane")
    rows = [base, good(1, tenant="lane", resolved=True), {**base, "problem_code": None, "fix_suggestion": None}]
    rows[2] |= {"confidence": None, "error_msg": None}
    rows += [{**base, "error_msg": text} for text in ('a "quoted" \\ path\n', "caf\u00e9 \U0001f600", "\u00e9" * 4100)]
    rows += [{**base, "confidence": 0}, {**base, "confidence": 1}, {**base, "ts": "2025-03-01 09:00:00.5+05:30"}]
    for data in rows:
        for raw in _spellings(data):
            taken = canonical_row(raw, raw.isascii())
            assert taken is not None, raw
            assert decode_wire(taken[1]) == expected(data)


def test_canonical_lane_agrees_with_the_writer_on_every_field_combination():
    """Plain values, every combination of the optional fields: taken exactly when the writer accepts."""
    base = good(0, tenant="lane")
    taken = 0
    for code, fix, confidence, resolution, resolved_at, error_msg in itertools.product(
        (None, "PORT_IN_USE"),
        (None, "port-kill"),
        (None, 0.5),
        (None, "fixed", "manual", "failed", "worked"),
        (None, base["ts"]),
        (None, "boom"),
    ):
        data = base | {
            "problem_code": code,
            "fix_suggestion": fix,
            "confidence": confidence,
            "resolution": resolution,
            "resolved_at": resolved_at,
            "error_msg": error_msg,
        }
        try:
            wanted = expected(data)
        except ValueError:
            wanted = None
        for raw in _spellings(data):
            row = canonical_row(raw, raw.isascii())
            assert (row and decode_wire(row[1])) == wanted, raw
        taken += wanted is not None
    assert taken == 24  # 12 valid shapes (clean; a finding with or without fix, outcome) x error text or not


@pytest.mark.parametrize("data", _canonical_variants())
def test_every_lane_writes_the_same_bytes(data):
    """Canonical line, keys in another order (dict lane), upper-case ids (writer lane): one row."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or fast_values(data) is None:
        return
    canonical = parse_line_to_row(json.dumps(data).encode())
    reordered = parse_line_to_row(json.dumps(dict(reversed(data.items()))).encode())
    upper = parse_line_to_row(json.dumps({**data, "id": data["id"].upper()}).encode())
    assert canonical == reordered == upper
    if isinstance(canonical, tuple):
        assert decode_wire(canonical[1]) == expected(data)
    else:
        assert "not valid Unicode" in canonical  # a lone surrogate: refused alike by every lane


def test_a_lone_surrogate_is_a_bad_line_not_a_crash():
    line = json.dumps({**good(0, tenant="lane"), "error_msg": "\ud800"}).encode()
    assert "not valid Unicode" in parse_line_to_row(line)
    assert parse_line_to_row(b"  \n") is None
    assert parse_line_to_row(b"\xff\n") == "not UTF-8 (byte 1)"


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


def test_values_round_trip_through_the_database(pg, tmp_path):
    """What each lane sends is what the writer means: read back from diag_run, field by field."""
    tenant = f"trip-{uuid.uuid4().hex[:8]}"
    rows = [{**data, "tenant_id": tenant} for data in _canonical_variants()[:40] if isinstance(data, dict)]
    rows = [{**data, "id": str(uuid7(T0 + timedelta(seconds=i)))} for i, data in enumerate(rows)]
    wanted = {}
    lines = []
    for i, data in enumerate(rows):
        try:
            wanted[data["id"]] = expected(data)
        except ValueError:
            continue
        if "\x00" in (data.get("error_msg") or "") or "\ud800" in (data.get("error_msg") or ""):
            del wanted[data["id"]]  # valid for the writer, refused by the database: a bad line
        spelling = (
            json.dumps(data),  # canonical
            json.dumps(data, separators=(",", ":"), ensure_ascii=False),  # canonical, spool-style
            json.dumps(dict(reversed(data.items()))),  # dict lane
            json.dumps({**data, "id": data["id"].upper()}),  # writer lane
        )[i % 4]
        lines.append(spelling)
    report = json.loads(invoke(str(write_jsonl(tmp_path / "trip.jsonl", lines)), "--json").output)
    assert report["inserted"] == len(wanted) and len(report["bad_lines"]) == 2
    with psycopg.connect(pg.conninfo()) as conn:
        cur = conn.execute(f"select {', '.join(COLUMNS)} from devdiag.diag_run where tenant_id = %s", (tenant,))
        stored = {str(r[0]): dict(zip(COLUMNS, r, strict=True)) for r in cur}
    assert stored == wanted


def test_a_refused_line_costs_only_itself(pg, tmp_path):
    """The database refuses two lines of a 2,000-line batch: both reported, every other line loaded,
    with far fewer than one transaction a line (the batch is halved, not replayed line by line)."""
    tenant = f"refused-{uuid.uuid4().hex[:8]}"
    rows = [good(i, tenant=tenant) for i in range(2000)]
    rows[700]["error_msg"] = "nul \x00 byte"
    rows[1500]["problem_code"] = (
        "PORT_IN_USE\n"  # the writer's check lets a final newline through; the table's does not
    )
    lines = [json.dumps(r) for r in rows]
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        before = conn.execute("select xact_commit from pg_stat_database where datname = current_database()")
        before = before.fetchone()[0]
    report = json.loads(invoke(str(write_jsonl(tmp_path / "r.jsonl", lines)), "--json", "--batch-size", "2000").output)
    assert [b["line"] for b in report["bad_lines"]] == [701, 1501]
    assert all(b["error"].startswith("refused by the database: ") for b in report["bad_lines"])
    assert (report["rows"], report["inserted"]) == (1998, 1998)
    assert count(pg, tenant) == 1998
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("select pg_stat_force_next_flush()")
        after = conn.execute("select xact_commit from pg_stat_database where datname = current_database()")
        assert after.fetchone()[0] - before < 200


def test_strict_rolls_back_a_batch_the_database_refused(pg, tmp_path):
    tenant = f"strict-db-{uuid.uuid4().hex[:8]}"
    rows = [good(i, tenant=tenant) for i in range(30)]
    rows[12]["error_msg"] = "nul \x00 byte"
    result = invoke(str(write_jsonl(tmp_path / "s.jsonl", [json.dumps(r) for r in rows])), "--strict")
    assert result.exit_code == 1 and "line 13: refused by the database" in result.output
    assert count(pg, tenant) == 0


def test_lone_surrogate_and_outcome_only_files(pg, tmp_path):
    tenant = f"sur-{uuid.uuid4().hex[:8]}"
    first, second = good(0, tenant=tenant), good(1, tenant=tenant)
    lines = [json.dumps(first), json.dumps({**second, "error_msg": "\ud800"})]
    report = json.loads(invoke(str(write_jsonl(tmp_path / "s.jsonl", lines)), "--json").output)
    assert report["inserted"] == 1 and [b["line"] for b in report["bad_lines"]] == [2]
    outcome = {"outcome": {"finding_id": first["id"], "resolution": "manual", "at": T0.isoformat()}}
    report = json.loads(invoke(str(write_jsonl(tmp_path / "o.jsonl", [json.dumps(outcome)])), "--json").output)
    assert (report["rows"], report["outcomes"], report["outcomes_applied"]) == (0, 1, 1)


def test_two_writers_with_ids_repeated_across_batches(pg, tmp_path):
    """Batches written side by side by two connections, the same ids in both orders: each row once."""
    tenant = f"dup-{uuid.uuid4().hex[:8]}"
    rows = [json.dumps(good(i, tenant=tenant)) for i in range(400)]
    lines = [line for k in range(0, 400, 50) for line in rows[k : k + 50] + rows[k : k + 50][::-1]]
    lines += rows[:50]  # side by side: a batch and the same ids reversed (they may deadlock: retried)
    report = json.loads(invoke(str(write_jsonl(tmp_path / "d.jsonl", lines)), "--json", "--batch-size", "50").output)
    assert (report["rows"], report["inserted"], report["already_present"]) == (850, 400, 450)
    assert report["bad_lines"] == []
    assert count(pg, tenant) == 400


def test_load_file_without_a_second_connection(pg, tmp_path):
    """The library entry point: one connection unless the caller gives a way to open more."""
    from orchestrator.ingest import load_file

    tenant = f"lib-{uuid.uuid4().hex[:8]}"
    path = write_jsonl(tmp_path / "l.jsonl", [json.dumps(good(i, tenant=tenant)) for i in range(25)])
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        result = load_file(conn, str(path), batch_size=10)
        again = load_file(conn, str(path), batch_size=10, connect_more=lambda: psycopg.connect(pg.conninfo()))
    assert (result.inserted, again.inserted, again.already_present) == (25, 0, 25)


def test_no_second_connection_still_loads(pg, tmp_path):
    from devdiag_db.db import DatabaseUnavailable
    from orchestrator.ingest import load_file

    def refuse() -> psycopg.Connection:
        raise DatabaseUnavailable("too many connections")

    tenant = f"one-{uuid.uuid4().hex[:8]}"
    path = write_jsonl(tmp_path / "one.jsonl", [json.dumps(good(i, tenant=tenant)) for i in range(12)])
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        assert load_file(conn, str(path), batch_size=5, connect_more=refuse).inserted == 12


def test_truncated_gzip_is_a_one_line_error(pg, tmp_path):
    tenant = f"trunc-{uuid.uuid4().hex[:8]}"
    packed = gzip.compress("".join(json.dumps(good(i, tenant=tenant)) + "\n" for i in range(200)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    result = invoke(str(path))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "cannot be read to the end" in result.output


# --- hostile lines: each one a bad line by number, never fatal -------------------------------------


@pytest.mark.parametrize(("name", "raw"), malformed_lines(good(0, tenant="hostile")), ids=lambda v: str(v)[:30])
def test_a_malformed_line_is_a_bad_line_not_a_crash(name, raw):
    verdict = parse_line_to_row(raw)
    if name == "escaped NUL in a label":  # valid JSON, a valid row: the database refuses it (below)
        assert isinstance(verdict, tuple)
    else:
        assert isinstance(verdict, str) and verdict, verdict


def test_no_malformed_line_is_fatal_to_a_load(pg, tmp_path):
    tenant = f"hostile-{uuid.uuid4().hex[:8]}"
    rows = [good(i, tenant=tenant) for i in range(len(malformed_lines(good(0, tenant=tenant))) + 1)]
    lines, bad_numbers = [json.dumps(rows[0]).encode()], []
    for i, (_, raw) in enumerate(malformed_lines({**rows[0], "id": str(uuid7(T0 - timedelta(days=1)))}), start=1):
        lines.append(raw)
        bad_numbers.append(len(lines))
        lines.append(json.dumps(rows[i]).encode())
    outcome = {"outcome": {"run_id": rows[0]["run_id"], "resolution": "fixed", "at": T0.isoformat()}}
    lines.append(json.dumps(outcome).encode())
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))

    result = invoke(str(path), "--json")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    report = json.loads(result.output)
    assert [b["line"] for b in report["bad_lines"]] == bad_numbers, report["bad_lines"]
    assert report["inserted"] == len(rows) and report["outcomes_applied"] == 1
    assert count(pg, tenant) == len(rows)

    text = invoke(str(path))  # the human report: one line a bad line, exit 0 as before
    assert text.exit_code == 0 and "Traceback" not in text.output
    assert f"line {bad_numbers[0]}: JSON nested deeper than" in text.output
    assert f"... and {len(bad_numbers) - 20} more" in text.output
    assert any("line of 3,145,7" in b["error"] for b in report["bad_lines"] if b["line"] == bad_numbers[-1])

    strict = invoke(str(path), "--strict")
    assert strict.exit_code == 1 and f"first: line {bad_numbers[0]}: JSON nested deeper" in strict.output
