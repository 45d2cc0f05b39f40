"""The server's token check, `mcp_devdiag.http.DevDiagTokenVerifier`, as the writer role on the real database.

The tenant comes from the token; a revocation applies at the very next call; the token's last use is
noted in the database at most once a minute per token (not a write per call); a token verified
shortly before keeps working only while the database is away, and only for the grace period, in every
worker (the workers share what they verified).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from serve_helpers import new_token

from devdiag_db import embedded, tokens
from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from mcp_devdiag.http import NOTE_USE_EVERY_S, DevDiagTokenVerifier, token_key
from mcp_devdiag.recorder import Recorder
from mcp_devdiag.server import TENANT_CLAIM
from mcp_devdiag.settings import DatabaseTarget
from mcp_devdiag.spool import Spool
from mcp_devdiag.token_grace import GraceFiles
from orchestrator.secrets import role_password


@pytest.fixture
def recorder(pg: ConnectionSettings, tmp_path) -> Iterator[Recorder]:
    writer = embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer"))
    recorder = Recorder(DatabaseTarget(writer), Spool(tmp_path / "spool", 1 << 20))
    yield recorder
    recorder.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenant_of(access) -> str | None:
    return None if access is None else access.claims[TENANT_CLAIM]


def last_used(pg: ConnectionSettings, tenant: str):
    with connect(pg) as conn:
        return conn.execute("select last_used_at from devdiag.api_token where tenant_id = %s", (tenant,)).fetchone()[0]


def test_last_use_is_noted_once_a_minute_not_on_every_call(pg, recorder, monkeypatch):
    tenant = f"ver-{uuid.uuid4().hex[:8]}"
    token = new_token(pg, tenant)
    clock = Clock()
    verifier = DevDiagTokenVerifier(recorder, clock=clock)
    noted: list[bool] = []
    real_verify = tokens.verify

    def spy(conn, token, **kwargs):  # type: ignore[no-untyped-def]
        noted.append(kwargs.get("note_use", True))
        return real_verify(conn, token, **kwargs)

    monkeypatch.setattr(tokens, "verify", spy)
    assert last_used(pg, tenant) is None
    for _ in range(3):
        assert tenant_of(verifier.verify_sync(token)) == tenant
    assert last_used(pg, tenant) is not None  # the first call noted it
    clock.now += NOTE_USE_EVERY_S + 1
    assert tenant_of(verifier.verify_sync(token)) == tenant
    assert noted == [True, False, False, True]


def test_a_revoked_token_is_refused_at_the_next_call_and_leaves_the_grace_cache(pg, recorder):
    tenant = f"ver-{uuid.uuid4().hex[:8]}"
    token = new_token(pg, tenant)
    verifier = DevDiagTokenVerifier(recorder, clock=Clock())
    assert tenant_of(verifier.verify_sync(token)) == tenant
    with connect(pg) as conn:
        assert tokens.revoke(conn, token.split("_")[1], tenant)
    assert verifier.verify_sync(token) is None
    recorder._trip("database stopped for the test")  # away now: the cache must not bring it back
    assert verifier.verify_sync(token) is None


def test_the_grace_cache_serves_only_while_the_database_is_away_and_only_for_its_period(pg, recorder):
    tenant = f"ver-{uuid.uuid4().hex[:8]}"
    token, other = new_token(pg, tenant), new_token(pg, tenant)
    clock = Clock()
    verifier = DevDiagTokenVerifier(recorder, grace_s=600, clock=clock)
    assert tenant_of(verifier.verify_sync(token)) == tenant
    recorder._trip("database stopped for the test")
    clock.now += 599
    assert tenant_of(verifier.verify_sync(token)) == tenant  # verified 599 s ago: still served
    assert verifier.verify_sync(other) is None  # never verified: not known while away
    clock.now += 2
    assert verifier.verify_sync(token) is None  # past the grace period


def test_a_token_verified_by_one_worker_is_served_by_another_while_the_database_is_away(pg, recorder, tmp_path):
    """Connections move between workers (the keep-alive limit, a proxy's pool): during an outage a
    worker that never saw a token must know it from the one that did, through the shared records, for
    the grace period only, and not once the database has refused it."""
    tenant = f"ver-{uuid.uuid4().hex[:8]}"
    token, revoked = new_token(pg, tenant), new_token(pg, tenant)
    shared = GraceFiles(tmp_path / "tokens")
    clock = Clock()
    one = DevDiagTokenVerifier(recorder, grace_s=600, clock=clock, shared=shared, wall_clock=clock)
    other = DevDiagTokenVerifier(recorder, grace_s=600, clock=clock, shared=shared, wall_clock=clock)
    assert tenant_of(one.verify_sync(token)) == tenant and tenant_of(one.verify_sync(revoked)) == tenant
    record = (tmp_path / "tokens" / token_key(token).hex()).read_text()
    assert token not in record and token.split("_")[-1] not in record  # the hash names it; no secret inside
    with connect(pg) as conn:
        assert tokens.revoke(conn, revoked.split("_")[1], tenant)
    assert other.verify_sync(revoked) is None  # the database refuses it: its record goes
    recorder._trip("database stopped for the test")
    clock.now += 599
    assert tenant_of(other.verify_sync(token)) == tenant  # verified by the other worker 599 s ago
    assert other.verify_sync(revoked) is None
    clock.now += 2
    assert other.verify_sync(token) is None  # past the grace period
    (tmp_path / "tokens" / token_key(token).hex()).write_text("{not json")
    clock.now -= 2
    assert other.verify_sync(token) is None  # a damaged record is a miss, not an error
