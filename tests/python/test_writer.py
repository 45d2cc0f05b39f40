"""The batched writer and UUIDv7 ids, against a real PostgreSQL (a database of their own)."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import own_database

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from mcp_devdiag import ids
from mcp_devdiag.writer import ERROR_MSG_CAP, RunRow, record_outcome, write_runs

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def db(pg) -> Iterator[ConnectionSettings]:
    """A database of this module's own (with `devdiag setup`), so its rows never reach other tests."""
    with own_database(pg, "devdiag_test_writer") as settings:
        yield settings


def tenant() -> str:
    """A tenant of its own per test, so counts stay per test."""
    return f"writer-test-{uuid.uuid4().hex[:8]}"


def finding(when: datetime = T0, **changes) -> RunRow:
    base = RunRow(
        id=ids.uuid7(when),
        run_id=ids.uuid7(when),
        ts=when,
        tenant_id="acme",
        environment="linux/python-3.12/node-20",
        problem_code="PORT_IN_USE",
        fix_suggestion="port-kill-old-process",
        confidence=0.8,
        error_msg="Error: listen EADDRINUSE: address already in use :::3000",
    )
    return dataclasses.replace(base, **changes)


def rows_for(who: str, n: int, start: datetime = T0) -> list[RunRow]:
    return [finding(start + timedelta(seconds=i), tenant_id=who) for i in range(n)]


def count(conn, who: str) -> int:
    return conn.execute("select count(*) from devdiag.diag_run where tenant_id = %s", (who,)).fetchone()[0]


# --- ids ------------------------------------------------------------------------------------------


def test_uuid7_layout_and_time_order() -> None:
    rng = random.Random(1)
    stamps = sorted(T0 + timedelta(microseconds=rng.randrange(10**9)) for _ in range(2000))
    made = [ids.uuid7(ts, rng=rng) for ts in stamps]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    # ordered by time down to 1/4096 ms: distinct sub-millisecond stamps never sort backwards
    assert [u.int >> 64 for u in made] == sorted(u.int >> 64 for u in made)
    assert ids.timestamp_of(made[0]) == stamps[0].replace(microsecond=stamps[0].microsecond // 1000 * 1000)


def test_uuid7_is_reproducible_with_a_seeded_rng() -> None:
    assert ids.uuid7(T0, rng=random.Random(5)) == ids.uuid7(T0, rng=random.Random(5))
    assert ids.uuid7(T0) != ids.uuid7(T0)
    assert ids.from_int(ids.uuid7(T0).int).version == 7


def test_uuid7_rejects_naive_timestamps() -> None:
    with pytest.raises(ValueError, match="naive"):
        ids.uuid7(datetime(2025, 1, 1))


# --- RunRow ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "not-a-uuid"}, "id"),
        ({"run_id": None}, "run_id"),
        ({"ts": datetime(2025, 1, 1)}, "ts"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"environment": None}, "environment"),
        ({"problem_code": "port_in_use"}, "problem_code"),
        ({"confidence": 1.2}, "confidence"),
        ({"confidence": float("nan")}, "confidence"),
        ({"fix_suggestion": None}, "confidence"),
        ({"problem_code": None, "confidence": None}, "fix_suggestion"),
        ({"resolution": "solved", "resolved_at": T0}, "resolution"),
        ({"resolution": "fixed"}, "resolved_at"),
        ({"resolved_at": T0}, "resolved_at"),
        ({"resolution": "manual", "resolved_at": datetime(2025, 3, 2)}, "resolved_at"),
        ({"fix_suggestion": None, "confidence": None, "resolution": "fixed", "resolved_at": T0}, "fix_suggestion"),
    ],
)
def test_validate_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        finding(**changes).validate()
    assert "\n" not in str(caught.value)


def test_valid_rows_pass() -> None:
    finding().validate()
    finding(problem_code=None, fix_suggestion=None, confidence=None, error_msg=None).validate()
    finding(resolution="failed", resolved_at=T0 + timedelta(hours=2)).validate()
    finding(fix_suggestion=None, confidence=None, resolution="manual", resolved_at=T0).validate()


def test_error_msg_is_capped_not_rejected() -> None:
    row = finding(error_msg="x" * (ERROR_MSG_CAP + 500))
    assert len(row.error_msg) == ERROR_MSG_CAP
    row.validate()


def test_json_round_trip() -> None:
    row = finding(resolution="fixed", resolved_at=T0 + timedelta(hours=3))
    data = row.to_json()
    assert data["id"] == str(row.id) and data["ts"] == T0.isoformat()
    assert RunRow.from_json(data) == row


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": "x"}, "missing"),
        ({**finding().to_json(), "colour": "red"}, "unknown field"),
        ({**finding().to_json(), "ts": "yesterday"}, "ts"),
        ({**finding().to_json(), "ts": "2025-01-01T10:00:00"}, "timezone"),
        ({**finding().to_json(), "run_id": "123"}, "run_id"),
    ],
)
def test_from_json_rejects_bad_input(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunRow.from_json(data)


# --- write_runs -----------------------------------------------------------------------------------


def test_write_is_idempotent(db) -> None:
    who = tenant()
    rows = rows_for(who, 1200)
    with connect(db) as conn:
        assert write_runs(conn, rows, batch_size=500) == 1200
        assert write_runs(conn, rows, batch_size=500) == 0
        assert write_runs(conn, reversed(rows)) == 0
        assert count(conn, who) == 1200


def test_write_handles_history_older_than_the_table(db) -> None:
    """Rows older than everything stored (ids below max(id)) take the conflict-safe path."""
    who = tenant()
    with connect(db) as conn:
        assert write_runs(conn, rows_for(who, 10, T0 + timedelta(days=3000))) == 10
        old = rows_for(who, 10, T0 - timedelta(days=400))
        assert write_runs(conn, old + old[:3]) == 10  # duplicates within a batch count once
        assert count(conn, who) == 20


def test_partly_loaded_batch_adds_only_the_new_rows(db) -> None:
    who = tenant()
    rows = rows_for(who, 100)
    with connect(db) as conn:
        assert write_runs(conn, rows[:40]) == 40
        assert write_runs(conn, rows) == 60
        assert count(conn, who) == 100


def test_each_batch_commits_on_a_non_autocommit_connection(db) -> None:
    who = tenant()
    with connect(db, autocommit=False) as conn, connect(db) as other:
        assert write_runs(conn, rows_for(who, 30, T0 + timedelta(days=5000)), batch_size=10) == 30
        assert write_runs(conn, rows_for(who, 30, T0 - timedelta(days=5000)), batch_size=10) == 30
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert count(other, who) == 60


def test_malformed_row_writes_nothing_of_its_batch(db) -> None:
    who = tenant()
    rows = rows_for(who, 50)
    rows[37] = dataclasses.replace(rows[37], ts=datetime(2025, 3, 1, 12, 0))
    with connect(db) as conn:
        with pytest.raises(ValueError, match=r"row 37 .*ts .* timezone-aware.*nothing of its batch"):
            write_runs(conn, rows)
        assert count(conn, who) == 0
        # earlier batches stay written; the bad batch does not
        with pytest.raises(ValueError, match="confidence"):
            write_runs(conn, [*rows[:10], dataclasses.replace(rows[40], confidence=7.0)], batch_size=10)
        assert count(conn, who) == 10


def test_writer_role_can_write(db) -> None:
    """The least-privilege role (INSERT, SELECT, UPDATE of the outcome) writes its tenant's runs, by
    either path, and nothing at all outside a tenant's transaction (row-level security)."""
    from devdiag_db import embedded
    from devdiag_db.db import tenant_transaction
    from orchestrator.secrets import role_password

    who = tenant()
    tcp = embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer"))
    writer = ConnectionSettings({**tcp.params, "dbname": db.dbname}, embedded=True)
    with connect(writer) as conn:
        with tenant_transaction(conn, who):
            assert write_runs(conn, rows_for(who, 5, T0 + timedelta(days=4000))) == 5
            assert write_runs(conn, rows_for(who, 5, T0 - timedelta(days=4000))) == 5
            row = rows_for(who, 1)[0]
            assert write_runs(conn, [row]) == 1
            assert record_outcome(conn, run_id=row.run_id, resolution="fixed", at=T0 + timedelta(hours=1)) == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            write_runs(conn, rows_for(who, 1))


# --- record_outcome -------------------------------------------------------------------------------


def outcome_of(conn, row: RunRow) -> tuple:
    return conn.execute("select resolution, resolved_at from devdiag.diag_run where id = %s", (row.id,)).fetchone()


def test_record_outcome_is_idempotent_and_latest_wins(db) -> None:
    row = finding(tenant_id=tenant())
    t1, t2, t3 = (T0 + timedelta(hours=h) for h in (1, 2, 3))
    with connect(db) as conn:
        write_runs(conn, [row])
        assert record_outcome(conn, run_id=row.run_id, resolution="failed", at=t1) == 1
        assert record_outcome(conn, run_id=row.run_id, resolution="failed", at=t2) == 0
        assert outcome_of(conn, row) == ("failed", t1)
        assert record_outcome(conn, finding_id=row.id, resolution="fixed", at=t3) == 1
        assert outcome_of(conn, row) == ("fixed", t3)
        # an older outcome replayed late does not overwrite a newer one
        assert record_outcome(conn, run_id=row.run_id, resolution="manual", at=t2) == 0
        assert outcome_of(conn, row) == ("fixed", t3)


def test_record_outcome_targets(db) -> None:
    who = tenant()
    run = ids.uuid7(T0)
    a = finding(run_id=run, tenant_id=who)
    b = finding(run_id=run, tenant_id=who, problem_code="CORS_BLOCKED", fix_suggestion="cors-allow-origin")
    clean = finding(tenant_id=who, problem_code=None, fix_suggestion=None, confidence=None, error_msg=None)
    at = T0 + timedelta(hours=1)
    with connect(db) as conn:
        write_runs(conn, [a, b, clean])
        assert record_outcome(conn, run_id=ids.uuid7(T0), resolution="fixed", at=at) == 0
        assert record_outcome(conn, run_id=clean.run_id, resolution="manual", at=at) == 0
        assert record_outcome(conn, run_id=run, resolution="fixed", fix_id="cors-allow-origin", at=at) == 1
        assert outcome_of(conn, b) == ("fixed", at)
        assert outcome_of(conn, a) == (None, None)
        assert record_outcome(conn, run_id=str(run), resolution="failed", at=at + timedelta(hours=1)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": "fixed", "at": T0}, "exactly one"),
        ({"run_id": uuid.uuid4(), "finding_id": uuid.uuid4(), "resolution": "fixed", "at": T0}, "exactly one"),
        ({"run_id": uuid.uuid4(), "resolution": "done", "at": T0}, "resolution"),
        ({"run_id": uuid.uuid4(), "resolution": "fixed", "at": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"run_id": "nope", "resolution": "fixed", "at": T0}, "not a UUID"),
    ],
)
def test_record_outcome_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record_outcome(None, **kwargs)  # type: ignore[arg-type]
