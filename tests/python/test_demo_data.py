"""The demo generator: deterministic, realistic, and healthy by the runbook's checks and alerts."""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from conftest import own_database

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from mcp_devdiag import ids
from mcp_devdiag.catalog import load_catalog
from mcp_devdiag.classifier import classify
from mcp_devdiag.environment import canonical
from mcp_devdiag.redaction import redact
from mcp_devdiag.writer import RunRow
from orchestrator import demo_data

SCALES = (2_000, 20_000)
WIDE = "wide"  # the scale benchmark's shape at a small run count: 50 tenants, 60 problem codes
WIDE_RUNS, WIDE_TENANTS, WIDE_CODES = 30_000, 50, 60


@pytest.fixture(scope="module")
def db(pg) -> Iterator[ConnectionSettings]:
    """A database of this module's own (with `devdiag setup`), so its rows never reach other tests."""
    with own_database(pg, "devdiag_test_demo") as settings:
        yield settings


@pytest.fixture(scope="module")
def now() -> datetime:
    # The health checks use the real clock, so the demo ends now.
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def datasets(db, now: datetime) -> dict[int, list[RunRow]]:
    with connect(db) as conn:
        sets: dict = {runs: demo_data.generate(runs, conn=conn, now=now) for runs in SCALES}
        sets[WIDE] = demo_data.generate(WIDE_RUNS, conn=conn, now=now, tenants=WIDE_TENANTS, codes=WIDE_CODES)
    return sets


@pytest.fixture(scope="module")
def loaded(db, now: datetime) -> tuple[demo_data.LoadReport, list[RunRow]]:
    """6,000 runs loaded through load_demo; the rows are regenerated for comparison."""
    report = demo_data.load_demo(db, 6_000, seed=3, now=now)
    with connect(db) as conn:
        rows = demo_data.generate(6_000, conn=conn, seed=3, now=now)
    return report, rows


def runs_of(rows: list[RunRow]) -> dict:
    runs: dict = defaultdict(list)
    for row in rows:
        runs[row.run_id].append(row)
    return runs


def findings(rows: list[RunRow]) -> list[RunRow]:
    return [r for r in rows if r.problem_code is not None]


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_and_now_give_identical_rows(db, now: datetime) -> None:
    with connect(db) as conn:
        first = demo_data.generate(2_500, conn=conn, seed=11, now=now)
        second = demo_data.generate(2_500, conn=conn, seed=11, now=now)
        other = demo_data.generate(2_500, conn=conn, seed=12, now=now)
    assert first == second
    assert {r.id for r in first}.isdisjoint({r.id for r in other})
    assert [r.problem_code for r in first] != [r.problem_code for r in other]


def test_many_tenants_and_codes_are_deterministic_too(db, now: datetime) -> None:
    with connect(db) as conn:
        first = demo_data.generate(2_500, conn=conn, seed=11, now=now, tenants=50, codes=60)
        second = demo_data.generate(2_500, conn=conn, seed=11, now=now, tenants=50, codes=60)
        other = demo_data.generate(2_500, conn=conn, seed=12, now=now, tenants=50, codes=60)
    assert first == second
    assert [r.problem_code for r in first] != [r.problem_code for r in other]


def test_ids_are_uuid7_in_time_order(datasets) -> None:
    rows = datasets[SCALES[0]]
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    for row in rows:
        assert row.id.version == 7 and row.run_id.version == 7
        assert ids.timestamp_of(row.id) == row.ts.replace(microsecond=row.ts.microsecond // 1000 * 1000)
    assert len({r.id for r in rows}) == len(rows)


def test_every_row_fits_the_contract(datasets) -> None:
    for rows in datasets.values():
        for row in rows:
            row.validate()


# --- shape ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_runs_tenants_codes_and_span(datasets, now: datetime, scale: int) -> None:
    rows = datasets[scale]
    runs = runs_of(rows)
    assert len(runs) == scale
    assert all(1 <= len(v) <= 2 for v in runs.values())
    assert {r.tenant_id for r in rows} >= {"acme", "globex", "initech"}
    clean = sum(v[0].problem_code is None for v in runs.values()) / scale
    assert 0.40 <= clean <= 0.60
    codes = Counter(r.problem_code for r in findings(rows))
    assert len(codes) == 20
    shares = sorted(codes.values(), reverse=True)
    assert shares[0] > 2 * statistics.median(shares)  # skewed popularity
    assert min(r.ts for r in rows) <= now - timedelta(days=184)
    assert max(r.ts for r in rows) <= now
    assert any(r.ts >= now - timedelta(hours=1) for r in rows)
    today = now.date()
    assert any(r.ts.date() == today for r in rows)


@pytest.mark.parametrize("scale", [SCALES[1], WIDE])
def test_codes_fixes_environments_and_messages_are_real(datasets, scale) -> None:
    catalog = load_catalog()
    for row in datasets[scale]:
        assert canonical(row.environment) == row.environment
        if row.problem_code is None:
            assert row.fix_suggestion is None and row.error_msg is None and row.confidence is None
            continue
        problem = catalog.problem(row.problem_code)
        assert row.fix_suggestion in {f.id for f in problem.fixes}
        assert row.error_msg is not None and len(row.error_msg) <= 300
        assert any(p.search(row.error_msg) for p in problem.patterns), (row.problem_code, row.error_msg)
        assert redact(row.error_msg) == row.error_msg  # already redacted


def test_many_tenants_and_codes_shape(datasets, now: datetime) -> None:
    """The scale benchmark's shape (50 tenants, 60 codes): every tenant and code appears, with skew."""
    rows = datasets[WIDE]
    runs = runs_of(rows)
    assert len(runs) == WIDE_RUNS
    per_tenant = Counter(v[0].tenant_id for v in runs.values())
    assert set(per_tenant) == {t.name for t in demo_data.demo_tenants(WIDE_TENANTS)}
    assert per_tenant.most_common(1)[0][0] == "acme"
    assert per_tenant["acme"] > 8 * min(per_tenant.values())  # a few large teams, a long tail
    assert 0.05 <= per_tenant["acme"] / WIDE_RUNS <= 0.15
    codes = Counter(r.problem_code for r in findings(rows))
    assert set(codes) == set(demo_data.demo_codes(WIDE_CODES))
    shares = sorted(codes.values(), reverse=True)
    assert shares[0] > 5 * statistics.median(shares)
    clean = sum(v[0].problem_code is None for v in runs.values()) / WIDE_RUNS
    assert 0.40 <= clean <= 0.60
    assert any(r.ts >= now - timedelta(hours=1) for r in rows)
    assert min(r.ts for r in rows) <= now - timedelta(days=184)


def test_tenants_beyond_the_named_eight() -> None:
    tenants = demo_data.demo_tenants(50)
    assert tenants[:8] == demo_data.demo_tenants(8)  # the named ones do not change
    assert [t.name for t in tenants[:8]] == list(demo_data.TENANT_NAMES)
    assert [t.name for t in tenants[8:]] == [f"team-{i:02d}" for i in range(9, 51)]
    tail = [t.weight for t in tenants[8:]]
    assert tail == sorted(tail, reverse=True) and tail[0] > 4 * tail[-1]
    assert all(-12 <= t.utc_offset_h <= 14 for t in tenants)
    assert len({t.utc_offset_h for t in tenants}) >= 8
    for bad in (0, demo_data.MAX_TENANTS + 1):
        with pytest.raises(ValueError, match="tenants"):
            demo_data.demo_tenants(bad)


def test_codes_beyond_the_twenty_come_from_the_catalog() -> None:
    catalog = load_catalog()
    assert demo_data.demo_codes() == demo_data.DEMO_CODES
    codes = demo_data.demo_codes(60)
    assert codes[:20] == demo_data.DEMO_CODES and len(set(codes)) == 60
    assert all(len(catalog.problem(code).fixes) >= 2 for code in codes)
    assert [p.code for p in demo_data.demo_problems(codes=60)] == list(codes)
    eligible = sum(len(p.fixes) >= 2 for p in catalog)
    assert demo_data.demo_codes(eligible)
    for bad in (0, eligible + 1):
        with pytest.raises(ValueError, match="codes"):
            demo_data.demo_codes(bad)


def test_every_catalog_problem_has_a_realistic_message() -> None:
    """Any --codes count gets real error texts: each is classified as its own problem."""
    rng = random.Random(3)
    for problem in load_catalog():
        for _ in range(5):
            text = demo_data.error_message(problem.code, rng)
            assert text is not None, problem.code
            assert len(text) <= 300 and redact(text) == text, problem.code
            assert [f.code for f in classify(text)][:1] == [problem.code], text


def test_true_success_rates_differ_from_priors() -> None:
    problems = demo_data.demo_problems()
    assert len(problems) == 20
    best_not_first = 0
    for problem in problems:
        for tenant_rates in problem.true_rates:
            assert all(abs(rate - prior) > 0.005 for rate, prior in zip(tenant_rates, problem.priors, strict=True))
        best_not_first += max(range(len(problem.fixes)), key=problem.true_rates[0].__getitem__) != 0
    assert 3 <= best_not_first <= 17


# --- health checks and alerts ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [*SCALES, WIDE])
def test_at_most_ten_problems_a_day(datasets, scale: int) -> None:
    per_day: dict[date, set[str]] = defaultdict(set)
    for row in findings(datasets[scale]):
        per_day[row.ts.date()].add(row.problem_code)
    assert max(len(codes) for codes in per_day.values()) <= 10


@pytest.mark.parametrize("scale", [*SCALES, WIDE])
def test_no_problem_dominates_a_week(datasets, scale: int) -> None:
    rows = datasets[scale]
    runs_per_day: Counter = Counter(v[0].ts.date() for v in runs_of(rows).values())
    per_day_code: Counter = Counter((r.ts.date(), r.problem_code) for r in findings(rows))
    days = sorted(runs_per_day)
    codes = {code for _, code in per_day_code}
    for end in range(6, len(days)):
        window = [
            days[0] + timedelta(days=d) for d in range((days[end] - days[0]).days - 6, (days[end] - days[0]).days + 1)
        ]
        total = sum(runs_per_day[d] for d in window)
        worst = max(sum(per_day_code[(d, code)] for d in window) for code in codes)
        assert worst <= 0.20 * total, (days[end], worst, total)


@pytest.mark.parametrize("scale", [*SCALES, WIDE])
def test_episodes_resolve_fast_and_recur(datasets, scale: int) -> None:
    """Episodes as v_ttr_days defines them: first sighting -> first fixed/manual recorded after it."""
    by_key: dict[tuple[str, str], list[RunRow]] = defaultdict(list)
    for row in findings(datasets[scale]):
        by_key[(row.tenant_id, row.problem_code)].append(row)
    ttr_days, recurring = [], 0
    for rows in by_key.values():
        ends = sorted(r.resolved_at for r in rows if r.resolution in ("fixed", "manual"))
        episodes, i = 0, 0
        while i < len(rows):
            start = rows[i].ts
            end = next((e for e in ends if e > start), None)
            if end is None:
                break
            ttr_days.append((end - start) / timedelta(days=1))
            episodes += 1
            while i < len(rows) and rows[i].ts <= end:
                i += 1
        recurring += episodes > 1
    assert statistics.median(ttr_days) < 1.0
    assert recurring >= 10


def test_the_weeks_top_problem_is_still_seen_in_the_last_day(datasets, now: datetime) -> None:
    """The week's dominant problems are still around in the last day (the generator's flare-up), so
    alert 1's "review recent occurrences" usually has rows to show. The flare-up picks its codes 20 h
    before `now` from a rolling 7 x 24 h window, so the calendar week's very top code can differ:
    one of the three most frequent must be seen."""
    rows = findings(datasets[SCALES[1]])
    week = Counter(r.problem_code for r in rows if r.ts.date() >= now.date() - timedelta(days=7))
    recent = {r.problem_code for r in rows if r.ts >= now - timedelta(hours=24)}
    assert {code for code, _ in week.most_common(3)} & recent


@pytest.mark.parametrize("scale", [*SCALES, WIDE])
def test_thirty_day_confidence_is_healthy(datasets, now: datetime, scale: int) -> None:
    recent = [r.confidence for r in datasets[scale] if r.fix_suggestion and r.ts >= now - timedelta(days=30)]
    assert 0.70 <= statistics.fmean(recent) <= 0.90


def test_outcomes_come_hours_to_days_after_the_run(datasets, now: datetime) -> None:
    rows = findings(datasets[SCALES[1]])
    delays = [(r.resolved_at - r.ts) / timedelta(hours=1) for r in rows if r.resolved_at]
    assert min(delays) > 0 and statistics.median(delays) < 24 and max(delays) <= 24 * 5
    assert Counter(r.resolution for r in rows if r.resolution).keys() == {"fixed", "failed", "manual"}
    assert all(r.resolved_at <= now for r in rows if r.resolved_at)
    assert any(r.resolution is None and r.fix_suggestion for r in rows if r.ts >= now - timedelta(hours=6))


# --- loaded into the database ---------------------------------------------------------------------


def test_load_then_reload_adds_nothing(db, loaded, now: datetime) -> None:
    report, rows = loaded
    assert report.inserted == len(rows) == report.rows and report.skipped == 0
    again = demo_data.load_demo(db, 6_000, seed=3, now=now)
    assert again.inserted == 0 and again.skipped == len(rows)


def test_stored_confidence_is_fix_confidence_of_the_history_before_the_run(db, loaded) -> None:
    """Recompute in SQL: outcomes recorded (resolved_at) before each sampled run's ts."""
    _, rows = loaded
    with_fix = [r for r in rows if r.fix_suggestion]
    sample = random.Random(5).sample(with_fix, 150) + with_fix[-50:]
    with connect(db) as conn:
        got = conn.execute(
            """
            with mine as (select * from devdiag.diag_run where id = any(%(all)s)),
            sampled as (select * from mine where id = any(%(sample)s))
            select s.id, s.confidence, devdiag.fix_confidence(
                       c.prior,
                       count(o.id) filter (where o.resolution = 'fixed'),
                       count(o.id),
                       count(o.id) filter (where o.resolution = 'fixed' and o.tenant_id = s.tenant_id),
                       count(o.id) filter (where o.tenant_id = s.tenant_id))
            from sampled s
            join devdiag.fix_catalog c on c.problem_code = s.problem_code and c.fix_id = s.fix_suggestion
            left join mine o on o.problem_code = s.problem_code and o.fix_suggestion = s.fix_suggestion
                and o.resolution is not null and o.resolved_at < s.ts
            group by s.id, s.confidence, c.prior
            """,
            {"all": [r.id for r in rows], "sample": [r.id for r in sample]},
        ).fetchall()
    assert len(got) == len({r.id for r in sample})
    for _, stored, recomputed in got:
        assert stored == pytest.approx(recomputed, rel=1e-12)
    assert len({round(stored, 6) for _, stored, _ in got}) > 20  # learned, not a constant


def test_thirty_day_average_confidence_in_the_database(db, loaded) -> None:
    _, rows = loaded
    with connect(db) as conn:
        avg = conn.execute(
            "select avg(confidence) from devdiag.diag_run "
            "where id = any(%s) and fix_suggestion is not null and ts >= now() - interval '30 days'",
            ([r.id for r in rows],),
        ).fetchone()[0]
    assert avg >= 0.70


@pytest.mark.slow
def test_large_demo_keeps_its_shape(db, now: datetime) -> None:
    with connect(db) as conn:
        rows = demo_data.generate(200_000, conn=conn, now=now)
    runs = runs_of(rows)
    assert 0.40 <= sum(v[0].problem_code is None for v in runs.values()) / len(runs) <= 0.60
    per_day: dict[date, set[str]] = defaultdict(set)
    for row in findings(rows):
        per_day[row.ts.date()].add(row.problem_code)
    assert max(len(codes) for codes in per_day.values()) <= 10
    recent = [r.confidence for r in rows if r.fix_suggestion and r.ts >= now - timedelta(days=30)]
    assert statistics.fmean(recent) >= 0.70
