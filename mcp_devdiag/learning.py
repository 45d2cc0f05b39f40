"""Learned fix rankings: what the server suggests, and in which order.

Confidence. The confidence shown with a fix is ``devdiag.fix_confidence`` (macros/fix_confidence.sql),
the one learning formula: a Beta posterior mean from the catalog prior, shrunk from all tenants to
this tenant. It is computed in SQL, never in Python.

Counting, exactly once. The tenant's own outcomes are counted live from the raw table on every
read (index-only range scans of ``ix_diag_run_outcomes``, one per fix asked about), so an outcome
counts the moment it is recorded, and a changed one (``failed`` then ``fixed``: the latest wins)
counts once, as it is now. Other tenants' outcomes come from ``devdiag.v_fix_ranking`` as of its
last ``dbt build``: its all-tenants counts less its counts of this tenant. No outcome is in both
parts, whenever it was recorded, replayed from a spool or rebuilt; there is no time boundary to get
wrong. When the view is missing or cannot be read, other tenants' outcomes are counted from the raw
table (what the connection may see: row-level security shows the writer its own tenant only).
Fallback order for a tenant: its own outcomes, all tenants' outcomes, the catalog prior; the formula
does that weighting itself.

Exploration. Ordering fixes by posterior mean alone would never try a fix whose prior is low: a
fix that is never suggested could never prove itself. ``diagnose`` therefore orders fixes by
Thompson sampling: each fix draws θ ~ Beta(c·ν, (1−c)·ν), c its confidence, and suggests the fixes
in the order of their draws, so a fix comes first with the probability that it is the best one.
ν, the pseudo-outcomes behind c, follows the formula's own two levels: the all-tenants estimate
rests on k + n_all outcomes (k the prior strength) but counts for at most m (the tenant strength)
at the tenant level, where the tenant's own n_t outcomes add: ν = min(m, k + n_all) + n_t. k and m
are read from the formula itself (fix_confidence(0, 1, 1, 0, 0) = 1/(k+1), fix_confidence(0, 0, 0,
1, 1) = 1/(m+1)), never configured twice. With no outcomes anywhere, θ follows the catalog prior at
its declared strength; uncertain fixes get tried, and a clearly better fix wins quickly.
Simulated (tests/python/test_learning.py), this finds the truly best fix after 30 outcomes per
problem for ~94% of problems, against ~92% with ν = m + n_t; plain ranking by c gets stuck on the
prior's favourite. ``suggest_fixes`` shows the ranking itself (by confidence), without sampling.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg

from devdiag_db.db import array_literal, in_transaction
from mcp_devdiag.catalog import Catalog, Fix

log = logging.getLogger(__name__)

Source = Literal["tenant", "all_tenants", "catalog"]
_ARRAYS_KEPT = 1024  # sets of fixes whose catalog arrays are kept (a diagnose finds one to three problems)
VIEW_RETRY_S = 60.0  # after the view failed, read raw outcomes for this long before trying it again

# The tenant's own outcomes of the fixes asked about, counted live: one index-only range scan of
# ix_diag_run_outcomes (problem_code, fix_suggestion, tenant_id) per fix. Row-level security shows
# the writer its tenant's rows only, so this is all it could count live anyway.
_LIVE = """
    select
        cat.problem_code,
        cat.fix_id,
        count(d.resolution) filter (where d.resolution = 'fixed') as successes_tenant,
        count(d.resolution) as attempts_tenant
    from cat
    left join devdiag.diag_run as d
        on
            d.problem_code = cat.problem_code
            and d.fix_suggestion = cat.fix_id
            and d.tenant_id = %(tenant)s
            and d.resolution is not null
    group by 1, 2
"""

_CATALOG = """
    select * from unnest(%(codes)s::text[], %(fix_ids)s::text[], %(priors)s::float8[])
        as c (problem_code, fix_id, prior)
"""

# all tenants = the build's all-tenants count - the build's count of this tenant + this tenant's live count
_SCORE = """
select
    cat.problem_code,
    cat.fix_id,
    f.successes_tenant,
    f.attempts_tenant,
    l.successes_others + f.successes_tenant as successes_all,
    l.attempts_others + f.attempts_tenant as attempts_all,
    devdiag.fix_confidence(
        cat.prior,
        (l.successes_others + f.successes_tenant)::bigint,
        (l.attempts_others + f.attempts_tenant)::bigint,
        f.successes_tenant::bigint,
        f.attempts_tenant::bigint
    ) as confidence,
    1.0 / devdiag.fix_confidence(0, 0, 0, 1, 1) - 1 as tenant_strength,
    1.0 / devdiag.fix_confidence(0, 1, 1, 0, 0) - 1 as prior_strength
from cat
inner join live as f on f.problem_code = cat.problem_code and f.fix_id = cat.fix_id
cross join lateral (
    select
        coalesce(sum(o.successes_others), 0)::bigint as successes_others,
        coalesce(sum(o.attempts_others), 0)::bigint as attempts_others
    from others as o
    where o.problem_code = cat.problem_code and o.fix_id = cat.fix_id
) as l
"""

# Other tenants' outcomes as of the last build, from this tenant's rows or else the all-tenants row ('*').
_FROM_VIEW = (
    "with cat as ("
    + _CATALOG
    + """),
others as materialized (
    select distinct on (r.problem_code, r.fix_id)
        r.problem_code,
        r.fix_id,
        r.successes_all - case when r.tenant_id = %(tenant)s then r.successes_tenant else 0 end as successes_others,
        r.attempts_all - case when r.tenant_id = %(tenant)s then r.attempts_tenant else 0 end as attempts_others
    from devdiag.v_fix_ranking as r
    where r.tenant_id in (%(tenant)s, '*') and r.problem_code = any(%(problems)s::text[])
    order by r.problem_code, r.fix_id, r.tenant_id = '*'
),
live as ("""
    + _LIVE
    + ")"
    + _SCORE
)

# No usable view: other tenants' outcomes as far as this connection may see them (none for the writer).
_FROM_RAW = (
    "with cat as ("
    + _CATALOG
    + """),
others as materialized (
    select
        d.problem_code,
        d.fix_suggestion as fix_id,
        count(*) filter (where d.resolution = 'fixed') as successes_others,
        count(*) as attempts_others
    from devdiag.diag_run as d
    where
        d.resolution is not null
        and d.fix_suggestion is not null
        and d.problem_code = any(%(problems)s::text[])
        and d.tenant_id <> %(tenant)s
    group by 1, 2
),
live as ("""
    + _LIVE
    + ")"
    + _SCORE
)

# Reasons to read the raw table instead of the view.
_VIEW_UNUSABLE = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.InsufficientPrivilege,
)


class ViewChanged(Exception):
    """v_fix_ranking stopped answering inside the caller's transaction, which it aborted: run that
    transaction again (the learner then reads the raw outcomes, and the view again in a minute)."""


@dataclass(frozen=True)
class FixScore:
    problem_code: str
    fix: Fix
    confidence: float
    successes_tenant: int = 0
    attempts_tenant: int = 0
    successes_all: int = 0
    attempts_all: int = 0
    tenant_strength: float = 0.0  # m of the formula; 0 when the database was not asked
    prior_strength: float = 0.0  # k of the formula

    @property
    def source(self) -> Source:
        """Whose outcomes the confidence rests on: the tenant's, all tenants', or none (the prior)."""
        if self.attempts_tenant:
            return "tenant"
        return "all_tenants" if self.attempts_all else "catalog"

    def sample(self, rng: random.Random) -> float:
        """A Thompson draw from Beta(c·ν, (1−c)·ν), ν = min(m, k + n_all) + n_tenant (module doc)."""
        strength = min(self.tenant_strength, self.prior_strength + self.attempts_all) + self.attempts_tenant
        if strength <= 0:
            return self.confidence
        alpha = max(self.confidence * strength, 1e-3)
        beta = max((1.0 - self.confidence) * strength, 1e-3)
        return rng.betavariate(alpha, beta)


def _rank_key(score: FixScore, order: int) -> tuple:
    # Same tie-breaks as v_fix_ranking: confidence, the tenant's outcomes, all outcomes, catalog order.
    return (-score.confidence, -score.attempts_tenant, -score.attempts_all, order)


def ranked(scores: Sequence[FixScore]) -> list[FixScore]:
    """Best first by confidence (deterministic)."""
    return [s for _, s in sorted(enumerate(scores), key=lambda p: _rank_key(p[1], p[0]))]


def explore(scores: Sequence[FixScore], rng: random.Random) -> list[FixScore]:
    """Thompson order: each fix first with the probability that it is the best (see module doc)."""
    draws = [(score.sample(rng), -i, score) for i, score in enumerate(scores)]
    return [score for _, _, score in sorted(draws, key=lambda d: (d[0], d[1]), reverse=True)]


class Learner:
    """Reads rankings for one catalog. Thread-safe enough: its state is a cache of booleans and a timestamp."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._view_retry_at = 0.0
        self.last_path: Literal["view", "raw"] | None = None  # which path the last read took
        self._warned = False
        self._view_answered = False
        self._catalog_arrays: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    def priors(self, codes: Sequence[str]) -> dict[str, list[FixScore]]:
        """The catalog's priors, for when the database cannot be asked (fix_confidence with no outcomes)."""
        return {code: [FixScore(code, fix, fix.prior) for fix in self.catalog.problem(code).fixes] for code in codes}

    def scores(self, conn: psycopg.Connection, tenant: str, codes: Sequence[str]) -> dict[str, list[FixScore]]:
        """Every catalog fix of ``codes`` with its learned confidence, best first per problem."""
        codes = list(dict.fromkeys(codes))
        if not codes:
            return {}
        problems = [self.catalog.problem(code) for code in codes]
        found: dict[str, list[FixScore]] = {code: [] for code in codes}
        for score in self._scores(conn, tenant, tuple((p.code, f) for p in problems for f in p.fixes)):
            found[score.problem_code].append(score)
        order = {f.id: i for p in problems for i, f in enumerate(p.fixes)}
        return {code: ranked(sorted(found[code], key=lambda s: order[s.fix.id])) for code in codes}

    def confidence(
        self, conn: psycopg.Connection, tenant: str, pairs: Iterable[tuple[str, str | None]]
    ) -> dict[tuple[str, str | None], float]:
        """The learned confidence of just these (problem, fix) pairs, the catalog's fixes among them:
        what an outcome's answer shows, without counting the outcomes of the problem's other fixes
        (a fix's confidence depends on its own outcomes only)."""
        wanted = set(pairs)
        fixes = tuple(
            (code, fix)
            for code in dict.fromkeys(code for code, _ in wanted if code in self.catalog.problems)
            for fix in self.catalog.problem(code).fixes
            if (code, fix.id) in wanted
        )
        return {(s.problem_code, s.fix.id): s.confidence for s in self._scores(conn, tenant, fixes)} if fixes else {}

    def _scores(self, conn: psycopg.Connection, tenant: str, fixes: tuple[tuple[str, Fix], ...]) -> list[FixScore]:
        rows = self._query(conn, {"tenant": tenant, **self._arrays(fixes)})
        by_id = {(code, f.id): f for code, f in fixes}
        return [
            FixScore(code, by_id[code, fix_id], float(confidence), s_t, a_t, s_a, a_a, float(m), float(k))
            for code, fix_id, s_t, a_t, s_a, a_a, confidence, m, k in rows
        ]

    def _arrays(self, fixes: tuple[tuple[str, Fix], ...]) -> dict[str, str]:
        """The catalog's side of the query for these fixes, as array literals: made once per set of
        fixes (a team's errors recur), not adapted element by element on every call."""
        key = tuple((code, fix.id) for code, fix in fixes)
        arrays = self._catalog_arrays.get(key)
        if arrays is None:
            arrays = {
                "problems": array_literal(dict.fromkeys(code for code, _ in fixes)),
                "codes": array_literal(code for code, _ in fixes),
                "fix_ids": array_literal(fix.id for _, fix in fixes),
                "priors": array_literal(fix.prior for _, fix in fixes),
            }
            if len(self._catalog_arrays) < _ARRAYS_KEPT:
                self._catalog_arrays[key] = arrays
        return arrays

    def _query(self, conn: psycopg.Connection, params: dict) -> list[tuple]:
        if time.monotonic() >= self._view_retry_at:
            # Inside the caller's transaction a failed read would abort it: a savepoint guards the read
            # until the view has answered once, then it is read directly (two round trips fewer a tool
            # call) and, should it go away, ViewChanged has the caller run its transaction again.
            guarded = in_transaction(conn) and not self._view_answered
            try:
                with conn.transaction() if guarded else contextlib.nullcontext():
                    rows = conn.execute(_FROM_VIEW, params).fetchall()
                self._view_answered = True
                self.last_path = "view"
                return rows
            except _VIEW_UNUSABLE as error:
                # Said once at WARNING; the retries every minute only at DEBUG.
                log.log(
                    logging.DEBUG if self._warned else logging.WARNING,
                    "v_fix_ranking unusable (%s): counting raw outcomes, trying the view again in %gs",
                    str(error).strip().splitlines()[0],
                    VIEW_RETRY_S,
                )
                self._warned = True
                self._view_retry_at = time.monotonic() + VIEW_RETRY_S
                self._view_answered = False
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:  # read unguarded
                    raise ViewChanged(str(error).strip().splitlines()[0]) from None
        self.last_path = "raw"
        return conn.execute(_FROM_RAW, params).fetchall()
