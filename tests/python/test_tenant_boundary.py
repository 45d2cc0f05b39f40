"""A server configured for one tenant never reads or changes another tenant's runs, spooled or not."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from devdiag_db.config import ConnectionSettings
from mcp_devdiag.service import DevDiag
from mcp_devdiag.spool import Outcome
from tests.python.conftest import tenant_service

PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000"


def service(pg: ConnectionSettings, tmp_path: Path, tenant: str) -> DevDiag:
    return tenant_service(pg, tmp_path, tenant)


def rows(pg: ConnectionSettings, run_id: str) -> list[tuple]:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute(
            "select id, tenant_id, resolution, resolved_at from devdiag.diag_run where run_id = %s order by id",
            (run_id,),
        ).fetchall()


@pytest.fixture
def two_tenants(pg, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    a, b = service(pg, tmp_path, f"team-a-{suffix}"), service(pg, tmp_path, f"team-b-{suffix}")
    yield a, b
    a.recorder.close()
    b.recorder.close()


@pytest.mark.parametrize("by", ["run_id", "finding_id"])
def test_an_outcome_for_another_tenants_run_is_unknown_and_changes_nothing(pg, two_tenants, by):
    a, b = two_tenants
    theirs = b.diagnose(error_text=PORT_ERROR)
    before = rows(pg, theirs.run_id)
    target = theirs.run_id if by == "run_id" else theirs.findings[0].finding_id
    with pytest.raises(ToolError, match=f"unknown {by}"):
        a.record_outcome("fixed", **{by: target})
    assert rows(pg, theirs.run_id) == before
    mine = b.record_outcome("manual", **{by: target})  # the owner still can
    assert mine.updated == 1


def test_a_spooled_outcome_replays_only_onto_its_own_tenants_runs(pg, two_tenants, tmp_path):
    a, b = two_tenants
    theirs = b.diagnose(error_text=PORT_ERROR)
    before = rows(pg, theirs.run_id)
    # What tenant A's server spools while the database is away, aimed at tenant B's run.
    a.recorder.spool.append_outcome(
        Outcome(resolution="failed", at=datetime.now(UTC), run_id=theirs.run_id, tenant=a.settings.tenant)
    )
    with a.recorder.connection() as conn:
        report = a.recorder.replay(conn)
    assert report is not None and report.outcomes_applied == 0
    assert rows(pg, theirs.run_id) == before
    # The same outcome spooled by tenant B's own server applies.
    b.recorder.spool.append_outcome(
        Outcome(resolution="failed", at=datetime.now(UTC), run_id=theirs.run_id, tenant=b.settings.tenant)
    )
    with b.recorder.connection() as conn:
        assert b.recorder.replay(conn).outcomes_applied == 1
    assert {r[2] for r in rows(pg, theirs.run_id)} == {"failed"}


def test_the_spool_line_keeps_the_tenant():
    outcome = Outcome(resolution="fixed", at=datetime.now(UTC), run_id=str(uuid.uuid4()), tenant="team-web")
    assert Outcome.from_json(outcome.to_json()) == outcome
    with pytest.raises(ValueError, match="tenant"):
        Outcome.from_json({"outcome": {**outcome.to_json()["outcome"], "tenant": {"not": "text"}}})
