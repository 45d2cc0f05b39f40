"""What of docs/scaling.md (the path to Citus) can be checked on one PostgreSQL, without Citus.

Citus runs a join or a window function on the workers, shard by shard, only when it includes the
distribution column (tenant_id) of the distributed tables on both sides; anything else is planned
through the coordinator (a reference table, or a broadcast intermediate result), which is correct
but does not scale out. These tests list every join condition and every window partition of the
models, and fail when one lacks tenant_id and is not among those that docs/scaling.md names and
explains, so a new non-co-located join cannot slip in unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DOC = ROOT / "docs" / "scaling.md"

# (model, joined relation or window, why it is acceptable or what changes on Citus): each must be
# named in docs/scaling.md.
NOT_CO_LOCATED = {
    ("int_fix_ranking", "join problem_fixes"): "catalog fixes: the reference table fix_catalog",
    ("int_fix_ranking", "join all_tenant_outcomes"): "the all-tenants '*' re-aggregation",
    ("int_problem_episodes", "join tenant_problems"): "tenant_problem_id must carry tenant_id on Citus",
    ("int_problem_episodes", "over ()"): "tenant_problem_id: row_number() over () must become per tenant",
    ("int_problem_episodes", "over (partition by tenant_problem_id"): "partition by tenant_id, problem_code",
    ("int_problem_environments", "join {{ this }} as known_pairs"): "all-tenant pairs: a coordinator table",
}

_JOIN = re.compile(
    r"\bjoin\s+(?P<rel>[\w.{}()' ]+?)\s+on\b(?P<cond>.*?)(?=\n\s*(?:left\s+|inner\s+|full\s+|cross\s+)?join\b|"
    r"\n\s*(?:where|group by|order by|union|\)|select)\b|\n\s*\)|\Z)",
    re.S | re.I,
)
_WINDOW = re.compile(r"\bover\s*\((?P<body>[^)]*)\)", re.S | re.I)


def _sql(path: Path) -> str:
    text = re.sub(r"\{#.*?#\}", "", path.read_text(), flags=re.S)  # jinja comments
    return re.sub(r"--[^\n]*", "", text)


# health_checks joins only catalog lookups (pg_class, pg_namespace, the expected views and indexes):
# on Citus those run on the coordinator, no distributed table is joined.
COORDINATOR_ONLY = {"health_checks"}


def _model_files() -> list[Path]:
    return sorted(
        p
        for p in MODELS.rglob("*.sql")
        if p.parent.name in {"intermediate", "marts", "staging"} and p.stem not in COORDINATOR_ONLY
    )


def findings() -> set[tuple[str, str]]:
    found = set()
    for path in _model_files():
        sql = _sql(path)
        for m in _JOIN.finditer(sql):
            if "tenant_id" not in m.group("cond"):
                found.add((path.stem, f"join {m.group('rel').strip()}"))
        for m in _WINDOW.finditer(sql):
            body = re.sub(r"\b\w+\.(\w+)", r"\1", " ".join(m.group("body").split()))  # drop qualifiers
            partition = re.match(r"partition by (.*?)(?: order by|$)", body)
            if not partition:
                found.add((path.stem, "over ()" if not body else f"over ({body}"))
            elif "tenant_id" not in partition.group(1):
                found.add((path.stem, f"over (partition by {partition.group(1).strip()}"))
    return found


def test_the_scanner_sees_the_joins_it_should() -> None:
    joins = sum(len(_JOIN.findall(_sql(p))) for p in _model_files())
    assert joins >= 5  # int_fix_ranking 3, int_problem_episodes 2 at the time of writing


def test_every_join_and_window_is_co_located_on_tenant_id_or_documented() -> None:
    undocumented = findings() - set(NOT_CO_LOCATED)
    assert not undocumented, (
        f"joins/windows without tenant_id: {sorted(undocumented)}: co-locate them on tenant_id, or explain "
        "in docs/scaling.md and NOT_CO_LOCATED why Citus can run them"
    )


def test_the_documented_exceptions_still_exist_and_are_in_the_doc() -> None:
    assert set(NOT_CO_LOCATED) <= findings(), sorted(set(NOT_CO_LOCATED) - findings())
    doc = " ".join(DOC.read_text().split())
    for model, what in NOT_CO_LOCATED:
        named = what.removeprefix("over (") if what.startswith("over (p") else what
        assert model in doc and named in doc, f"docs/scaling.md does not explain {model}: {named}"
