"""The team memory: errors seen before, by normalised signature, with the outcome and note that solved them.

Against a real PostgreSQL (its own database): diagnose returns the tenant's earlier similar runs for
known and unknown errors, never another tenant's (in Python and, as the server's role, under
row-level security); notes are redacted and capped; spooled notes replay; a replayed or reloaded
run is not counted twice; loads, retention and `devdiag catalog gaps` keep the memory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from mcp.server.mcpserver.exceptions import ToolError

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect, tenant_transaction
from mcp_devdiag import memory
from mcp_devdiag.catalog import UNRECOGNISED
from mcp_devdiag.ids import uuid7
from mcp_devdiag.service import DevDiag
from mcp_devdiag.spool import Outcome
from mcp_devdiag.writer import RunRow, write_runs
from tests.python.conftest import login, own_database, tenant_service

BORROW_1 = """error[E0499]: cannot borrow `items` as mutable more than once at a time
  --> src/main.rs:14:9
   |
14 |     let second = &mut items;
   |                  ^^^^^^^^^^ second mutable borrow occurs here"""
BORROW_2 = """error[E0499]: cannot borrow `self.buffers` as mutable more than once at a time
  --> crates/engine/src/pool.rs:88:23
For more information about this error, try `rustc --explain E0499`."""
NIL_MAP = "panic: assignment to entry in nil map\n\ngoroutine 1 [running]:\nmain.(*Registry).Add(...)"
PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000"
NOTE = "cloned the vector before the loop instead of borrowing it mutably twice"


# --- the signature ------------------------------------------------------------------------------


def test_signature_masks_what_differs_between_machines() -> None:
    sig = memory.signature(
        "ERROR 2024-03-01 12:00:01 job 7f3a9c2e1b failed at /home/ana/app/src/x.py:12 "
        "for 'billing' (id 3f2504e0-4f89-11d3-9a0c-0305e82c3301) talking to db.internal:5432 "
        "see https://ci.example.com/run/99"
    )
    assert sig is not None
    for token in ("<hex>", "<path>", "<q>", "<id>", "<host>", "<url>", "<n>"):
        assert token in sig, (token, sig)
    for leaked in ("7f3a9c2e1b", "/home/ana", "billing", "3f2504e0", "db.internal", "example.com", "2024"):
        assert leaked not in sig, (leaked, sig)


def test_variants_of_one_error_share_a_signature_and_other_errors_do_not() -> None:
    assert memory.signature(BORROW_1) == memory.signature(BORROW_2)
    assert memory.signature(BORROW_1) != memory.signature(NIL_MAP)
    # the key line, not the code excerpt or the tool's generic trailer
    assert memory.signature(BORROW_2) == "error[e<n>]: cannot borrow <q> as mutable more than once at a time"


def test_signature_of_nothing_is_none_and_it_is_capped() -> None:
    assert memory.signature(None) is None
    assert memory.signature("   \n\n") is None
    assert len(memory.signature("error: " + "word " * 500) or "") <= memory.SIGNATURE_CAP


def test_a_note_is_redacted_collapsed_and_capped() -> None:
    secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
    note = memory.clean_note(f"  set   GITHUB_TOKEN={secret}\n then re-ran  ")
    assert note is not None and secret not in note and "  " not in note and note.startswith("set")
    assert len(memory.clean_note("x" * 1900) or "") == memory.NOTE_CAP
    assert memory.clean_note(" \n ") is None


# --- in the database ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(pg: ConnectionSettings) -> Iterator[ConnectionSettings]:
    with own_database(pg, "devdiag_memory") as settings:
        yield settings


def writer_login(db: ConnectionSettings) -> ConnectionSettings:
    return login(db, "devdiag_writer")


def service(target: ConnectionSettings, tmp_path: Path, tenant: str) -> DevDiag:
    return tenant_service(target, tmp_path, tenant, environment="linux/rust-1.79", seed=3)


@pytest.fixture
def teams(db: ConnectionSettings, tmp_path: Path) -> Iterator[tuple[DevDiag, DevDiag]]:
    """Two tenants' servers writing as the server's own role (row-level security applies)."""
    suffix = uuid.uuid4().hex[:8]
    a = service(writer_login(db), tmp_path, f"team-a-{suffix}")
    b = service(writer_login(db), tmp_path, f"team-b-{suffix}")
    yield a, b
    a.recorder.close()
    b.recorder.close()


def memory_rows(db: ConnectionSettings, tenant: str) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute(
            "select signature, problem_code, runs, resolution, note from devdiag.error_memory "
            "where tenant_id = %s order by signature",
            (tenant,),
        ).fetchall()


def test_a_note_on_an_unknown_error_reaches_the_next_teammate(teams) -> None:
    a, _ = teams
    first = a.diagnose(error_text=BORROW_1)
    assert first.unrecognised and first.similar == []
    with pytest.raises(ToolError, match="record 'manual'"):
        a.record_outcome("fixed", run_id=first.run_id, note=NOTE)
    kept = a.record_outcome("manual", run_id=first.run_id, note=NOTE)
    assert kept.note == NOTE and kept.updated == 0 and "team memory" in kept.notes[0]

    second = a.diagnose(error_text=BORROW_2)
    assert [s.run_id for s in second.similar] == [first.run_id]
    seen = second.similar[0]
    assert (seen.code, seen.outcome, seen.note, seen.similarity, seen.times_seen) == (
        UNRECOGNISED,
        "manual",
        NOTE,
        1.0,
        1,
    )
    assert seen.age == "just now"
    # an error of another family is not offered as similar
    assert a.diagnose(error_text=NIL_MAP).similar == []


def test_known_errors_are_remembered_too_with_their_counts(teams) -> None:
    a, _ = teams
    runs = [a.diagnose(error_text=PORT_ERROR.replace("3000", str(port))) for port in (3000, 5173, 8080)]
    assert runs[1].similar[0].code == "PORT_IN_USE" and runs[1].similar[0].times_seen == 1
    assert runs[2].similar[0].times_seen == 2 and runs[2].similar[0].run_id == runs[1].run_id
    finding = runs[2].findings[0]
    a.record_outcome("failed", finding_id=finding.finding_id, note="the port was held by a zombie docker proxy")
    again = a.diagnose(error_text=PORT_ERROR)
    assert again.similar[0].outcome == "failed"
    assert again.similar[0].note == "the port was held by a zombie docker proxy"
    assert again.similar[0].run_id == runs[2].run_id
    # an outcome without a note later does not hide the note
    a.record_outcome("manual", run_id=again.run_id)
    assert a.diagnose(error_text=PORT_ERROR).similar[0].note == "the port was held by a zombie docker proxy"


def test_the_memory_stops_at_the_tenant_boundary(db, teams) -> None:
    a, b = teams
    mine = a.diagnose(error_text=BORROW_1)
    a.record_outcome("manual", run_id=mine.run_id, note=NOTE)
    theirs = b.diagnose(error_text=BORROW_2)
    assert theirs.similar == []
    with pytest.raises(ToolError, match="unknown run_id"):
        b.record_outcome("manual", run_id=mine.run_id, note="overwritten by another team")
    assert [r[4] for r in memory_rows(db, a.settings.tenant)] == [NOTE]
    assert len(memory_rows(db, b.settings.tenant)) == 1


def test_row_level_security_keeps_the_writer_to_its_tenant(db, teams) -> None:
    a, b = teams
    a.diagnose(error_text=BORROW_1)
    b.diagnose(error_text=NIL_MAP)
    with connect(writer_login(db)) as conn:
        with tenant_transaction(conn, a.settings.tenant):
            seen = conn.execute("select distinct tenant_id from devdiag.error_memory").fetchall()
            assert seen == [(a.settings.tenant,)]
            changed = conn.execute(
                "update devdiag.error_memory set note = 'x' where tenant_id = %s", (b.settings.tenant,)
            ).rowcount
            assert changed == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(conn, a.settings.tenant):
            conn.execute(
                "insert into devdiag.error_memory (tenant_id, signature, runs, first_seen, last_seen, last_run_id) "
                "values (%s, 'planted', 1, now(), now(), gen_random_uuid())",
                (b.settings.tenant,),
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(conn, a.settings.tenant):
            conn.execute("delete from devdiag.error_memory")
        with tenant_transaction(conn, None):  # no tenant set: nothing at all
            assert conn.execute("select count(*) from devdiag.error_memory").fetchone() == (0,)
    with connect(db) as conn:  # notes are the teams' words: Grafana reads views, never this table
        assert conn.execute("select has_table_privilege('grafana', 'devdiag.error_memory', 'select')").fetchone() == (
            False,
        )


def test_a_spooled_note_is_kept_when_it_replays(db, teams) -> None:
    a, _ = teams
    run = a.diagnose(error_text=NIL_MAP)
    a.recorder.spool.append_outcome(
        Outcome(
            resolution="manual",
            at=datetime.now(UTC),
            run_id=run.run_id,
            tenant=a.settings.tenant,
            note="made the map in the constructor",
        )
    )
    with a.recorder.connection() as conn:
        a.recorder.replay(conn)
    assert [r[3:] for r in memory_rows(db, a.settings.tenant)] == [("manual", "made the map in the constructor")]


def test_a_replayed_or_reloaded_run_is_counted_once(db) -> None:
    tenant = f"team-c-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    rows = [
        RunRow(uuid7(at), uuid7(at), at, tenant, "linux", error_msg=f"fatal: widget {i} exploded")
        for i in range(100)
        for at in (now + timedelta(seconds=i),)
    ]
    with connect(db) as conn:
        assert write_runs(conn, rows) == 100
        assert write_runs(conn, rows) == 0
        assert write_runs(conn, rows[:3]) == 0  # the small path too
    assert memory_rows(db, tenant) == [("fatal: widget <n> exploded", None, 100, None, None)]


def test_a_load_remembers_its_runs_grouped(db, tmp_path) -> None:
    from orchestrator.ingest import load_file

    tenant = f"team-d-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC) - timedelta(days=1)
    path = tmp_path / "runs.jsonl"
    lines = []
    for i in range(300):
        at = now + timedelta(seconds=i)
        text = NIL_MAP if i % 3 else BORROW_1
        row = RunRow(uuid7(at), uuid7(at), at, tenant, "linux", UNRECOGNISED, error_msg=text)
        lines.append(json.dumps(row.to_json()))
    path.write_text("\n".join(lines) + "\n")
    with connect(db) as conn:
        result = load_file(conn, str(path))
    assert result.inserted == 300 and result.signatures == 2
    counts = {r[0]: r[2] for r in memory_rows(db, tenant)}
    assert counts == {memory.signature(NIL_MAP): 200, memory.signature(BORROW_1): 100}


def test_catalog_gaps_groups_similar_unrecognised_errors(db, teams, monkeypatch) -> None:
    from orchestrator.cli import main

    a, b = teams
    for text in (BORROW_1, BORROW_2, BORROW_1.replace("items", "queue")):
        a.diagnose(error_text=text)
    run = b.diagnose(error_text=BORROW_1.replace("E0499", "E0502").replace("more than once at a time", "twice"))
    b.record_outcome("manual", run_id=run.run_id, note="split the borrow with split_at_mut")
    b.diagnose(error_text=PORT_ERROR)  # known: not a gap
    monkeypatch.setenv("DEVDIAG_PG_DSN", db.conninfo())
    result = CliRunner().invoke(main, ["catalog", "gaps", "--json", "--min-similarity", "0.5"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    borrow = next(g for g in groups if "cannot borrow" in g["signature"])
    assert borrow["tenants"] >= 2 and borrow["runs"] >= 4 and borrow["signatures"] >= 2
    assert "split the borrow with split_at_mut" in borrow["notes"]
    assert not any("address already in use" in g["signature"] for g in groups)
    table = CliRunner().invoke(main, ["catalog", "gaps"])
    assert table.exit_code == 0 and "cannot borrow" in table.output


def test_retention_forgets_errors_not_seen_since_the_cutoff(db) -> None:
    from orchestrator.retention import run_retention

    tenant = f"team-e-{uuid.uuid4().hex[:8]}"
    old = datetime.now(UTC) - timedelta(days=400)
    with connect(db) as conn:
        write_runs(conn, [RunRow(uuid7(old), uuid7(old), old, tenant, "linux", UNRECOGNISED, error_msg=NIL_MAP)])
    assert len(memory_rows(db, tenant)) == 1
    report = run_retention(db, days=180, quiet=True)
    assert report.memory_deleted >= 1
    assert memory_rows(db, tenant) == []


def test_a_pasted_log_as_a_note_is_refused_and_a_long_note_is_cut(db, teams) -> None:
    a, _ = teams
    run = a.diagnose(error_text=NIL_MAP)
    with pytest.raises(ToolError, match="at most 500"):
        a.record_outcome("manual", run_id=run.run_id, note="x" * 2_001)
    assert [r[3:] for r in memory_rows(db, a.settings.tenant)] == [(None, None)]  # nothing kept
    kept = a.record_outcome("manual", run_id=run.run_id, note="made the map first. " * 40)
    assert kept.note is not None and len(kept.note) == memory.NOTE_CAP and kept.note.endswith("…")


def test_a_teammates_note_is_found_for_other_variants_of_real_errors(teams) -> None:
    """The corpus of benchmarks/memory.py (42 families of errors outside the catalog, 4 variants each):
    with one variant of each noted, the noted run is among the similar three for >= 90% of the other
    variants, and another family's run comes first for <= 5%."""
    import yaml

    a, _ = teams
    corpus = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "memory_families.yaml"
    families = yaml.safe_load(corpus.read_text(encoding="utf-8"))["families"]
    assert len(families) >= 30 and all(len(f["variants"]) >= 3 for f in families)
    family_of, noted = {}, {}
    for family in families:
        run = a.diagnose(error_text=family["variants"][0])
        assert run.unrecognised, family["id"]  # outside the catalog, as the corpus says
        a.record_outcome("manual", run_id=run.run_id, note=family["note"])
        family_of[run.run_id] = family["id"]
        noted[family["id"]] = run.run_id
    hits = wrong_first = asked = 0
    for family in families:
        for variant in family["variants"][1:]:
            result = a.diagnose(error_text=variant)
            family_of[result.run_id] = family["id"]
            ids = [s.run_id for s in result.similar]
            asked += 1
            hits += noted[family["id"]] in ids
            wrong_first += bool(ids) and family_of.get(ids[0]) != family["id"]
            if noted[family["id"]] in ids:
                assert result.similar[ids.index(noted[family["id"]])].note == family["note"]
    assert hits / asked >= 0.90, (hits, asked)
    assert wrong_first / asked <= 0.05, (wrong_first, asked)
