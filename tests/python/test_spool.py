"""A writer that loses nothing: the real database stopped mid-stream, refused credentials, a bounded spool."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import multiprocessing
import os
import random
import stat
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from malformed_lines import malformed_lines
from mcp.client import Client
from mcp.server.mcpserver.exceptions import ToolError

from devdiag_db import embedded
from devdiag_db.config import ConnectionSettings
from mcp_devdiag.ids import uuid7
from mcp_devdiag.recorder import Recorder
from mcp_devdiag.server import build_server
from mcp_devdiag.settings import DatabaseTarget, ServerSettings
from mcp_devdiag.spool import PENDING, REJECTED, Outcome, Spool, read_lines
from mcp_devdiag.writer import RunRow
from orchestrator.ingest import flush, load_file
from orchestrator.secrets import role_password

ERRORS = [
    "Error: listen EADDRINUSE: address already in use :::3000",
    "fatal: not a git repository (or any of the parent directories): .git",
    "ModuleNotFoundError: No module named 'requests'",
]


def settings(tmp_path: Path, database: DatabaseTarget, **extra) -> ServerSettings:
    return ServerSettings(
        tenant=f"spool-{uuid.uuid4().hex[:8]}",
        environment="linux/python-3.12",
        database=database,
        spool_dir=tmp_path / "spool",
        connect_timeout_s=2.0,
        **extra,
    )


def stored(pg: ConnectionSettings, run_ids: list[str]) -> list[tuple]:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute(
            "select run_id::text, id, resolution from devdiag.diag_run where run_id = any(%s::uuid[]) order by id",
            (run_ids,),
        ).fetchall()


def run_flush(spool_dir: Path) -> dict:
    result = CliRunner().invoke(flush, ["--json"], env={"DEVDIAG_SPOOL_DIR": str(spool_dir)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def row(ts: datetime | None = None, *, code: str | None = "PORT_IN_USE") -> RunRow:
    ts = ts or datetime.now(UTC)
    return RunRow(
        id=uuid7(ts),
        run_id=uuid7(ts),
        ts=ts,
        tenant_id="spool-unit",
        environment="linux/python-3.12",
        problem_code=code,
        fix_suggestion="port-kill-old-process" if code else None,
        confidence=0.8 if code else None,
    )


def test_database_stopped_mid_stream_loses_nothing_and_duplicates_nothing(pg, tmp_path):
    server, app = build_server(settings(tmp_path, DatabaseTarget()), rng=random.Random(3))
    calls: list[dict] = []
    latencies: dict[str, list[float]] = {"up": [], "down": []}
    phase = {"now": "up"}

    def outage() -> None:
        while len(calls) < 10:
            time.sleep(0.01)
        phase["now"] = "stopping"
        assert embedded.stop()
        phase["now"] = "down"
        while len(calls) < 28:
            time.sleep(0.01)
        phase["now"] = "starting"
        embedded.start()
        phase["now"] = "up again"

    async def stream() -> list[dict]:
        outcomes = []
        async with Client(server) as client:
            for i in range(45):
                started = time.perf_counter()
                result = await client.call_tool("diagnose", {"error_text": ERRORS[i % len(ERRORS)]})
                assert not result.is_error, result.content
                elapsed = time.perf_counter() - started
                data = result.structured_content
                if phase["now"] in {"up", "down"}:
                    latencies[phase["now"]].append(elapsed)
                calls.append(data)
                if i % 4 == 0:  # outcomes too, some of them while the database is away
                    done = await client.call_tool("record_outcome", {"run_id": data["run_id"], "resolution": "failed"})
                    assert not done.is_error, done.content
                    outcomes.append((data["run_id"], done.structured_content["recorded"]))
                await asyncio.sleep(0.02)
        return outcomes

    stopper = threading.Thread(target=outage)
    stopper.start()
    try:
        outcomes = asyncio.run(stream())
    finally:
        stopper.join(timeout=120)
        embedded.start()  # whatever happened, the session's database runs again
        app.recorder.close()

    destinations = [c["recorded"] for c in calls]
    assert "spool" in destinations and "database" in destinations and "dropped" not in destinations
    assert "spool" in {where for _, where in outcomes}
    # while the database was away the tool still answered, and quickly (the breaker skips the connect)
    assert latencies["down"] and max(latencies["down"]) < 3.0
    assert sorted(latencies["down"])[len(latencies["down"]) // 2] < 0.5

    report = run_flush(tmp_path / "spool")
    assert report["left_bytes"] == 0 and not report["rejected"], report["rejected"]
    run_ids = [c["run_id"] for c in calls]
    rows = stored(pg, run_ids)
    assert sorted(r[0] for r in rows) == sorted(run_ids), "every run present exactly once"
    assert len({r[1] for r in rows}) == len(rows)
    resolved = {r[0] for r in rows if r[2] == "failed"}
    assert resolved == {run_id for run_id, _ in outcomes}, "every outcome applied, spooled or not"
    # flushing again finds nothing and changes nothing
    again = run_flush(tmp_path / "spool")
    assert again["rows"] == 0 and stored(pg, run_ids) == rows


def test_refused_credentials_spool_and_the_next_good_write_replays(pg, tmp_path):
    wrong = DatabaseTarget(embedded.tcp_settings("devdiag_writer", "not-the-password-42"))
    server, app = build_server(settings(tmp_path, wrong))

    async def once(srv) -> dict:
        async with Client(srv) as client:
            result = await client.call_tool("diagnose", {"error_text": ERRORS[0]})
            assert not result.is_error, result.content
            return result.structured_content

    try:
        refused = asyncio.run(once(server))
    finally:
        app.recorder.close()
    assert refused["recorded"] == "spool"
    assert any("refused the credentials" in n for n in refused["notes"])
    assert "not-the-password-42" not in json.dumps(refused)
    assert refused["findings"][0]["fixes"][0]["source"] == "catalog"
    assert stored(pg, [refused["run_id"]]) == []

    right = DatabaseTarget(embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer")))
    server, app = build_server(settings(tmp_path, right))
    try:
        accepted = asyncio.run(once(server))
    finally:
        app.recorder.close()
    assert accepted["recorded"] == "database", accepted["notes"]
    rows = stored(pg, [refused["run_id"], accepted["run_id"]])
    assert sorted({r[0] for r in rows}) == sorted([refused["run_id"], accepted["run_id"]])
    assert Spool(tmp_path / "spool").size_bytes() == 0


def test_spool_is_bounded_with_a_clear_warning(tmp_path, caplog):
    nowhere = DatabaseTarget(ConnectionSettings({"host": "127.0.0.1", "port": "1", "dbname": "devdiag", "user": "x"}))
    spool = Spool(tmp_path / "spool", max_bytes=1500)
    recorder = Recorder(nowhere, spool, connect_timeout=1.0)
    server, _ = build_server(settings(tmp_path, nowhere), recorder=recorder)

    async def stream() -> list[dict]:
        async with Client(server) as client:
            return [
                (await client.call_tool("diagnose", {"error_text": ERRORS[0]})).structured_content for _ in range(8)
            ]

    results = asyncio.run(stream())
    where = [r["recorded"] for r in results]
    assert where[0] == "spool" and where[-1] == "dropped"
    dropped = results[-1]
    assert any("is full" in n and "DEVDIAG_SPOOL_MAX_MB" in n for n in dropped["notes"])
    assert spool.size_bytes() <= 1500
    assert any("is full" in r.getMessage() for r in caplog.records)


def test_replay_skips_torn_lines_keeps_them_and_is_idempotent(pg, tmp_path):
    spool = Spool(tmp_path / "spool")
    first, second = row(), row()
    spool.append_rows([first])
    with open(tmp_path / "spool" / PENDING, "a") as fh:
        fh.write(
            '{"id": "0190',
        )  # a crash in the middle of a line
    spool.append_rows([second])
    spool.append_outcome(Outcome(resolution="fixed", at=datetime.now(UTC), run_id=str(first.run_id)))
    saved = (tmp_path / "spool" / PENDING).read_text()
    assert saved.count("\n") == 4  # the torn line was closed before the next record

    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        report = spool.replay(conn)
        assert (report.rows, report.rows_inserted, report.outcomes_applied) == (2, 2, 1)
        assert len(report.rejected) == 1 and "not JSON" in report.rejected[0]
        assert spool.size_bytes() == 0
        assert '"0190' in (tmp_path / "spool" / REJECTED).read_text()
        # the same lines again, as `devdiag load` would read a copied spool: nothing new
        copy = tmp_path / "copy.jsonl"
        copy.write_text(saved)
        result = load_file(conn, str(copy))
        assert (result.rows, result.inserted, len(result.bad_lines)) == (2, 0, 1)
    rows = stored(pg, [str(first.run_id), str(second.run_id)])
    assert [r[2] for r in rows] == ["fixed", None]


def test_appends_racing_a_replay_are_all_kept(pg, tmp_path):
    spool = Spool(tmp_path / "spool")
    written: list[RunRow] = []
    stop = threading.Event()

    def append(n: int) -> None:
        for _ in range(n):
            r = row()
            spool.append_rows([r])
            written.append(r)

    def replay() -> None:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            while not stop.is_set():
                spool.replay(conn)

    replayer = threading.Thread(target=replay)
    replayer.start()
    appenders = [threading.Thread(target=append, args=(40,)) for _ in range(4)]
    for t in appenders:
        t.start()
    for t in appenders:
        t.join()
    stop.set()
    replayer.join()
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        spool.replay(conn)
    rows = stored(pg, [str(r.run_id) for r in written])
    assert len(rows) == len(written) == 160
    assert spool.size_bytes() == 0


def _claim_and_finish(directory: str, stop) -> None:
    """Another worker's replays, as fast as they come: a claimed file appears, and is gone when replayed."""
    for i in itertools.count():
        if stop.is_set():
            return
        path = Path(directory) / f"claimed-{i % 4:04d}.jsonl"
        path.write_bytes(b"{}\n")
        path.unlink()


def test_asking_whether_anything_is_pending_survives_another_workers_replay(tmp_path):
    """`pending()` (asked before every write) lists the spool's files, then reads their sizes; a file
    another process finished replaying in between is not pending, and asking must not fail: it raised
    FileNotFoundError, and the tool call with it, in `benchmarks/serve.py --fault db-crash`."""
    spool = Spool(tmp_path / "spool")
    spool.directory.mkdir()
    stop = multiprocessing.Event()
    other = multiprocessing.Process(target=_claim_and_finish, args=(str(spool.directory), stop))
    other.start()
    try:
        deadline = time.monotonic() + 1.5
        asked = 0
        while time.monotonic() < deadline:
            spool.pending()
            asked += 1
    finally:
        stop.set()
        other.join(timeout=10)
    assert asked > 1000


@pytest.mark.parametrize("bad", ["", "   "])
def test_flush_with_an_empty_spool_says_so(tmp_path, bad):
    (tmp_path / "spool").mkdir()
    if bad:
        (tmp_path / "spool" / PENDING).write_text("")
    result = CliRunner().invoke(flush, [], env={"DEVDIAG_SPOOL_DIR": str(tmp_path / "spool")})
    assert result.exit_code == 0 and "nothing to replay" in result.output


# --- hostile lines: each one rejected alone, never fatal ------------------------------------------


def poisoned_spool(directory: Path) -> tuple[list[RunRow], list[int], Outcome]:
    """pending.jsonl with a good row before and after each malformed line, and an outcome at the end;
    returns the good rows, the line numbers of the bad lines, the outcome."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    good: list[RunRow] = [row()]
    lines = [json.dumps(good[0].to_json()).encode()]
    bad_numbers = []
    for _, raw in malformed_lines(good[0].to_json()):
        lines.append(raw)
        bad_numbers.append(len(lines))
        good.append(row())
        lines.append(json.dumps(good[-1].to_json()).encode())
    outcome = Outcome(resolution="failed", at=datetime.now(UTC), run_id=str(good[0].run_id))
    lines.append(json.dumps(outcome.to_json()).encode())
    fd = os.open(directory / PENDING, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))
    return good, bad_numbers, outcome


def test_no_malformed_line_is_fatal_to_flush(pg, tmp_path):
    spool_dir = tmp_path / "spool"
    good, bad_numbers, _ = poisoned_spool(spool_dir)
    report = run_flush(spool_dir)
    rejected = {int(entry.split(":")[1]): entry for entry in report["rejected"]}
    assert sorted(rejected) == bad_numbers, report["rejected"]
    assert all(entry.split(": ", 1)[1] for entry in rejected.values()), "each with a reason"
    assert "nested deeper than" in rejected[bad_numbers[0]]
    assert "longer than 1,048,576" in rejected[bad_numbers[-1]]
    assert report["left_bytes"] == 0 and report["outcomes_applied"] == 1
    rows = stored(pg, [str(r.run_id) for r in good])
    assert len(rows) == len(good), "every good line around the bad ones loaded"
    assert [r[2] for r in rows if r[0] == str(good[0].run_id)] == ["failed"]
    kept = [json.loads(line) for line in (spool_dir / REJECTED).read_text().splitlines()]
    assert sorted(int(k["where"].split(":")[1]) for k in kept) == bad_numbers
    gigantic = next(k for k in kept if int(k["where"].split(":")[1]) == bad_numbers[-1])
    assert 60_000 < len(gigantic["line"]) < 70_000, "a gigantic line is kept cut"


def test_a_poisoned_spool_does_not_stop_diagnose(pg, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / PENDING).write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n" + b"9" * 5_000 + b"\n")
    right = DatabaseTarget(embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer")))
    server, app = build_server(settings(tmp_path, right))

    async def twice() -> list[dict]:
        async with Client(server) as client:
            return [(await client.call_tool("diagnose", {"error_text": e})).structured_content for e in ERRORS[:2]]

    try:
        results = asyncio.run(twice())
    finally:
        app.recorder.close()
    assert [r["recorded"] for r in results] == ["database", "database"], results[0]["notes"]
    reasons = [json.loads(line)["reason"] for line in (spool_dir / REJECTED).read_text().splitlines()]
    assert reasons == ["JSON nested deeper than 8 levels", "an integer with more than 4,300 digits"]


def test_spool_files_are_private_whatever_the_umask(pg, tmp_path):
    spool = Spool(tmp_path / "spool")
    old_umask = os.umask(0)
    try:
        spool.append_rows([row()])
        with open(tmp_path / "spool" / PENDING, "a") as fh:
            fh.write("{torn\n")
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            spool.replay(conn)
        rejected = tmp_path / "spool" / REJECTED
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "spool").iterdir()}
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert rejected.name in modes and set(modes.values()) == {0o600}, modes
        rejected.chmod(0o644)  # as an older version left it
        spool.append_rows([row()])
        with open(tmp_path / "spool" / PENDING, "a") as fh:
            fh.write("{torn\n")
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            spool.replay(conn)
        assert stat.S_IMODE(rejected.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_read_lines_bounds_a_line_and_keeps_the_next():
    fh = io.BytesIO(b"a\n" + b"x" * 100 + b"\nb\nlast")
    assert list(read_lines(fh, max_bytes=10)) == [
        (1, b"a\n", None),
        (2, b"x" * 10, 100),
        (3, b"b\n", None),
        (4, b"last", None),
    ]


def test_an_outcome_for_a_run_still_in_the_spool_is_queued_behind_it_not_refused(pg, tmp_path, monkeypatch):
    """With two workers, one may be replaying the spool that holds a run (rows not yet committed) when
    the other gets the run's outcome: that outcome is queued behind the run, not answered 'unknown'."""
    nowhere = DatabaseTarget(ConnectionSettings({"host": "127.0.0.1", "port": "1", "dbname": "devdiag", "user": "x"}))
    away_settings = settings(tmp_path, nowhere)
    _, away = build_server(away_settings, rng=random.Random(5))
    run = away.diagnose(error_text="ModuleNotFoundError: No module named 'requests'")
    assert run.recorded == "spool"
    away.recorder.close()

    _, back = build_server(replace(away_settings, database=DatabaseTarget()), rng=random.Random(5))
    try:
        # The other worker holds the spool: this one's replay finds nothing to do.
        monkeypatch.setattr(back.recorder, "replay", lambda conn: None)
        queued = back.record_outcome("fixed", run_id=run.run_id)
        assert queued.recorded == "spool" and queued.updated == 0
        monkeypatch.undo()
        with back.recorder.connection() as conn:
            back.recorder.replay(conn)
        assert [r[2] for r in stored(pg, [run.run_id])] == ["fixed"]
        with pytest.raises(ToolError, match="unknown run_id"):  # an empty spool: an unknown run is refused
            back.record_outcome("fixed", run_id=str(uuid7(datetime.now(UTC))))
    finally:
        back.recorder.close()
