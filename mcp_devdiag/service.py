"""What the tools do, without the MCP wiring: diagnose, record outcomes, suggest, list, report.

Input hygiene, in this order, before anything is classified, stored or returned: NUL bytes are
removed and lone surrogates (invalid UTF-8 that arrived as JSON escapes) become U+FFFD; input over
``HARD_INPUT_LIMIT`` (every argument counted, the URL and origin too) is refused; then only what is
kept is redacted: input beyond ``classifier.MAX_INPUT_CHARS`` is cut to its head and tail (errors sit
at the end of a log), each redacted with a margin of whole lines before the final cut, so a cut never
splits a secret and a megabyte costs what a tenth of it does. Stored error text is capped at 4,000
characters. Text is only ever a query parameter or COPY data, never SQL. A failure that is the
caller's to fix raises ``ToolError`` with one line saying what to pass instead; nothing is written
before every check has passed, and the rows of a run are written in one transaction (never half a run).

Every call has a time budget (``ServerSettings.call_budget_s``): the URL probe gets what is left of it,
and each database statement of the call is cut off by ``statement_timeout`` when the budget is spent.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import psycopg
from mcp.server.mcpserver.exceptions import ToolError

from devdiag_db.db import DatabaseUnavailable
from mcp_devdiag import classifier, details, memory, probes, writer
from mcp_devdiag.catalog import UNRECOGNISED, Catalog, Problem
from mcp_devdiag.ids import uuid7
from mcp_devdiag.learning import FixScore, Learner, ViewChanged, explore, ranked
from mcp_devdiag.recorder import Recorder, Session, WriteResult
from mcp_devdiag.redaction import redact
from mcp_devdiag.results import (
    CatalogProblem,
    DiagnoseResult,
    Finding,
    FixSuggestion,
    OutcomeFinding,
    OutcomeResult,
    ProbeCheck,
    ProbeSummary,
    ProblemList,
    RecentProblem,
    RecentResult,
    Resolution,
    SimilarRun,
    SuggestResult,
)
from mcp_devdiag.settings import ServerSettings
from mcp_devdiag.spool import Outcome
from mcp_devdiag.writer import ERROR_MSG_CAP, RunRow

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_SURROGATES = re.compile(r"[\ud800-\udfff]")
_CUT = "\n[... {n:,} characters cut ...]\n"
_ORIGIN_IN_TEXT = re.compile(r"from origin '(https?://[^'\s]+)'", re.IGNORECASE)
# Above this the input is refused rather than cut (every argument counted, URL and origin too).
HARD_INPUT_LIMIT = 10 * classifier.MAX_INPUT_CHARS
# How far past a cut the redacted pieces reach: more than any one-line secret is long.
_MARGIN = 4_096
# Budget kept back from the probe for the database work that follows it.
_DB_RESERVE_S = 1.0
_VIEW_UNUSABLE = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InsufficientPrivilege)


def clean(text: str | None) -> str | None:
    """NUL bytes out, lone surrogates replaced; None for empty or blank text."""
    if text is None:
        return None
    text = _SURROGATES.sub("\ufffd", text.replace("\x00", ""))
    return text if text.strip() else None


def head_tail(text: str, limit: int) -> tuple[str, bool]:
    """``text`` within ``limit`` characters: a fifth from the head, the rest from the tail."""
    if len(text) <= limit:
        return text, False
    marker = _CUT.format(n=len(text) - limit)
    keep = max(limit - len(marker), 0)
    head = keep // 5
    return text[:head] + marker + text[len(text) - (keep - head) :], True


def redacted_head_tail(text: str, limit: int) -> tuple[str, bool]:
    """``redact(text)`` within ``limit`` characters, head and tail, redacting only what can be kept.

    Each piece reaches ``_MARGIN`` characters past the final cut (to a line end when one is near),
    and the tail piece starts no later than an unterminated private key block before it, so every
    secret that the kept text touches is masked whole before the cut.
    """
    if len(text) <= limit:
        return redact(text), False
    marker = _CUT.format(n=len(text) - limit)
    keep = max(limit - len(marker), 0)
    head_len, tail_len = keep // 5, keep - keep // 5
    head_end = _line_end(text, head_len + _MARGIN)
    tail_start = _line_start(text, len(text) - tail_len - _MARGIN)
    if tail_start <= head_end:  # the pieces meet: redacting it all costs no more
        return head_tail(redact(text), limit)
    begin = text.rfind("-----BEGIN ", 0, tail_start)
    if begin != -1 and "-----END " not in text[begin:tail_start]:
        tail_start = begin
    head, tail = redact(text[:head_end]), redact(text[tail_start:])
    return head[:head_len] + marker + tail[len(tail) - min(tail_len, len(tail)) :], True


def _line_end(text: str, at: int) -> int:
    end = text.find("\n", at, at + _MARGIN)
    return min(len(text), at + _MARGIN if end == -1 else end)


def _line_start(text: str, at: int) -> int:
    at = max(at, 0)
    start = text.rfind("\n", max(0, at - _MARGIN), at)
    return max(0, at - _MARGIN if start == -1 else start + 1)


def echo(value: str, limit: int) -> str:
    """An argument quoted back in an error message: redacted whole, then cut; a long paste is not quoted."""
    if len(value) > 4 * limit:
        return f"({len(value):,} characters)"
    return repr(redact(value)[:limit])


def _suggestion(score: FixScore, found: dict[str, str] | None = None) -> FixSuggestion:
    return FixSuggestion(
        id=score.fix.id,
        title=score.fix.title,
        steps=list(score.fix.render(found or {})),
        confidence=round(score.confidence, 4),
        outcomes=score.attempts_tenant or score.attempts_all,
        source=score.source,
        applies=score.fix.condition(),
    )


def _similar_run(seen: memory.Remembered, now: datetime) -> SimilarRun:
    return SimilarRun(
        run_id=str(seen.run_id),
        code=seen.code,
        similarity=round(seen.similarity, 3),
        times_seen=seen.runs,
        last_seen=seen.seen_at.astimezone(UTC).isoformat(timespec="seconds"),
        age=_age(now - seen.seen_at),
        outcome=seen.resolution if writer.is_resolution(seen.resolution) else None,
        note=seen.note,
    )


def _age(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _uuid(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        raise ToolError(f"{name} {echo(value, 60)} is not a UUID: pass the {name} that diagnose returned") from None


@dataclass(frozen=True)
class _Context:
    """What a diagnose call found, for building its findings and rows."""

    evidence: dict[str, list[str]]
    details: dict[str, dict[str, str]]  # code -> safe captured and derived details
    text: str  # the redacted text diagnosed: what `text:` conditions test
    unrecognised: bool


class _UnknownRun(ToolError):
    """No run of the caller's tenant has this id (in the database)."""


class DevDiag:
    def __init__(
        self,
        settings: ServerSettings,
        recorder: Recorder,
        catalog: Catalog,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.catalog = catalog
        self.learner = Learner(catalog)
        self.memory = memory.Memory()
        self.rng = rng or random.Random()

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.call_budget_s

    def _in_session(self, tenant: str, deadline: float, work: Callable[[Session], _T], *, replay: bool = False) -> _T:
        """``work`` in one session of ``tenant`` (one transaction); run again, in a new one, when the
        rankings view went away under it (learning.ViewChanged: the second read is of raw outcomes)."""
        try:
            with self.recorder.session(tenant, deadline, replay=replay) as session:
                return work(session)
        except ViewChanged:
            with self.recorder.session(tenant, deadline) as session:
                return work(session)

    # --- diagnose ---------------------------------------------------------------------------------

    def diagnose(
        self,
        error_text: str | None = None,
        url: str | None = None,
        logs: str | None = None,
        context: str | None = None,
        origin: str | None = None,
        *,
        tenant: str | None = None,
    ) -> DiagnoseResult:
        """``tenant``: the caller's (from its token); the configured tenant when None."""
        tenant = tenant or self.settings.tenant
        deadline = self._deadline()
        size = sum(len(t) for t in (error_text, logs, context, url, origin) if isinstance(t, str))
        if size > HARD_INPUT_LIMIT:
            raise ToolError(
                f"input is {size:,} characters, more than {HARD_INPUT_LIMIT:,}: pass the error and the log lines "
                "around it, not the whole log"
            )
        raw_text, raw_logs, raw_context, url, origin = map(clean, (error_text, logs, context, url, origin))
        if not (raw_text or raw_logs or raw_context or url):
            raise ToolError("nothing to diagnose: pass error_text (the error as pasted), logs, context or url")
        notes: list[str] = []
        text, truncated = redacted_head_tail(
            "\n\n".join(t for t in (raw_text, raw_logs, raw_context) if t), classifier.MAX_INPUT_CHARS
        )
        if truncated:
            notes.append(
                f"input cut to {classifier.MAX_INPUT_CHARS:,} characters (its first fifth and its end were diagnosed)"
            )
        found: dict[str, list[str]] = {}
        captured: dict[str, dict[str, str]] = {}
        for finding in classifier.classify(text, self.catalog):
            found.setdefault(finding.code, []).append(redact(finding.evidence))
            captured[finding.code] = details.derive(self.catalog.problem(finding.code), finding.captured, text)
        probe = self._probe(url, origin or self._origin_in(text), found, notes, deadline) if url else None
        if url and probe is not None and probe.status == "refused" and not (raw_text or raw_logs or raw_context):
            raise ToolError(f"probe refused: {probe.detail}")

        now = datetime.now(UTC)
        run_id = uuid7(now)
        stored, cut = self._stored_text(raw_text or raw_logs)
        if cut:
            notes.append(f"stored error text cut to {ERROR_MSG_CAP:,} characters")
        codes = list(found)
        # Text that matched nothing is not a clean run: stored as UNRECOGNISED (docs/architecture.md).
        unrecognised = not codes and bool(raw_text or raw_logs or raw_context)
        if unrecognised:
            notes.append(
                "no known problem matched: stored as unrecognised (not as a clean run); once it is solved, "
                "record_outcome with resolution 'manual' and a note of what fixed it keeps that for the team"
            )
        found_context = _Context(found, captured, text, unrecognised)
        built: tuple[list[Finding], list[RunRow]] | None = None
        similar: list[memory.Remembered] = []

        # One connection for the memory and ranking reads and the write: the fewest round trips per call.
        def read_and_write(session: Session) -> WriteResult:
            nonlocal built, similar
            similar = self.memory.similar(session.conn, tenant, stored)  # before this run is remembered
            scores = self.learner.scores(session.conn, tenant, codes) if codes else {}
            built = self._build(tenant, run_id, now, codes, scores, found_context, stored, notes)
            return self.recorder.write_on(session, built[1])

        try:
            written = self._in_session(tenant, deadline, read_and_write, replay=True)
        except DatabaseUnavailable as error:
            if built is None:
                notes.append(f"ranking from catalog priors only: {error}")
                built = self._build(
                    tenant, run_id, now, codes, self.learner.priors(codes), found_context, stored, notes
                )
            written = self.recorder.spool_rows(built[1], str(error))
        assert built is not None  # built in the session, or from the priors when the database is away
        findings = built[0]
        if written.detail:
            notes.append(f"run not in the database yet: {written.detail}")
        if written.replayed:
            notes.append(f"{written.replayed} spooled rows from earlier runs were written to the database first")
        return DiagnoseResult(
            run_id=str(run_id),
            tenant=tenant,
            environment=self.settings.environment,
            findings=findings,
            unrecognised=unrecognised,
            probe=probe,
            recorded=written.recorded,
            truncated=truncated or cut,
            similar=[_similar_run(r, now) for r in similar],
            notes=notes,
        )

    def _build(
        self,
        tenant: str,
        run_id: uuid.UUID,
        now: datetime,
        codes: list[str],
        scores: dict[str, list[FixScore]],
        context: _Context,
        stored: str | None,
        notes: list[str],
    ) -> tuple[list[Finding], list[RunRow]]:
        """The findings to return and the rows to write: one per finding, or one clean or unrecognised row."""
        findings: list[Finding] = []
        rows: list[RunRow] = []
        for index, code in enumerate(codes):
            problem = self.catalog.problem(code)
            known = context.details.get(code, {})
            # A fix that does not apply is never suggested, explored or credited: it is left out here.
            applicable = [s for s in scores.get(code, []) if s.fix.applies(known, context.text)]
            order = self._order(applicable, notes, code)
            first = order[0] if order else None
            finding_id = uuid7(now + timedelta(microseconds=index))  # ids sort in finding order
            rows.append(
                RunRow(
                    id=finding_id,
                    run_id=run_id,
                    ts=now,
                    tenant_id=tenant,
                    environment=self.settings.environment,
                    problem_code=code,
                    fix_suggestion=first.fix.id if first else None,
                    confidence=min(max(first.confidence, 0.0), 1.0) if first else None,
                    error_msg=stored,
                )
            )
            findings.append(
                Finding(
                    finding_id=str(finding_id),
                    code=code,
                    title=problem.title,
                    category=problem.category,
                    severity=problem.severity,
                    evidence=context.evidence[code],
                    details=known,
                    suggested_fix=first.fix.id if first else None,
                    fixes=[_suggestion(s, known) for s in order],
                )
            )
        if not rows:  # a clean or unrecognised run is recorded too: freshness and volume stay visible
            rows.append(
                RunRow(
                    id=uuid7(now),
                    run_id=run_id,
                    ts=now,
                    tenant_id=tenant,
                    environment=self.settings.environment,
                    problem_code=UNRECOGNISED if context.unrecognised else None,
                    error_msg=stored,
                )
            )
        return findings, rows

    @staticmethod
    def _origin_in(text: str) -> str | None:
        match = _ORIGIN_IN_TEXT.search(text)
        return match.group(1) if match else None

    @staticmethod
    def _stored_text(text: str | None) -> tuple[str | None, bool]:
        """The error text to store, redacted, head and tail within the contract's cap."""
        if text is None:
            return None, False
        return redacted_head_tail(text, ERROR_MSG_CAP)

    def _probe(
        self, url: str, origin: str | None, found: dict[str, list[str]], notes: list[str], deadline: float
    ) -> ProbeSummary:
        shown = redact(url)
        timeout = min(self.settings.probe_timeout_s, max(deadline - time.monotonic() - _DB_RESERVE_S, 0.1))
        try:
            report = probes.probe(url, self.settings.allow_probes, timeout=timeout, origin=origin)
        except probes.ProbeRefused as refused:
            notes.append(f"URL not probed: {refused}")
            return ProbeSummary(url=shown, status="refused", detail=str(refused))
        for item in report.findings:
            if item.code in self.catalog.problems:
                found.setdefault(item.code, []).append(redact(item.evidence))
        return ProbeSummary(
            url=redact(report.url),
            status="done",
            final_url=redact(report.final_url) if report.final_url else None,
            http_status=report.http_status,
            checks=[ProbeCheck(name=c.name, status=c.status, detail=redact(c.detail)) for c in report.checks],
        )

    def _scores(self, tenant: str, codes: Sequence[str]) -> tuple[dict[str, list[FixScore]], str | None]:
        if not codes:
            return {}, None
        try:
            scores = self._in_session(tenant, self._deadline(), lambda s: self.learner.scores(s.conn, tenant, codes))
            return scores, None
        except DatabaseUnavailable as error:
            return self.learner.priors(codes), f"ranking from catalog priors only: {error}"

    def _order(self, scores: list[FixScore], notes: list[str], code: str) -> list[FixScore]:
        if not scores or not scores[0].tenant_strength:
            return scores  # priors only: nothing learned to explore from
        order = explore(scores, self.rng)
        best = scores[0]
        if order[0] is not best:
            notes.append(
                f"{code}: '{order[0].fix.id}' is suggested first to learn whether it works here "
                f"(confidence {order[0].confidence:.2f}; "
                f"the most confident fix is '{best.fix.id}' at {best.confidence:.2f})"
            )
        return order

    # --- outcomes ---------------------------------------------------------------------------------

    def record_outcome(
        self,
        resolution: str,
        run_id: str | None = None,
        finding_id: str | None = None,
        fix_id: str | None = None,
        note: str | None = None,
        *,
        tenant: str | None = None,
    ) -> OutcomeResult:
        tenant = tenant or self.settings.tenant
        run_id, finding_id, fix_id = clean(run_id), clean(finding_id), clean(fix_id)
        if note is not None and len(note) > memory.NOTE_REFUSED:
            raise ToolError(
                f"note is {len(note):,} characters: say in at most {memory.NOTE_CAP} what fixed it, not the whole log"
            )
        kept_note = memory.clean_note(clean(note))
        if (run_id is None) == (finding_id is None):
            raise ToolError("give exactly one of run_id (every problem of a run) or finding_id (one problem)")
        if not writer.is_resolution(resolution):
            raise ToolError(f"resolution {echo(resolution, 40)} is not valid: use fixed, manual or failed")
        key, target = (
            ("run_id", _uuid("run_id", run_id)) if run_id else ("finding_id", _uuid("finding_id", finding_id or ""))
        )
        if fix_id is not None:
            fix_id = fix_id.strip()
            if fix_id not in {f.id for p in self.catalog for f in p.fixes}:
                raise ToolError(f"unknown fix_id {echo(fix_id, 80)}: pass a fix id from the diagnose result")
        at = datetime.now(UTC)
        outcome = Outcome(
            resolution=resolution, at=at, fix_id=fix_id, tenant=tenant, note=kept_note, **{key: str(target)}
        )

        def record(session: Session) -> OutcomeResult:
            result = self._record(session.conn, tenant, key, target, resolution, fix_id, at, kept_note)
            session.writes.append(outcome)  # redone from the spool if PostgreSQL loses it (flush_watch)
            return result

        try:
            return self._in_session(tenant, self._deadline(), record, replay=True)
        except _UnknownRun:
            # Another worker may be replaying the spool that holds this run right now (its rows not yet
            # committed): queued behind it, the outcome is applied once the run is in, or rejected at
            # replay if it never was this tenant's.
            if not self.recorder.spool.pending():
                raise
            written = self.recorder.spool_outcome(outcome, "its run is still being written from the spool")
            return OutcomeResult(
                recorded=written.recorded,
                resolution=resolution,
                updated=0,
                note=kept_note,
                notes=[f"outcome not in the database yet: {written.detail}"],
            )
        except DatabaseUnavailable as error:
            written = self.recorder.spool_outcome(outcome, str(error))
            return OutcomeResult(
                recorded=written.recorded,
                resolution=resolution,
                updated=0,
                note=kept_note,
                notes=[f"outcome not in the database yet: {written.detail}"],
            )

    def _record(
        self,
        conn: psycopg.Connection,
        tenant: str,
        key: str,
        target: uuid.UUID,
        resolution: Resolution,
        fix_id: str | None,
        at: datetime,
        note: str | None,
    ) -> OutcomeResult:
        # Another tenant's run is "unknown" too: the answer does not tell whether it exists.
        run = memory.run_rows(conn, tenant=tenant, **{key: target})
        rows = [r for r in run if key == "run_id" or r.id == target]
        if not rows:
            raise _UnknownRun(f"unknown {key} {target}: no run has it; pass the {key} that diagnose returned")
        problems = [r for r in rows if r.problem_code is not None and r.problem_code != UNRECOGNISED]
        if not problems:
            if any(r.problem_code == UNRECOGNISED for r in rows):
                return self._remember_unrecognised(conn, tenant, run, resolution, at, note)
            raise ToolError(f"{key} {target} is a run that found no problem: there is no outcome to record")
        if fix_id is not None:
            suggested = sorted({r.fix_suggestion for r in problems if r.fix_suggestion})
            problems = [r for r in problems if r.fix_suggestion == fix_id]
            if not problems:
                raise ToolError(
                    f"fix {fix_id} was not the suggested fix here (suggested: {', '.join(suggested) or 'none'}); "
                    "outcomes are credited to the suggested fix: record 'manual' when another fix solved it"
                )
        if resolution == "fixed" and not any(r.fix_suggestion for r in problems):
            raise ToolError("'fixed' credits the suggested fix, but none was suggested here: record 'manual'")
        updated, run = writer.apply_outcome(
            conn,
            run_id=target if key == "run_id" else None,
            finding_id=target if key == "finding_id" else None,
            resolution=resolution,
            fix_id=fix_id,
            at=at,
            tenant=tenant,
            note=note,
        )
        ids = {r.id for r in problems}
        after = [r for r in run if r.id in ids]  # the targeted findings, as they are now
        pairs = [(r.problem_code, r.fix_suggestion) for r in after if r.problem_code is not None]
        confidence = self.learner.confidence(conn, tenant, pairs)  # of the credited fixes only
        notes = []
        if updated == 0:
            notes.append("already recorded: nothing changed (this outcome, or a later one, is in place)")
        return OutcomeResult(
            recorded="database",
            resolution=resolution,
            updated=updated,
            note=note,
            findings=[
                OutcomeFinding(
                    finding_id=str(r.id),
                    problem_code=r.problem_code,
                    fix_id=r.fix_suggestion,
                    resolution=r.resolution,
                    confidence_now=round(confidence[(r.problem_code, r.fix_suggestion)], 4)
                    if (r.problem_code, r.fix_suggestion) in confidence
                    else None,
                )
                for r in after
                if r.problem_code is not None
            ],
            notes=notes,
        )

    @staticmethod
    def _remember_unrecognised(
        conn: psycopg.Connection,
        tenant: str,
        run: list[memory.RunState],
        resolution: Resolution,
        at: datetime,
        note: str | None,
    ) -> OutcomeResult:
        """An unrecognised run (``run``: its rows, as read) has no finding to credit: its outcome and note
        go to the team memory only."""
        if resolution == "fixed":
            raise ToolError(
                "nothing was suggested for an unrecognised error, so no fix can be credited: record 'manual' "
                "with a note of what fixed it (or 'failed')"
            )
        kept = memory.note_outcome(conn, tenant=tenant, resolution=resolution, note=note, at=at, rows=run)
        notes = ["kept in the team memory: the next similar error shows this outcome and note"]
        if not kept:
            notes = ["nothing kept: this run has no error text to recognise it by"]
        return OutcomeResult(recorded="database", resolution=resolution, updated=0, note=note, notes=notes)

    # --- reading ----------------------------------------------------------------------------------

    def problem(self, code: str) -> Problem:
        normalized = (clean(code) or "").strip().upper()
        if normalized not in self.catalog.problems:
            raise ToolError(f"unknown problem code {echo(code, 60)}: call list_problems for the codes")
        return self.catalog.problem(normalized)

    def suggest_fixes(self, problem_code: str, *, tenant: str | None = None) -> SuggestResult:
        problem = self.problem(problem_code)
        notes: list[str] = []
        scores, note = self._scores(tenant or self.settings.tenant, [problem.code])
        if note:
            notes.append(note)
        order = ranked(scores[problem.code])
        sources = {s.source for s in order}
        source: Literal["tenant", "all_tenants", "catalog"] = (
            "tenant" if "tenant" in sources else "all_tenants" if "all_tenants" in sources else "catalog"
        )
        return SuggestResult(
            code=problem.code,
            title=problem.title,
            severity=problem.severity,
            source=source,
            fixes=[_suggestion(s) for s in order],
            notes=notes,
        )

    def list_problems(self, category: str | None = None) -> ProblemList:
        wanted = (clean(category) or "").strip().lower() or None
        problems = [p for p in self.catalog if wanted is None or p.category == wanted]
        if wanted and not problems:
            categories = ", ".join(sorted({p.category for p in self.catalog}))
            raise ToolError(f"unknown category {echo(category or '', 40)}: use one of {categories}")
        return ProblemList(
            problems=[
                CatalogProblem(
                    code=p.code,
                    title=p.title,
                    category=p.category,
                    severity=p.severity,
                    fix_ids=[f.id for f in p.fixes],
                )
                for p in problems
            ]
        )

    def recent_problems(self, days: int = 7, limit: int = 10, *, tenant: str | None = None) -> RecentResult:
        tenant = tenant or self.settings.tenant
        notes: list[str] = []
        try:
            with self.recorder.session(tenant, self._deadline()) as session:
                rows, note = self._recent(session.conn, tenant, days, limit)
        except DatabaseUnavailable as error:
            return RecentResult(tenant=tenant, days=days, problems=[], notes=[f"no data: {error}"])
        if note:
            notes.append(note)
        total = rows[0][3] if rows else 0
        problems = [
            RecentProblem(
                code=code,
                title=self.catalog.problems[code].title
                if code in self.catalog.problems
                else "Not recognised: matched no known problem"
                if code == UNRECOGNISED
                else code,
                count=count,
                share=round(count / total, 4) if total else 0.0,
                last_day=day.isoformat(),
            )
            for code, count, day, _ in rows
        ]
        if not problems:
            notes.append(f"no problems recorded for tenant {tenant} in the last {days} days")
        return RecentResult(tenant=tenant, days=days, problems=problems, notes=notes)

    @staticmethod
    def _recent(conn: psycopg.Connection, tenant: str, days: int, limit: int) -> tuple[list[tuple], str | None]:
        params = {"tenant": tenant, "days": days, "limit": limit}
        view = """
            select problem_code, sum(cnt)::bigint, max(day), sum(sum(cnt)) over ()::bigint
            from devdiag.v_problem_counts
            where tenant_id = %(tenant)s and day > (now() at time zone 'utc')::date - %(days)s
            group by problem_code order by 2 desc, 1 limit %(limit)s
        """
        try:
            with conn.transaction():  # a savepoint: a missing view must not abort the call's transaction
                return conn.execute(view, params).fetchall(), "counts as of the last `devdiag build`"
        except _VIEW_UNUSABLE:
            pass  # before the first build, or without SELECT on the view: count the raw rows
        raw = """
            select problem_code, count(*), max((ts at time zone 'utc')::date), sum(count(*)) over ()::bigint
            from devdiag.diag_run
            where tenant_id = %(tenant)s and problem_code is not null
              and ts >= ((now() at time zone 'utc')::date - (%(days)s - 1)) at time zone 'utc'
            group by problem_code order by 2 desc, 1 limit %(limit)s
        """
        return conn.execute(raw, params).fetchall(), "counted from the raw runs (v_problem_counts not readable)"
