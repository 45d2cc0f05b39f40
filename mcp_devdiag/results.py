"""Typed results of the MCP tools: what a model reads back (structured content + output schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Recorded = Literal["database", "spool", "dropped"]
Severity = Literal["critical", "error", "warning"]  # catalog.SEVERITIES
Resolution = Literal["fixed", "manual", "failed"]  # writer.RESOLUTIONS
Source = Literal["tenant", "all_tenants", "catalog"]


class FixSuggestion(BaseModel):
    id: str = Field(description="Stable fix id; pass it to record_outcome as fix_id.")
    title: str
    steps: list[str] = Field(description="What to do, in order; <name> placeholders filled from the finding's details.")
    confidence: float = Field(description="Learned probability (0..1) that this fix resolves the problem.")
    outcomes: int = Field(description="Recorded outcomes behind the confidence (this tenant's, else all tenants').")
    source: Source = Field(description="Whose outcomes the confidence rests on; 'catalog' means the prior only.")
    applies: str | None = Field(
        default=None,
        description="When the fix applies (None: always). diagnose returns only fixes that apply to the finding; "
        "suggest_fixes, which has no error text, lists every fix with its condition.",
    )


class Finding(BaseModel):
    finding_id: str = Field(description="Id of this finding; record_outcome accepts it to resolve one problem.")
    code: str = Field(description="Problem code from the catalog (UPPER_SNAKE).")
    title: str
    category: str
    severity: Severity
    evidence: list[str] = Field(description="The text that matched (secrets masked).")
    details: dict[str, str] = Field(
        default_factory=dict,
        description="What the message says that matters (module, package, port, host, file, branch, command...), "
        "as captured; module_kind is own, stdlib or third_party. Only plain values, never secrets.",
    )
    suggested_fix: str | None = Field(description="The fix to try first; outcomes are credited to it.")
    fixes: list[FixSuggestion] = Field(description="All known fixes, in the order to try them.")


class ProbeCheck(BaseModel):
    name: str
    status: Literal["ok", "warn", "fail", "skipped"]
    detail: str


class ProbeSummary(BaseModel):
    url: str
    status: Literal["done", "refused"]
    detail: str | None = Field(default=None, description="Why the probe was refused, when it was.")
    final_url: str | None = None
    http_status: int | None = None
    checks: list[ProbeCheck] = Field(default_factory=list)


class SimilarRun(BaseModel):
    run_id: str = Field(description="An earlier run of this team with an error like this one.")
    code: str = Field(description="Its problem code, or UNRECOGNISED when no catalog entry matched it.")
    similarity: float = Field(description="Trigram similarity (0..1) of the two errors' normalised signatures.")
    times_seen: int = Field(description="Runs of this team with the same normalised error.")
    last_seen: str = Field(description="When it was last seen (ISO 8601, UTC).")
    age: str = Field(description="How long ago, e.g. '3 days ago'.")
    outcome: Resolution | None = Field(description="The outcome recorded for it: fixed, manual, failed, or none yet.")
    note: str | None = Field(description="What fixed it, in the words of whoever recorded the outcome (redacted).")


class DiagnoseResult(BaseModel):
    run_id: str = Field(description="Id of this diagnostic run; pass it to record_outcome once the user tried a fix.")
    tenant: str
    environment: str
    findings: list[Finding] = Field(description="Problems found, most relevant first; empty when nothing matched.")
    unrecognised: bool = Field(
        default=False,
        description="True when error text was given but matched no known problem: stored as UNRECOGNISED, not as a "
        "clean run. Look at `similar` for what fixed it before; once solved, record_outcome with resolution "
        "'manual' and a note keeps what worked for the team.",
    )
    similar: list[SimilarRun] = Field(
        default_factory=list,
        description="Up to three earlier runs of this team with the most similar error, nearest first, with their "
        "outcome and note: the team's memory, for known and unknown errors alike.",
    )
    probe: ProbeSummary | None = None
    recorded: Recorded = Field(
        description="Where the run was stored: the database, the local spool (database away; replayed later) "
        "or dropped (spool full)."
    )
    truncated: bool = Field(description="True when the input or the stored error text was cut to the caps.")
    notes: list[str] = Field(default_factory=list, description="Anything the user should know about this result.")


class OutcomeFinding(BaseModel):
    finding_id: str
    problem_code: str
    fix_id: str | None
    resolution: str | None
    confidence_now: float | None = Field(description="The fix's learned confidence after this outcome.")


class OutcomeResult(BaseModel):
    recorded: Recorded
    resolution: Resolution
    updated: int = Field(description="Findings changed by this call (0 when it was already recorded).")
    note: str | None = Field(default=None, description="The note as kept for the team (redacted, capped).")
    findings: list[OutcomeFinding] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class SuggestResult(BaseModel):
    code: str
    title: str
    severity: Severity
    source: Source = Field(description="Whose outcomes the ranking rests on overall.")
    fixes: list[FixSuggestion] = Field(description="Best first by learned confidence.")
    notes: list[str] = Field(default_factory=list)


class CatalogProblem(BaseModel):
    code: str
    title: str
    category: str
    severity: Severity
    fix_ids: list[str]


class ProblemList(BaseModel):
    problems: list[CatalogProblem]


class RecentProblem(BaseModel):
    code: str
    title: str
    count: int = Field(description="Findings of this problem in the window.")
    share: float = Field(description="Its share of all findings of the tenant in the window (0..1).")
    last_day: str = Field(description="Last UTC day it was seen (YYYY-MM-DD).")


class RecentResult(BaseModel):
    tenant: str
    days: int
    problems: list[RecentProblem]
    notes: list[str] = Field(default_factory=list)
