"""`devdiag serve` as a real subprocess on 127.0.0.1, on the session's embedded PostgreSQL as devdiag_writer:
the SDK's streamable HTTP client and the MCP inspector CLI, tokens (401s), tenants, limits, refusals."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from datetime import timedelta

import httpx2
import psycopg
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from serve_helpers import (
    DOCKER_ERROR,
    HEADERS,
    PORT_ERROR,
    ROOT,
    SERVE,
    call,
    listening,
    new_token,
    rows_by_run,
    serve,
)

from devdiag_db import tokens
from orchestrator import dbt

# uvicorn re-raises SIGTERM once its graceful shutdown is done: a clean exit "by SIGTERM", as systemd counts it.
CLEAN_EXIT = (0, -signal.SIGTERM)
TOOLS = {"diagnose", "record_outcome", "suggest_fixes", "list_problems", "recent_problems"}


@pytest.fixture(scope="module")
def served(pg, tmp_path_factory):
    server = serve(tmp_path_factory.mktemp("serve"), "--rate-limit", "0").start()
    yield server
    assert server.stop() in CLEAN_EXIT, server.log.read_text()[-2000:]


@pytest.fixture(scope="module")
def tenant_a() -> str:
    return f"team-a-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tenant_b() -> str:
    return f"team-b-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def token_a(pg, tenant_a) -> str:
    return new_token(pg, tenant_a)


@pytest.fixture(scope="module")
def token_b(pg, tenant_b) -> str:
    return new_token(pg, tenant_b)


def test_the_sdk_client_lists_the_tools_and_runs_diagnose_outcome_suggest(served, pg, tenant_a, token_a):
    async def session() -> tuple[set[str], dict, dict, dict]:
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token_a}"}, timeout=30) as http,
            Client(streamable_http_client(served.url, http_client=http)) as client,
        ):
            names = {tool.name for tool in (await client.list_tools()).tools}
            diagnosed = await client.call_tool("diagnose", {"error_text": PORT_ERROR})
            run_id = diagnosed.structured_content["run_id"]
            note = "a stale dev server held the port: killed it"
            outcome = await client.call_tool("record_outcome", {"run_id": run_id, "resolution": "fixed", "note": note})
            suggested = await client.call_tool("suggest_fixes", {"problem_code": "PORT_IN_USE"})
            again = await client.call_tool("diagnose", {"error_text": PORT_ERROR.replace("3000", "8080")})
            return (
                names,
                diagnosed.structured_content,
                outcome.structured_content,
                suggested.structured_content,
                again.structured_content,
            )

    names, diagnosed, outcome, suggested, again = asyncio.run(session())
    # the team memory: the next similar error brings the run, its outcome and its note (schema-checked by the client)
    remembered = next(s for s in again["similar"] if s["run_id"] == diagnosed["run_id"])
    assert (remembered["code"], remembered["outcome"]) == ("PORT_IN_USE", "fixed")
    assert remembered["note"] == outcome["note"] == "a stale dev server held the port: killed it"
    assert names == TOOLS
    assert diagnosed["tenant"] == tenant_a and diagnosed["recorded"] == "database"
    assert [f["code"] for f in diagnosed["findings"]] == ["PORT_IN_USE"]
    assert outcome["updated"] == 1
    assert suggested["code"] == "PORT_IN_USE" and suggested["fixes"]
    fixed = diagnosed["findings"][0]["suggested_fix"]
    assert next(f for f in suggested["fixes"] if f["id"] == fixed)["outcomes"] >= 1  # this tenant's outcome counted
    assert rows_by_run(pg, [diagnosed["run_id"]]) == {diagnosed["run_id"]: [(tenant_a, "fixed")]}


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed: the inspector CLI needs it")
def test_the_mcp_inspector_cli_over_http(served, token_a):
    base = ["npx", "-y", "@modelcontextprotocol/inspector@2", "--cli", served.url, "--transport", "http"]
    auth = ["--header", f"Authorization: Bearer {token_a}"]
    listed = subprocess.run([*base, "--method", "tools/list", *auth], capture_output=True, text=True, timeout=240)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert {tool["name"] for tool in json.loads(listed.stdout)["tools"]} == TOOLS
    called = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "diagnose", "--tool-arg", f"error_text={PORT_ERROR}", *auth],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert called.returncode == 0, called.stderr[-2000:]
    assert json.loads(called.stdout)["structuredContent"]["findings"][0]["code"] == "PORT_IN_USE"
    refused = subprocess.run(
        [*base, "--method", "tools/list", "--header", "Authorization: Bearer ddg_nottoken_x"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert refused.returncode != 0 and "diagnose" not in refused.stdout


def test_every_bad_token_gets_the_same_401_with_www_authenticate(served, pg, tenant_a, token_a):
    key_id = tokens.TOKEN_RE.match(token_a).group(1)
    wrong_secret = f"ddg_{key_id}_{'A' * tokens.SECRET_LENGTH}"
    unknown, _, _ = tokens.new_token()
    expired = new_token(pg, tenant_a, expires_in=timedelta(hours=1))
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:  # as if an hour had passed
        conn.execute(
            "update devdiag.api_token set expires_at = now() - interval '1 second' where key_id = %s",
            (tokens.TOKEN_RE.match(expired).group(1),),
        )
    revoked = new_token(pg, tenant_a)
    cases = {
        "no header": None,
        "not bearer": f"Basic {token_a}",
        "bare bearer": "Bearer",
        "malformed": "Bearer ddg_short",
        "unknown": f"Bearer {unknown}",
        "wrong secret": f"Bearer {wrong_secret}",
        "expired": f"Bearer {expired}",
    }
    answers = {}
    with httpx2.Client(timeout=10) as client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        status, _ = call(client, served.url, revoked, "list_problems", {})
        assert status == 200  # valid until revoked ...
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            assert tokens.revoke(conn, tokens.TOKEN_RE.match(revoked).group(1))
        cases["revoked"] = f"Bearer {revoked}"  # ... and refused on the very next call
        for case, header in cases.items():
            headers = {**HEADERS, **({"authorization": header} if header else {})}
            response = client.post(served.url, json=body, headers=headers)
            assert response.status_code == 401, case
            assert response.headers["www-authenticate"].startswith("Bearer "), case
            answers[case] = (response.headers["www-authenticate"], response.text)
    assert len(set(answers.values())) == 1, answers  # nothing tells a tenant or a token apart


def test_a_token_reaches_only_its_own_tenant(served, pg, tenant_a, tenant_b, token_a, token_b):
    with httpx2.Client(timeout=30) as client:
        status, b_run = call(client, served.url, token_b, "diagnose", {"error_text": DOCKER_ERROR})
        assert status == 200 and b_run["tenant"] == tenant_b
        # A cannot record an outcome on B's run, nor on one of its findings: "unknown", as for a run that never was.
        _, on_run = call(
            client, served.url, token_a, "record_outcome", {"run_id": b_run["run_id"], "resolution": "fixed"}
        )
        finding = b_run["findings"][0]["finding_id"]
        _, on_finding = call(
            client, served.url, token_a, "record_outcome", {"finding_id": finding, "resolution": "failed"}
        )
        never = str(uuid.uuid4())
        _, on_nothing = call(client, served.url, token_a, "record_outcome", {"run_id": never, "resolution": "fixed"})
        assert "error" in on_run and "error" in on_finding
        assert on_run["error"].replace(b_run["run_id"], "X") == on_nothing["error"].replace(never, "X")
        # An extra tenant argument does not move A's run to B.
        _, a_run = call(client, served.url, token_a, "diagnose", {"error_text": PORT_ERROR, "tenant": tenant_b})
        assert a_run.get("tenant", tenant_a) == tenant_a
        # recent_problems counts as of the last build: build the counts (other tests may have built them)
        dbt.invoke(pg, ["build", "--select", "+v_problem_counts"])
        _, recent = call(client, served.url, token_a, "recent_problems", {"days": 1, "limit": 100})
        _, recent_b = call(client, served.url, token_b, "recent_problems", {"days": 1, "limit": 100})
    stored = rows_by_run(pg, [b_run["run_id"], *([a_run["run_id"]] if "run_id" in a_run else [])])
    assert stored[b_run["run_id"]] == [(tenant_b, None)]  # B's row untouched
    if "run_id" in a_run:
        assert stored[a_run["run_id"]] == [(tenant_a, None)]
    assert "DOCKER_SOCKET_PERMISSION" not in {p["code"] for p in recent["problems"]}
    # and the team memory: A diagnosing B's error is offered none of B's runs
    with httpx2.Client(timeout=30) as client:
        _, a_docker = call(client, served.url, token_a, "diagnose", {"error_text": DOCKER_ERROR})
    assert b_run["run_id"] not in {s["run_id"] for s in a_docker["similar"]}
    assert "DOCKER_SOCKET_PERMISSION" in {p["code"] for p in recent_b["problems"]}


def test_healthz_reports_the_version_and_schema(served):
    response = httpx2.get(f"http://127.0.0.1:{served.port}/healthz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"]
    assert body["schema"] == {"diag_run": True, "api_token": True, "row_security": True}


def test_a_keep_alive_connection_is_renewed_after_its_limit_of_requests(served):
    """The last answer a connection gets (the 50th) says `Connection: close` and the server closes it: the client's
    next connection may go to a less busy worker (KeepAliveLimit). Each connection counts its own."""
    from mcp_devdiag.http import KEEPALIVE_REQUESTS

    def get(conn: socket.socket) -> str:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{served.port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            assert chunk, "the server closed the connection before answering"
            head += chunk
        raw, _, body = head.partition(b"\r\n\r\n")
        headers = raw.decode("latin-1").lower()
        length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
        while len(body) < length:
            body += conn.recv(65536)
        assert headers.startswith("http/1.1 200")
        return headers

    address = ("127.0.0.1", served.port)
    with (
        socket.create_connection(address, timeout=10) as first,
        socket.create_connection(address, timeout=10) as second,
    ):
        for _ in range(KEEPALIVE_REQUESTS - 1):
            assert "connection: close" not in get(first)
        assert "connection: close" not in get(second)  # its own count: 1
        assert "connection: close" in get(first)
        assert first.recv(1) == b""  # closed by the server
        assert "connection: close" not in get(second)


def test_a_large_body_gets_413(served, token_a):
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "diagnose"}, "pad": "x" * 400_000}
    headers = {**HEADERS, "authorization": f"Bearer {token_a}"}
    response = httpx2.post(served.url, json=big, headers=headers, timeout=10)
    assert response.status_code == 413


def test_no_token_reaches_the_log(served, token_a, token_b):
    text = served.log.read_text()
    for token in (token_a, token_b):
        assert token not in text and token.split("_")[2] not in text


# --- refusals before the port opens ---------------------------------------------------------------


def _refused(tmp_path, *args: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    server = serve(tmp_path, *args, env=env)
    result = subprocess.run(server.args, env=server.env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    assert not listening(server.port)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr  # click's usage hint aside
    return errors[0], server.port


def test_a_superuser_or_owner_role_is_refused(pg, tmp_path):
    # The owner over the socket: PostgreSQL's superuser, which row-level security does not bind.
    line, _ = _refused(tmp_path / "su", env={"DEVDIAG_PG_DSN": pg.url()})
    assert "superuser" in line and "row-level security" in line
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("drop role if exists devdiag_test_owner")
        conn.execute("create role devdiag_test_owner login")
        owner = conn.execute("select relowner::regrole::text from pg_class where oid = 'devdiag.diag_run'::regclass")
        table_owner = owner.fetchone()[0]
        conn.execute(f"grant {table_owner} to devdiag_test_owner")  # a member of the owner acts as the owner
    try:
        dsn = pg.url().replace("postgresql://postgres@", "postgresql://devdiag_test_owner@")
        line, _ = _refused(tmp_path / "owner", env={"DEVDIAG_PG_DSN": dsn})
        assert "owns devdiag.diag_run" in line
    finally:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            conn.execute("drop role if exists devdiag_test_owner")


def test_bad_options_and_a_taken_port_are_refused_in_one_line(pg, tmp_path):
    line, _ = _refused(tmp_path / "rate", "--rate-limit", "lots")
    assert "rate limit" in line and "600/min" in line
    line, _ = _refused(tmp_path / "env", env={"DEVDIAG_TOKEN_GRACE": "-3"})
    assert "DEVDIAG_TOKEN_GRACE" in line
    line, _ = _refused(tmp_path / "commit", env={"DEVDIAG_SYNCHRONOUS_COMMIT": "later"})
    assert "DEVDIAG_SYNCHRONOUS_COMMIT='later' is not valid: write on or off" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*SERVE, "--port", str(port)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


# --- limits -----------------------------------------------------------------------------------------


def test_a_flooding_or_slow_client_does_not_stall_another(pg, tmp_path, tenant_a, tenant_b):
    """The abuser floods with its token (rate-limited: 429 + Retry-After) and holds connections open
    with bodies it never finishes; the other client's 20 calls still all complete within 10 s."""
    server = serve(tmp_path, "--rate-limit", "120").start()  # bursts of 20: the victim's 20 calls fit
    abuser, slowpoke, victim = new_token(pg, tenant_b), new_token(pg, tenant_b), new_token(pg, tenant_a)
    stop = threading.Event()
    statuses: list[int] = []
    retry_after: set[str] = set()

    def flood() -> None:
        with httpx2.Client(timeout=10) as client:
            while not stop.is_set():
                headers = {**HEADERS, "authorization": f"Bearer {abuser}"}
                response = client.post(
                    server.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers
                )
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_after.add(response.headers.get("retry-after", ""))

    slow = []
    for _ in range(8):  # within its own token's burst: connections that announce a body and never finish it
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {slowpoke}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
        )
        slow.append(sock)
    floods = [threading.Thread(target=flood) for _ in range(4)]
    try:
        for thread in floods:
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        with httpx2.Client(timeout=10) as client:
            results = [call(client, server.url, victim, "diagnose", {"error_text": PORT_ERROR}) for _ in range(20)]
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in floods:
            thread.join()
        for sock in slow:
            sock.close()
        server.stop()
    assert [status for status, _ in results] == [200] * 20
    assert all(body.get("run_id") for _, body in results)
    assert took < 10, took
    assert statuses.count(429) > statuses.count(200) > 0  # the flood was mostly refused
    assert retry_after and all(value.isdigit() and int(value) >= 1 for value in retry_after)


def test_sigterm_lets_an_inflight_call_finish(pg, tmp_path, tenant_a):
    """A call blocked on a table lock when SIGTERM arrives still completes and is stored; then the server exits."""
    server = serve(tmp_path).start()
    token = new_token(pg, tenant_a)
    answers: list[tuple[int, dict]] = []
    with psycopg.connect(pg.conninfo()) as locker:
        locker.execute("lock table devdiag.diag_run in share mode")  # inserts wait; reads do not

        def one() -> None:
            with httpx2.Client(timeout=30) as client:
                answers.append(call(client, server.url, token, "diagnose", {"error_text": PORT_ERROR}))

        thread = threading.Thread(target=one)
        thread.start()
        time.sleep(1.5)  # the call is now waiting on the lock
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.process.poll() is None  # still finishing the call
        locker.rollback()
    thread.join(timeout=30)
    assert server.process.wait(timeout=30) in CLEAN_EXIT
    ((status, body),) = answers
    assert status == 200 and body["recorded"] == "database"
    assert rows_by_run(pg, [body["run_id"]]) == {body["run_id"]: [(tenant_a, None)]}


def test_the_rate_limit_is_per_token():
    from mcp_devdiag.http import RateLimiter

    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # 1/s, bursts of 10
    assert all(limiter.take(b"a") == 0 for _ in range(10))
    assert limiter.take(b"a") == pytest.approx(1.0)
    assert limiter.take(b"b") == 0  # another token is not affected
    now[0] += 1.0
    assert limiter.take(b"a") == 0


def test_two_workers_answer_the_same_tokens(pg, tmp_path, tenant_a):
    """The default (2 processes, each built by app_factory from the environment) serves stateless calls;
    the start-up line says when every commit waits for the disk (not the default)."""
    server = serve(tmp_path, "--workers", "2", env={"DEVDIAG_SYNCHRONOUS_COMMIT": "on"}).start()
    token = new_token(pg, tenant_a)
    try:
        with httpx2.Client(timeout=30, limits=httpx2.Limits(max_connections=4)) as client:
            answers = [
                call(client, server.url, token, "suggest_fixes", {"problem_code": "PORT_IN_USE"}) for _ in range(8)
            ]
    finally:
        code = server.stop()
    assert [status for status, _ in answers] == [200] * 8
    assert code in CLEAN_EXIT
    assert ", every commit waiting for the disk)" in server.log.read_text().splitlines()[0]


def test_a_worker_freezes_its_startup_heap_while_it_serves(pg, tmp_path):
    """What start-up allocated is out of the collector's reach while the app runs (a full collection of it
    paused a worker 70-95 ms under load), and handed back at shutdown."""
    import gc

    import anyio

    from mcp_devdiag import http
    from mcp_devdiag.settings import DatabaseTarget, ServerSettings
    from tests.python.conftest import login

    writer = login(pg, "devdiag_writer")
    settings = ServerSettings(tenant="t", environment="e", database=DatabaseTarget(writer), spool_dir=tmp_path / "s")
    starlette_app = http.build_app(settings, http.HttpSettings()).asgi.app.app  # inside the two limits

    async def frozen_while_serving() -> int:
        async with starlette_app.router.lifespan_context(starlette_app):
            return gc.get_freeze_count()

    assert gc.get_freeze_count() == 0
    assert anyio.run(frozen_while_serving) > 10_000
    assert gc.get_freeze_count() == 0
