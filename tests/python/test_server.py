"""The MCP tools through the SDK's in-process client, against the session's real database."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from mcp.client import Client
from mcp.server import MCPServer

from mcp_devdiag import classifier
from mcp_devdiag.catalog import load_catalog
from mcp_devdiag.server import build_server
from mcp_devdiag.service import DevDiag
from mcp_devdiag.settings import ConfigError, DatabaseTarget, ServerSettings, load
from orchestrator import dbt

ENV = "linux/python-3.12/node-20"
PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000\n    at Server.setupListenHandle [as _listen2]"
CORS_ERROR = (
    "Access to fetch at 'https://api.example.com/v1/items' from origin 'http://localhost:3000' has been blocked "
    "by CORS policy: No 'Access-Control-Allow-Origin' header is present on the requested resource."
)
SECRETS = yaml.safe_load((Path(__file__).parent / "data" / "secrets_corpus.yaml").read_text(encoding="utf-8"))[
    "secrets"
]

Make = Callable[..., tuple[MCPServer, DevDiag]]


@pytest.fixture
def make(pg, tmp_path) -> Iterator[Make]:
    """Servers on the session database, each with its own tenant (unless given) and spool."""
    apps: list[DevDiag] = []

    def factory(tenant: str | None = None, **overrides: Any) -> tuple[MCPServer, DevDiag]:
        settings = ServerSettings(
            tenant=tenant or f"test-{uuid.uuid4().hex[:10]}",
            environment=ENV,
            database=DatabaseTarget(pg),
            spool_dir=tmp_path / f"spool-{len(apps)}",
            **overrides,
        )
        server, app = build_server(settings, rng=random.Random(11))
        apps.append(app)
        return server, app

    yield factory
    for app in apps:
        app.recorder.close()


def call(server: MCPServer, tool: str, args: dict[str, Any] | None = None):
    async def go():
        async with Client(server) as client:
            return await client.call_tool(tool, args or {})

    return asyncio.run(go())


def ok(server: MCPServer, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = call(server, tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(server: MCPServer, tool: str, args: dict[str, Any]) -> str:
    result = call(server, tool, args)
    assert result.is_error, result.structured_content
    return " ".join(getattr(c, "text", "") for c in result.content)


def rows_of(pg, run_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(pg.conninfo(), row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("select * from devdiag.diag_run where run_id = %s order by id", (run_id,)).fetchall()


# --- the tools as a client sees them --------------------------------------------------------------


def test_five_tools_with_schemas_annotations_and_version(make):
    server, _ = make()

    async def go():
        async with Client(server) as client:
            return client.server_info, (await client.list_tools()).tools

    info, tools = asyncio.run(go())
    assert info is not None and info.version == importlib.metadata.version("devdiag")
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"diagnose", "record_outcome", "suggest_fixes", "list_problems", "recent_problems"}
    for tool in tools:
        assert tool.output_schema, f"{tool.name} has no structured result"
        assert "call" in (tool.description or "").lower(), f"{tool.name} does not say when to call it"
    assert by_name["diagnose"].annotations.open_world_hint is True
    assert by_name["diagnose"].annotations.read_only_hint is False
    assert by_name["record_outcome"].annotations.idempotent_hint is True
    for name in ("suggest_fixes", "list_problems", "recent_problems"):
        assert by_name[name].annotations.read_only_hint is True
    assert by_name["record_outcome"].input_schema["required"] == ["resolution"]
    assert set(by_name["record_outcome"].input_schema["properties"]["resolution"]["enum"]) == {
        "fixed",
        "manual",
        "failed",
    }


def test_synchronous_commit_off_applies_to_the_tool_calls_transactions_only(make, pg, tmp_path):
    """DEVDIAG_SYNCHRONOUS_COMMIT=off (the default): a tool call's transaction commits without waiting
    for the WAL flush (``set local``: the pooled connection, spool replays and token checks keep the
    durable default), and its run is stored all the same; ``on`` makes the tool calls' commits wait too.
    Any other value than on or off is refused in one line."""
    fast_server, fast = make()
    _, durable = make(synchronous_commit=True)
    for app, expected in ((fast, "off"), (durable, "on")):
        with app.recorder.session(app.settings.tenant) as session:
            assert session.conn.execute("show synchronous_commit").fetchone() == (expected,)
        with app.recorder.connection() as conn:
            assert conn.execute("show synchronous_commit").fetchone() == ("on",)
    body = ok(fast_server, "diagnose", {"error_text": "Error: listen EADDRINUSE: address already in use :::3000"})
    assert [row["problem_code"] for row in rows_of(pg, body["run_id"])] == ["PORT_IN_USE"]

    env = {"DEVDIAG_SPOOL_DIR": str(tmp_path / "spool"), "DEVDIAG_ENVIRONMENT": "linux"}
    assert load(env).synchronous_commit is False
    assert load({**env, "DEVDIAG_SYNCHRONOUS_COMMIT": "on"}).synchronous_commit is True
    with pytest.raises(ConfigError, match=r"^DEVDIAG_SYNCHRONOUS_COMMIT='sometimes' is not valid: write on or off$"):
        load({**env, "DEVDIAG_SYNCHRONOUS_COMMIT": "sometimes"})


def test_diagnose_returns_ranked_fixes_and_records_one_row_per_finding(make, pg):
    server, app = make()
    result = ok(server, "diagnose", {"error_text": PORT_ERROR + "\n\n" + CORS_ERROR, "context": "npm run dev"})
    codes = [f["code"] for f in result["findings"]]
    assert codes == ["PORT_IN_USE", "CORS_BLOCKED"]
    assert result["recorded"] == "database" and result["environment"] == ENV
    rows = rows_of(pg, result["run_id"])
    assert [r["problem_code"] for r in rows] == codes
    for finding, row in zip(result["findings"], rows, strict=True):
        catalog_fixes = {f.id for f in load_catalog().problem(finding["code"]).fixes}
        assert {f["id"] for f in finding["fixes"]} == catalog_fixes
        assert finding["suggested_fix"] == finding["fixes"][0]["id"] == row["fix_suggestion"]
        assert row["confidence"] == pytest.approx(finding["fixes"][0]["confidence"], abs=1e-4)
        assert str(row["id"]) == finding["finding_id"]
        assert row["tenant_id"] == app.settings.tenant and row["environment"] == ENV
        assert row["error_msg"].startswith("Error: listen EADDRINUSE")
        assert finding["evidence"] and all(finding["evidence"])


def test_text_that_matches_nothing_is_recorded_as_unrecognised(make, pg):
    server, _ = make()
    result = ok(server, "diagnose", {"error_text": "all 12 tests passed in 0.8s"})
    assert result["findings"] == [] and result["unrecognised"] is True
    (row,) = rows_of(pg, result["run_id"])
    assert row["problem_code"] == "UNRECOGNISED" and row["fix_suggestion"] is None and row["confidence"] is None


def test_no_secret_reaches_the_database_or_the_result(make, pg):
    server, _ = make()
    for entry in SECRETS:
        text = f"{PORT_ERROR}\n{entry['text']}"
        result = call(server, "diagnose", {"error_text": text, "logs": entry["text"], "context": entry["text"]})
        assert not result.is_error, (entry["shape"], result.content)
        dumped = json.dumps(result.structured_content) + " ".join(getattr(c, "text", "") for c in result.content)
        assert entry["secret"] not in dumped, entry["shape"]
        for row in rows_of(pg, result.structured_content["run_id"]):
            assert entry["secret"] not in (row["error_msg"] or ""), entry["shape"]


# --- bad input ------------------------------------------------------------------------------------


def test_nothing_to_diagnose_is_a_clear_error(make):
    server, _ = make()
    assert "nothing to diagnose" in error_text(server, "diagnose", {})
    assert "nothing to diagnose" in error_text(server, "diagnose", {"error_text": "  \n\x00 "})


def test_oversized_input_is_capped_and_said(make, pg):
    server, _ = make()
    noise = "\n".join(f"INFO tick {i} all fine" for i in range(classifier.MAX_INPUT_CHARS // 10))
    result = ok(server, "diagnose", {"error_text": noise + "\n" + PORT_ERROR})
    assert result["truncated"] is True
    assert any("cut to" in n for n in result["notes"])
    assert [f["code"] for f in result["findings"]] == ["PORT_IN_USE"]  # the tail, where errors are, was kept
    (row,) = rows_of(pg, result["run_id"])
    assert len(row["error_msg"]) <= 4000 and "EADDRINUSE" in row["error_msg"]


def test_a_secret_where_the_input_is_cut_is_still_masked(make, pg):
    from mcp_devdiag.service import head_tail

    server, _ = make()
    secret = "postgres://app:Bound4ryS3cret@db.internal/app"
    size = classifier.MAX_INPUT_CHARS + 50_000
    probe_cut, _ = head_tail("x" * size, classifier.MAX_INPUT_CHARS)
    head = probe_cut.index("\n[...")  # where the head ends: put the secret across that point
    text = "y" * (head - 20) + secret + "z" * (size - head - 20 - len(secret) - len(PORT_ERROR) - 1) + "\n" + PORT_ERROR
    result = call(server, "diagnose", {"error_text": text, "logs": secret})
    assert not result.is_error and result.structured_content["truncated"] is True
    assert "Bound4" not in json.dumps(result.structured_content)
    (row,) = rows_of(pg, result.structured_content["run_id"])
    assert "Bound4" not in row["error_msg"] and "S3cret" not in row["error_msg"]


def test_input_beyond_the_hard_limit_is_refused_and_nothing_stored(make, pg):
    from mcp_devdiag.service import HARD_INPUT_LIMIT

    server, app = make()
    message = error_text(server, "diagnose", {"error_text": PORT_ERROR + "x" * HARD_INPUT_LIMIT})
    assert "more than" in message and "characters" in message
    with psycopg.connect(pg.conninfo()) as conn:
        stored = conn.execute("select count(*) from devdiag.diag_run where tenant_id = %s", (app.settings.tenant,))
        assert stored.fetchone()[0] == 0


def test_nul_bytes_surrogates_and_sql_are_stored_safely(make, pg):
    server, _ = make()
    nasty = "x'); drop table devdiag.diag_run; --\x00 \ud800 " + PORT_ERROR
    result = ok(server, "diagnose", {"error_text": nasty, "context": "\udcff\x00"})
    (row,) = rows_of(pg, result["run_id"])
    assert row["problem_code"] == "PORT_IN_USE"
    assert "drop table devdiag.diag_run" in row["error_msg"] and "\x00" not in row["error_msg"]
    assert "\ufffd" in row["error_msg"]


def test_wrong_argument_types_are_tool_errors_not_crashes(make):
    server, _ = make()
    assert "error_text" in error_text(server, "diagnose", {"error_text": {"not": "text"}})
    assert "days" in error_text(server, "recent_problems", {"days": 0})
    # the server still answers afterwards
    ok(server, "list_problems")


# --- outcomes -------------------------------------------------------------------------------------


def test_record_outcome_updates_the_run_and_is_idempotent(make, pg):
    server, _ = make()
    run = ok(server, "diagnose", {"error_text": PORT_ERROR})
    fix = run["findings"][0]["suggested_fix"]
    first = ok(server, "record_outcome", {"run_id": run["run_id"], "resolution": "fixed", "fix_id": fix})
    assert first["recorded"] == "database" and first["updated"] == 1
    assert first["findings"][0]["resolution"] == "fixed" and first["findings"][0]["fix_id"] == fix
    assert first["findings"][0]["confidence_now"] > run["findings"][0]["fixes"][0]["confidence"]
    (row,) = rows_of(pg, run["run_id"])
    assert row["resolution"] == "fixed" and row["resolved_at"] is not None
    again = ok(server, "record_outcome", {"run_id": run["run_id"], "resolution": "fixed"})
    assert again["updated"] == 0 and any("already recorded" in n for n in again["notes"])
    (same,) = rows_of(pg, run["run_id"])
    assert same["resolved_at"] == row["resolved_at"]


def test_record_outcome_by_finding_id_touches_one_finding(make, pg):
    server, _ = make()
    run = ok(server, "diagnose", {"error_text": PORT_ERROR + "\n" + CORS_ERROR})
    target = run["findings"][1]
    result = ok(server, "record_outcome", {"finding_id": target["finding_id"], "resolution": "manual"})
    assert result["updated"] == 1
    by_id = {str(r["id"]): r["resolution"] for r in rows_of(pg, run["run_id"])}
    assert by_id[target["finding_id"]] == "manual"
    assert by_id[run["findings"][0]["finding_id"]] is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"run_id": str(uuid.uuid4()), "resolution": "fixed"}, "unknown run_id"),
        ({"finding_id": str(uuid.uuid4()), "resolution": "failed"}, "unknown finding_id"),
        ({"run_id": "not-a-uuid", "resolution": "fixed"}, "is not a UUID"),
        ({"resolution": "fixed"}, "exactly one of run_id"),
        ({"run_id": "RUN", "finding_id": "FINDING", "resolution": "fixed"}, "exactly one of run_id"),
        ({"run_id": "RUN", "resolution": "worked"}, "'fixed', 'manual' or 'failed'"),
        ({"run_id": "RUN", "resolution": "fixed", "fix_id": "no-such-fix"}, "unknown fix_id"),
        ({"run_id": "RUN", "resolution": "fixed", "fix_id": "cors-allow-origin"}, "was not the suggested fix"),
        ({"run_id": "CLEAN", "resolution": "fixed"}, "nothing was suggested for an unrecognised error"),
    ],
)
def test_record_outcome_refuses_what_it_cannot_record(make, pg, args, needle):
    server, _ = make()
    run = ok(server, "diagnose", {"error_text": PORT_ERROR})["run_id"]
    clean = ok(server, "diagnose", {"error_text": "build ok"})["run_id"]
    finding = rows_of(pg, run)[0]["id"]
    substitutions = {"RUN": run, "CLEAN": clean, "FINDING": str(finding)}
    args = {k: substitutions.get(v, v) for k, v in args.items()}
    assert needle in error_text(server, "record_outcome", args)
    assert all(r["resolution"] is None for r in rows_of(pg, run))


# --- suggestions ----------------------------------------------------------------------------------


def test_suggestions_learn_from_outcomes_and_fall_back(make, pg):
    # A problem the demo data never uses, so that all tenants' history is only this test's.
    code = "PY_EXTERNALLY_MANAGED"
    text = "error: externally-managed-environment\n× This environment is externally managed"
    problem = load_catalog().problem(code)
    by_prior = sorted(problem.fixes, key=lambda f: -f.prior)

    fresh = ok(make()[0], "suggest_fixes", {"problem_code": code.lower()})
    assert fresh["code"] == code and fresh["source"] == "catalog"
    assert [f["id"] for f in fresh["fixes"]] == [f.id for f in by_prior]
    assert [f["confidence"] for f in fresh["fixes"]] == [pytest.approx(f.prior) for f in by_prior]

    learner, _ = make()
    top = by_prior[0].id
    for _ in range(6):  # the catalog's favourite keeps failing for this tenant; the others work
        run = ok(learner, "diagnose", {"error_text": text})
        suggested = run["findings"][0]["suggested_fix"]
        outcome = "failed" if suggested == top else "fixed"
        ok(learner, "record_outcome", {"run_id": run["run_id"], "resolution": outcome})
    mine = ok(learner, "suggest_fixes", {"problem_code": code})
    assert mine["source"] == "tenant"
    assert mine["fixes"][0]["id"] != top, "the failing fix should no longer rank first"
    confidences = [f["confidence"] for f in mine["fixes"]]
    assert confidences == sorted(confidences, reverse=True)

    # Another tenant, with no history of its own, leans on all tenants' outcomes once a build has
    # counted them (it cannot read another tenant's raw rows).
    results = dbt.invoke(pg, ["run", "--select", "+v_fix_ranking"])
    assert results and all(r.status == "success" for r in results)
    other = {f["id"]: f for f in ok(make()[0], "suggest_fixes", {"problem_code": code})["fixes"]}
    assert other[top]["source"] == "all_tenants"
    assert other[top]["confidence"] < by_prior[0].prior
    mine_top = next(f for f in mine["fixes"] if f["id"] == top)
    assert mine_top["confidence"] < other[top]["confidence"] < by_prior[0].prior  # own history weighs most


def test_unknown_problem_code_is_a_clear_error(make):
    server, _ = make()
    assert "unknown problem code" in error_text(server, "suggest_fixes", {"problem_code": "NOT_A_PROBLEM"})


def test_list_problems_is_the_catalog(make):
    server, _ = make()
    listed = ok(server, "list_problems")["problems"]
    catalog = load_catalog()
    assert [p["code"] for p in listed] == [p.code for p in catalog]
    git = ok(server, "list_problems", {"category": "git"})["problems"]
    assert git and all(p["category"] == "git" for p in git)
    assert "unknown category" in error_text(server, "list_problems", {"category": "astrology"})


@pytest.mark.slow
def test_recent_problems_reads_the_views_after_a_build(make, pg):
    from orchestrator import dbt

    server, app = make()
    for _ in range(3):
        ok(server, "diagnose", {"error_text": PORT_ERROR})
    ok(server, "diagnose", {"error_text": CORS_ERROR})
    results = dbt.invoke(pg, ["run", "--select", "+v_problem_counts"])  # what the cron's build refreshes
    assert results and all(r.status == "success" for r in results), [(r.name, r.message) for r in results]
    recent = ok(server, "recent_problems", {"days": 7})
    assert recent["tenant"] == app.settings.tenant
    assert [(p["code"], p["count"]) for p in recent["problems"]] == [("PORT_IN_USE", 3), ("CORS_BLOCKED", 1)]
    assert recent["problems"][0]["share"] == pytest.approx(0.75)
    assert any("last `devdiag build`" in n for n in recent["notes"])
    assert ok(make()[0], "recent_problems")["problems"] == []


# --- probes through diagnose ----------------------------------------------------------------------


def test_url_outside_the_allow_list_is_not_probed(make):
    server, _ = make()
    assert "probe refused" in error_text(server, "diagnose", {"url": "https://example.com/"})
    result = ok(server, "diagnose", {"url": "https://example.com/", "error_text": CORS_ERROR})
    assert result["probe"]["status"] == "refused" and "DEVDIAG_ALLOW_PROBES" in result["probe"]["detail"]
    assert [f["code"] for f in result["findings"]] == ["CORS_BLOCKED"]


# --- captured details, fixes that apply, unrecognised runs ---------------------------------------------

PUSH_REJECTED = (
    "To github.com:acme/shop.git\n ! [rejected]        {branch} -> {branch} (fetch first)\n"
    "error: failed to push some refs to 'github.com:acme/shop.git'\n"
    "hint: Updates were rejected because the remote contains work that you do not have locally."
)


def test_push_rejected_on_main_never_offers_force_push_and_renders_the_pull(make, pg):
    server, _ = make()
    result = ok(server, "diagnose", {"error_text": PUSH_REJECTED.format(branch="main")})
    (finding,) = result["findings"]
    assert finding["code"] == "GIT_NON_FAST_FORWARD" and finding["details"] == {"branch": "main"}
    ids = [f["id"] for f in finding["fixes"]]
    assert "git-force-with-lease" not in ids and finding["suggested_fix"] != "git-force-with-lease"
    # the catalog's first choice for main; learned outcomes (the session's demo data, whose simulated
    # outcomes depend on the hour it was generated) may reorder the confidences, by design
    priors = {f.id: f.prior for f in load_catalog().problem("GIT_NON_FAST_FORWARD").fixes}
    assert max(ids, key=priors.__getitem__) == "git-pull-rebase-then-push"
    pull = next(f for f in finding["fixes"] if f["id"] == "git-pull-rebase-then-push")
    assert pull["steps"][0].startswith("Run git pull --rebase origin main (")
    assert rows_of(pg, result["run_id"])[0]["fix_suggestion"] in ids

    feature = ok(server, "diagnose", {"error_text": PUSH_REJECTED.format(branch="feature/login")})["findings"][0]
    force = next(f for f in feature["fixes"] if f["id"] == "git-force-with-lease")
    assert "git push --force-with-lease origin feature/login." in force["steps"][0]
    assert force["applies"] == "when branch is none of main, master, trunk, develop, production"


def test_missing_third_party_module_suggests_installing_that_package(make):
    server, _ = make()
    text = (
        'Traceback (most recent call last):\n  File "/home/dev/shop/app/main.py", line 3, in <module>\n'
        "    import requests\nModuleNotFoundError: No module named 'requests'"
    )
    (finding,) = ok(server, "diagnose", {"error_text": text})["findings"]
    assert finding["details"] == {"module": "requests", "module_kind": "third_party", "package": "requests"}
    # which fix ranks first depends on the outcomes other tests recorded; what applies does not
    (install,) = [f for f in finding["fixes"] if f["id"] == "py-install-in-active-env"]
    assert any("pip install requests " in step for step in install["steps"])
    assert "py-fix-package-path" not in [f["id"] for f in finding["fixes"]]

    # The project's own package (a folder of the traceback's path): fix the import path, never pip install.
    own = text.replace("'requests'", "'app.models'").replace("import requests", "import app.models")
    (finding,) = ok(server, "diagnose", {"error_text": own})["findings"]
    assert finding["details"]["module_kind"] == "own" and "package" not in finding["details"]
    ids = [f["id"] for f in finding["fixes"]]
    assert "py-fix-package-path" in ids and "py-install-in-active-env" not in ids


def test_a_fix_whose_condition_fails_is_never_returned_explored_or_credited(make, pg):
    server, _ = make()
    # Make force-push the tenant's most successful fix where it applies (feature branches)...
    for _ in range(8):
        run = ok(server, "diagnose", {"error_text": PUSH_REJECTED.format(branch="feature/x")})
        if run["findings"][0]["suggested_fix"] == "git-force-with-lease":
            ok(server, "record_outcome", {"run_id": run["run_id"], "resolution": "fixed"})
        else:
            ok(server, "record_outcome", {"run_id": run["run_id"], "resolution": "failed"})
    # ...it is still never suggested, listed or explored on main, and cannot be credited there.
    for _ in range(15):
        run = ok(server, "diagnose", {"error_text": PUSH_REJECTED.format(branch="main")})
        finding = run["findings"][0]
        assert finding["suggested_fix"] != "git-force-with-lease"
        assert "git-force-with-lease" not in [f["id"] for f in finding["fixes"]]
        assert not any("force-with-lease" in note for note in run["notes"])
    needle = "was not the suggested fix"
    args = {"run_id": run["run_id"], "resolution": "fixed", "fix_id": "git-force-with-lease"}
    assert needle in error_text(server, "record_outcome", args)
    assert all(r["resolution"] is None for r in rows_of(pg, run["run_id"]))


def test_an_unknown_error_is_stored_as_unrecognised_not_clean(make, pg):
    server, _ = make()
    rust = (
        "error[E0502]: cannot borrow `v` as mutable because it is also borrowed as immutable\n"
        " --> src/main.rs:4:5\n  |\n3 |     let first = &v[0];\n  |                  - immutable borrow occurs here"
    )
    result = ok(server, "diagnose", {"error_text": rust})
    assert result["findings"] == [] and result["unrecognised"] is True
    assert any("unrecognised" in note for note in result["notes"])
    (row,) = rows_of(pg, result["run_id"])
    assert row["problem_code"] == "UNRECOGNISED" and row["fix_suggestion"] is None and row["error_msg"]
    needle = "nothing was suggested for an unrecognised error"
    assert needle in error_text(server, "record_outcome", {"run_id": result["run_id"], "resolution": "fixed"})
    # solved by hand: the outcome and its note go to the team memory; the raw row keeps no outcome
    kept = ok(server, "record_outcome", {"run_id": result["run_id"], "resolution": "manual", "note": "cloned v"})
    assert kept["updated"] == 0 and kept["note"] == "cloned v" and "team memory" in kept["notes"][0]
    assert rows_of(pg, result["run_id"])[0]["resolution"] is None


def test_unrecognised_runs_are_counted_alike_by_health_checks_panels_and_review(pg, tmp_path):
    from conftest import own_database

    from orchestrator import dbt
    from orchestrator.reviews import ACTIVITY_SUMMARY_7D

    with own_database(pg, "devdiag_unrecognised") as settings:
        config = ServerSettings(
            tenant="t-unknown", environment=ENV, database=DatabaseTarget(settings), spool_dir=tmp_path / "spool"
        )
        server, app = build_server(config, rng=random.Random(3))
        try:
            assert ok(server, "diagnose", {"error_text": "error[E0502]: cannot borrow `v` as mutable"})["unrecognised"]
        finally:
            app.recorder.close()
        results = dbt.invoke(settings, ["build", "--select", "+v_activity_hourly", "+health_checks"])
        assert results and all(r.status in {"success", "pass", "warn"} for r in results)
        with psycopg.connect(settings.conninfo(), row_factory=psycopg.rows.dict_row) as conn:
            panels = conn.execute("select problem_code, runs from devdiag.v_activity_hourly").fetchall()
            assert [(r["problem_code"], r["runs"]) for r in panels] == [("UNRECOGNISED", 1)]
            diversity = conn.execute(
                "select value from devdiag.health_checks where check_name = 'problem_diversity_today'"
            ).fetchone()
            assert diversity["value"] == 1
            activity = conn.execute(ACTIVITY_SUMMARY_7D).fetchone()
            assert (activity["runs"], activity["clean_runs"], activity["unrecognised_runs"]) == (1, 0, 1)
