"""Seeded fuzzing of the five tools through the SDK's in-process client, against the real database.

Each case calls one tool with arguments drawn from a mix of valid values (real run ids, fix ids,
codes), wrong types, hostile text (surrogates, NUL, control and bidi characters, regex-hostile
repetitions, SQL, secrets) and sizes up to the input limit. Every answer must be a result or a
one-line tool error, never a crash; nothing may be written for a refused call, no secret of the
corpus may be stored or echoed, and no row of another tenant may change. The probe allow-list names
only ``localhost`` (a host glob, never a network: a network makes the guard resolve every name), so
no case resolves or reaches anything off this machine.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import own_database
from mcp.client import Client

from mcp_devdiag.probes import AllowList
from mcp_devdiag.server import build_server
from mcp_devdiag.service import HARD_INPUT_LIMIT, DevDiag
from mcp_devdiag.settings import DatabaseTarget, ServerSettings

SEED = 20261203
CASES = 2_000
DATA = Path(__file__).parent / "data"
SECRETS = yaml.safe_load((DATA / "secrets_corpus.yaml").read_text(encoding="utf-8"))["secrets"]
ERRORS = [item["text"] for item in yaml.safe_load((DATA / "error_corpus.yaml").read_text(encoding="utf-8"))["items"]]
TOOLS = ("diagnose", "record_outcome", "suggest_fixes", "list_problems", "recent_problems")
ODD = [
    "\x00",
    "\ud800",
    "\udfff",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\r\n",
    "\x1b[31m",
    "\x7f",
    "\U0001f600",
    "'; drop table devdiag.diag_run; --",
    "%s%s%(x)s",
    "{{ 7*7 }}",
    "\\",
    '"',
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow",
]
# Shapes that made regexes backtrack: long runs of one class with no terminator.
HOSTILE = ["a-", "://", "a:", "@", "mysql -p", " ", "\t", "=", "x" * 7, "/", "-----BEGIN PRIVATE KEY-----\n", "ab"]


class Fuzzer:
    def __init__(self, rng: random.Random, catalog_ids: dict[str, list[str]]) -> None:
        self.rng = rng
        self.runs: list[str] = []  # run ids this session created, to aim outcomes at real runs
        self.findings: list[str] = []
        self.fixes = sorted({f for fixes in catalog_ids.values() for f in fixes})
        self.codes = sorted(catalog_ids)

    def text(self) -> str:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:
            return rng.choice(ERRORS)
        if kind == 1:
            return rng.choice(SECRETS)["text"] + "\n" + rng.choice(ERRORS)
        if kind == 2:
            return "".join(rng.choice(ODD) for _ in range(rng.randrange(1, 40)))
        if kind == 3:
            return rng.choice(HOSTILE) * rng.randrange(100, 20_000)
        if kind == 4:  # random code points, surrogates included
            return "".join(chr(rng.randrange(0x1, 0x10FFFF)) for _ in range(rng.randrange(1, 300)))
        if kind == 5:
            return "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 2_000)))
        if kind == 6:  # large, near or over the limit
            return rng.choice(ERRORS) + "\n" + "y" * rng.choice([50_000, 150_000, HARD_INPUT_LIMIT // 2])
        if kind == 7:
            return ""
        return rng.choice(ERRORS)[: rng.randrange(1, 80)] + rng.choice(ODD)

    def url(self) -> str:
        rng = self.rng
        host = rng.choice(["127.0.0.1", "localhost", "[::1]"])
        port = rng.choice(["", ":1", ":9", ":65535", ":0", ":99999", ":abc"])
        scheme = rng.choice(["http", "https", "ftp", "file", "javascript", "HTTP"])
        tail = rng.choice(["/", "/x?y=1", "/%00", "/\r\nX-Injected: 1", "/" + "a" * 3_000, "#frag", ""])
        user = rng.choice(["", "user:pass@", "@", ":@"])
        return rng.choice([f"{scheme}://{user}{host}{port}{tail}", self.text()[:200], host + port])

    def uuid_like(self, pool: list[str]) -> str:
        rng = self.rng
        if pool and rng.random() < 0.6:
            return rng.choice(pool)
        return rng.choice([str(uuid.uuid4()), "not-a-uuid", "", " " + str(uuid.uuid4()) + " ", self.text()[:100]])

    def wrong_type(self) -> Any:
        rng = self.rng
        return rng.choice(
            [None, True, 0, -1, 10**40, 1.5, float("inf"), [], ["x"], {"a": {"b": [1]}}, {"$ref": "#"}, "1e309"]
        )

    def value(self, name: str) -> Any:
        rng = self.rng
        if rng.random() < 0.15:
            return self.wrong_type()
        if name in ("error_text", "logs", "context"):
            return self.text()
        if name == "url":
            return self.url()
        if name == "origin":
            return rng.choice(["http://localhost:3000", "https://app.example.com", "null", "", self.text()[:300]])
        if name == "run_id":
            return self.uuid_like(self.runs)
        if name == "finding_id":
            return self.uuid_like(self.findings)
        if name == "resolution":
            return rng.choice(["fixed", "manual", "failed", "FIXED", "worked", "", self.text()[:50]])
        if name == "fix_id":
            return rng.choice([*self.fixes[:20], "", "no-such-fix", self.text()[:50]])
        if name == "problem_code":
            return rng.choice([*self.codes[:20], "port_in_use", " CORS_BLOCKED ", "", self.text()[:50]])
        if name == "category":
            return rng.choice(["python", "node", "browser", "", "PYTHON", "nope", self.text()[:50]])
        if name in ("days", "limit"):
            return rng.choice([1, 7, 100, 366, 0, -5, 367, 10**12, "7", 2.5])
        return self.text()

    def case(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        tool = rng.choice(TOOLS)
        names = {
            "diagnose": ["error_text", "url", "logs", "context", "origin"],
            "record_outcome": ["run_id", "finding_id", "resolution", "fix_id"],
            "suggest_fixes": ["problem_code"],
            "list_problems": ["category"],
            "recent_problems": ["days", "limit"],
        }[tool]
        args = {name: self.value(name) for name in names if rng.random() < 0.6}
        if tool == "record_outcome" and rng.random() < 0.7:
            args["resolution"] = rng.choice(["fixed", "manual", "failed"])
        if rng.random() < 0.05:
            args[rng.choice(["extra", "tenant", "tenant_id", "__proto__"])] = self.text()[:40]
        return tool, args


def _rows(pg, tenant: str) -> list[tuple]:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute(
            "select id, problem_code, fix_suggestion, resolution, resolved_at, error_msg, tenant_id"
            " from devdiag.diag_run where tenant_id = %s order by id",
            (tenant,),
        ).fetchall()


@pytest.fixture(scope="module")
def fuzz_db(pg):
    """A database of its own: the fuzzer's thousands of runs and outcomes stay out of the other tests'."""
    with own_database(pg, "devdiag_fuzz") as settings:
        yield settings


@pytest.fixture
def servers(fuzz_db, tmp_path) -> Iterator[Callable[[str, str], tuple[Any, DevDiag]]]:
    pg = fuzz_db
    apps: list[DevDiag] = []

    def factory(tenant: str, allow: str = "") -> tuple[Any, DevDiag]:
        settings = ServerSettings(
            tenant=tenant,
            environment="linux/python-3.12",
            database=DatabaseTarget(pg),
            spool_dir=tmp_path / f"spool-{tenant}",
            allow_probes=AllowList.parse(allow),
            probe_timeout_s=0.5,
        )
        server, app = build_server(settings, rng=random.Random(SEED))
        apps.append(app)
        return server, app

    yield factory
    for app in apps:
        app.recorder.close()


@pytest.mark.slow
def test_fuzzed_calls_to_every_tool_never_crash_leak_or_cross_tenants(fuzz_db, servers):
    pg = fuzz_db
    rng = random.Random(SEED)
    suffix = uuid.uuid4().hex[:8]
    victim, attacker = f"fuzz-victim-{suffix}", f"fuzz-{suffix}"
    victim_server, _ = servers(victim)
    attacker_server, app = servers(attacker, allow="localhost")
    fuzzer = Fuzzer(rng, {p.code: [f.id for f in p.fixes] for p in app.catalog})
    secrets = [entry["secret"] for entry in SECRETS]
    crashes: list[str] = []
    multiline: list[str] = []
    leaks: list[str] = []
    slowest = (0.0, "")

    async def seed_victim() -> None:  # the other tenant's runs, which no fuzzed call may touch
        async with Client(victim_server) as client:
            for text in ERRORS[:20]:
                result = await client.call_tool("diagnose", {"error_text": text})
                assert not result.is_error
                fuzzer.runs.append(result.structured_content["run_id"])
                fuzzer.findings += [f["finding_id"] for f in result.structured_content["findings"]]

    async def go() -> None:
        nonlocal slowest
        async with Client(attacker_server) as client:
            for _ in range(CASES):
                tool, args = fuzzer.case()
                started = time.perf_counter()
                result = await client.call_tool(tool, args)
                took = time.perf_counter() - started
                slowest = max(slowest, (took, f"{tool} {sorted(args)}"))
                text = " ".join(getattr(c, "text", "") for c in result.content)
                if result.is_error:
                    if text.strip() == f"Error executing tool {tool}":
                        crashes.append(f"{tool}: {json.dumps(args, default=str)[:300]}")
                    if "\n" in text.strip():
                        multiline.append(f"{tool}: {text[:200]!r}")
                else:
                    out = json.dumps(result.structured_content)
                    if tool == "diagnose":
                        fuzzer.runs.append(result.structured_content["run_id"])
                        fuzzer.findings += [f["finding_id"] for f in result.structured_content["findings"]]
                    text += out
                leaks.extend(f"{tool} echoed {s[:12]}..." for s in secrets if s in text)

    asyncio.run(seed_victim())
    before = _rows(pg, victim)
    asyncio.run(go())
    assert not crashes, crashes[:5]
    assert not multiline, multiline[:5]
    assert not leaks, leaks[:5]
    assert _rows(pg, victim) == before, "a fuzzed call changed the other tenant's rows"
    stored = _rows(pg, attacker)
    assert stored, "no fuzzed diagnose was stored: the fuzzer does not reach the writer"
    for row in stored:
        assert row[6] == attacker
        for secret in secrets:
            assert secret not in (row[5] or ""), f"secret {secret[:12]}... stored"
    print(f"\n{CASES} cases, {len(stored)} rows stored, slowest call {slowest[0]:.3f}s ({slowest[1]})")
