"""The DevDiag MCP server (stdio): ``python -m mcp_devdiag`` or ``mcp-devdiag``.

Five tools with typed arguments and structured results: ``diagnose``, ``record_outcome``,
``suggest_fixes``, ``list_problems``, ``recent_problems``. stdout belongs to JSON-RPC: every log
line goes to stderr. Configuration comes from the environment (mcp_devdiag.settings); a bad one
is refused with one line on stderr and exit code 2 before the transport opens.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import random
import sys
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import ToolAnnotations
from pydantic import Field, ValidationError

from devdiag_db.config import distribution_name
from devdiag_db.db import DatabaseUnavailable
from mcp_devdiag import classifier, stdio
from mcp_devdiag.catalog import Catalog, load_catalog
from mcp_devdiag.recorder import Recorder
from mcp_devdiag.results import DiagnoseResult, OutcomeResult, ProblemList, RecentResult, SuggestResult
from mcp_devdiag.service import DevDiag
from mcp_devdiag.settings import ConfigError, ServerSettings, load

log = logging.getLogger("mcp_devdiag")
TENANT_CLAIM = "tenant"  # the AccessToken claim that carries the caller's tenant (HTTP)

INSTRUCTIONS = """\
DevDiag diagnoses developer errors (browser, backend, Python, Node, Git, Docker, OS) and learns which fixes work \
for this team. When the user hits an error, call `diagnose` with the error text as pasted; show the suggested fix \
first. After the user tried it, call `record_outcome` with the run_id: 'fixed' if the suggested fix worked, 'failed' \
if it did not, 'manual' if something else solved it. That outcome is what makes the next suggestion better."""


def version() -> str:
    try:
        return importlib.metadata.version(distribution_name())
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


class DevDiagServer(MCPServer):
    """The SDK's server, with arguments that fail validation answered in one line a model can act on."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as error:
            cause = error.__cause__
            if isinstance(error, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError(f"Error executing tool {name}: {invalid_arguments(cause)}") from cause


def invalid_arguments(error: ValidationError) -> str:
    """pydantic's multi-line report as one line: each bad argument and what it should be (never its value)."""
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or 'arguments'}: {item['msg'].rstrip('.')}"
        for item in error.errors(include_url=False, include_input=False)
    ]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "invalid arguments: " + "; ".join(problems[:3]) + more + "; see the tool's input schema"


def build_server(
    settings: ServerSettings,
    *,
    recorder: Recorder | None = None,
    catalog: Catalog | None = None,
    rng: random.Random | None = None,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
) -> tuple[MCPServer, DevDiag]:
    """The server and the service behind it (tests keep the service to close its pool).

    ``token_verifier`` and ``auth`` are for HTTP (mcp_devdiag.http): the SDK then refuses a request
    without a valid bearer token before any tool runs. stdio passes neither.
    """

    def tenant() -> str | None:
        """The caller's tenant: from its token when served over HTTP (never from an argument); None on
        stdio, where the configured tenant applies."""
        token = get_access_token()
        claimed = (token.claims or {}).get(TENANT_CLAIM) if token is not None else None
        if settings.tenant_from_token and not claimed:
            raise ToolError("this server takes the tenant from a token: send Authorization: Bearer ddg_...")
        return claimed

    recorder = recorder or Recorder.for_settings(settings)
    app = DevDiag(settings, recorder, catalog or load_catalog(), rng=rng)
    server = DevDiagServer(
        "devdiag",
        title="DevDiag",
        instructions=INSTRUCTIONS,
        version=version(),
        token_verifier=token_verifier,
        auth=auth,
    )

    @server.tool(
        annotations=ToolAnnotations(
            title="Diagnose an error",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        )
    )
    def diagnose(
        error_text: Annotated[
            str,
            Field(description="The error message, stack trace or console output, pasted as is (colours and all)."),
        ] = "",
        url: Annotated[
            str,
            Field(
                description="A URL to probe for CORS, CSP, X-Frame-Options, cookies and TLS "
                "(only hosts allowed by DEVDIAG_ALLOW_PROBES)."
            ),
        ] = "",
        logs: Annotated[str, Field(description="Log lines around the failure: server, build or container logs.")] = "",
        context: Annotated[
            str,
            Field(description="What the developer was doing: the command run, framework, what changed."),
        ] = "",
        origin: Annotated[
            str,
            Field(
                description="Origin of the page that calls or embeds `url`, e.g. http://localhost:3000 "
                "(for the CORS and framing checks)."
            ),
        ] = "",
    ) -> DiagnoseResult:
        """Diagnose a developer error and get ranked fixes that worked for this team.

        Call this as soon as the user shows an error, a failing command's output, a browser console
        message or a URL that misbehaves. Give at least one of error_text, logs, context or url.
        Returns the problems found (code, severity, evidence) with fixes in the order to try them,
        each with a learned confidence, and a run_id; and up to three earlier runs of this team with
        the most similar error, with what fixed them (notes), also when no known problem matched.
        Present the suggested fix (or a teammate's note) first; once the user has tried it, call
        record_outcome with that run_id.
        """
        return app.diagnose(error_text=error_text, url=url, logs=logs, context=context, origin=origin, tenant=tenant())

    @server.tool(
        annotations=ToolAnnotations(
            title="Record the outcome of a fix",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        )
    )
    def record_outcome(
        *,
        run_id: Annotated[
            str, Field(description="The run_id from diagnose: the outcome applies to every problem it found.")
        ] = "",
        finding_id: Annotated[
            str, Field(description="A finding_id from diagnose, to record the outcome of one problem only.")
        ] = "",
        resolution: Annotated[
            Literal["fixed", "manual", "failed"],
            Field(
                description="fixed: the suggested fix solved it; failed: the suggested fix did not help; "
                "manual: it was solved another way."
            ),
        ],
        fix_id: Annotated[
            str,
            Field(description="The fix that was tried (the suggested_fix of the finding); optional."),
        ] = "",
        note: Annotated[
            str,
            Field(
                description="What fixed it, in the user's words (a sentence or two, at most 500 characters; "
                "secrets are masked). Shown to the next teammate whose error is similar."
            ),
        ] = "",
    ) -> OutcomeResult:
        """Record whether the suggested fix worked, so that DevDiag learns which fixes to suggest.

        Call this after the user tried a fix from diagnose: give the run_id (or one finding_id) and
        the resolution, and a note of what fixed it when the user solved it another way. For an
        unrecognised error, record 'manual' with a note: that is how the team remembers it.
        Recording the same outcome again changes nothing.
        """
        return app.record_outcome(
            resolution=resolution,
            run_id=run_id,
            finding_id=finding_id,
            fix_id=fix_id,
            note=note or None,
            tenant=tenant(),
        )

    @server.tool(
        annotations=ToolAnnotations(
            title="Suggest fixes for a problem", read_only_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    def suggest_fixes(
        problem_code: Annotated[str, Field(description="A problem code, e.g. PORT_IN_USE (see list_problems).")],
    ) -> SuggestResult:
        """The learned ranking of fixes for one problem code, best first.

        Call this when the problem is already known (no error text to diagnose) or to show the
        alternatives after a fix failed. Uses this team's outcomes, then all teams', then the
        catalog's prior confidence.
        """
        return app.suggest_fixes(problem_code, tenant=tenant())

    @server.tool(
        annotations=ToolAnnotations(
            title="List known problems", read_only_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    def list_problems(
        category: Annotated[
            str,
            Field(description="Only this category: browser, backend, python, node, git, docker, os, network..."),
        ] = "",
    ) -> ProblemList:
        """The catalog of problems DevDiag recognises, with their codes, severities and fix ids.

        Call this to find the code for suggest_fixes, or to tell the user what DevDiag can diagnose.
        """
        return app.list_problems(category)

    @server.tool(
        annotations=ToolAnnotations(
            title="Recent problems of the team", read_only_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    def recent_problems(
        days: Annotated[int, Field(ge=1, le=366, description="Window in days, today included.")] = 7,
        limit: Annotated[int, Field(ge=1, le=100, description="At most this many problems.")] = 10,
    ) -> RecentResult:
        """The team's most frequent problems in the last days, with their share of all findings.

        Call this when the user asks what keeps breaking, or before a retro or an on-call handover.
        """
        return app.recent_problems(days, limit, tenant=tenant())

    return server, app


# --- entry point ----------------------------------------------------------------------------------


def _configure_logging() -> None:
    level = os.environ.get("DEVDIAG_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mcp-devdiag %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mcp_devdiag").setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


def _start_embedded(settings: ServerSettings) -> None:
    """The embedded database is started on demand; if it cannot start, runs go to the spool."""
    if not settings.database.embedded:
        return
    import click

    from devdiag_db import embedded

    try:
        embedded.start()
    except (click.ClickException, OSError) as error:
        message = error.message if isinstance(error, click.ClickException) else str(error)
        log.warning("embedded PostgreSQL not started (%s): runs go to the spool", message)


def _check(settings: ServerSettings, recorder: Recorder) -> int:
    """``--check``: the configuration and whether the database answers, on stderr."""
    out = sys.stderr
    print(f"mcp-devdiag {version()}", file=out)
    print(f"tenant       {settings.tenant}", file=out)
    print(f"environment  {settings.environment}", file=out)
    print(f"database     {settings.database.describe()}", file=out)
    print(f"spool        {settings.spool_dir} ({recorder.spool.size_bytes():,} bytes waiting)", file=out)
    print(f"probes       {settings.allow_probes.describe()}", file=out)
    try:
        with recorder.connection() as conn:
            conn.execute("select 1 from devdiag.diag_run limit 1")
    except DatabaseUnavailable as error:
        print(f"database     NOT OK: {error}", file=out)
        return 1
    print("database     ok", file=out)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mcp-devdiag", description="DevDiag MCP server on stdio (configured by DEVDIAG_* variables)."
    )
    parser.add_argument("--version", action="version", version=f"mcp-devdiag {version()}")
    parser.add_argument("--check", action="store_true", help="check the configuration and the database, then exit")
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        settings = load()
    except ConfigError as error:
        print(f"mcp-devdiag: {error}", file=sys.stderr)
        sys.exit(2)
    _start_embedded(settings)
    server, app = build_server(settings)
    if args.check:
        code = _check(settings, app.recorder)
        app.recorder.close()
        sys.exit(code)
    classifier.classify("warm-up")  # compile the catalog's patterns before the first call waits on them
    try:
        stdio.run(server)  # answers malformed lines instead of dropping them
    finally:
        app.recorder.close()


if __name__ == "__main__":
    main()
