"""Deterministic, realistic demo history for ``devdiag.diag_run`` (``devdiag demo --runs N``).

``runs`` counts diagnostic runs; a run with two findings writes two rows, so rows ≈ 1.05 × runs.

The model, replayed in time order (one seeded RNG per concern, so runs, problems and outcomes do
not perturb each other):

- Tenants (``tenants``, default 3): acme, globex, initech, ... (eight named ones), then team-09,
  team-10, ... with run volumes falling off like Zipf (1/rank); each has its working hours (UTC
  offset) and environments.
- Runs: ``runs`` timestamps over ``days`` up to ``now``, weighted by each tenant's volume, working
  hours and weekdays, plus a few runs in the last hour (freshness, "new rows today").
- Incidents: per tenant, problems appear as a Poisson process whose rate does not depend on
  ``runs`` from ~7,500 runs per three tenants up (so the concurrent problems, and the distinct
  problems a day, are the same at 10,000 or 1,000,000 runs: ``runs`` scales sightings and clean
  runs); smaller demos get fewer incidents, else nearly every run would find one. Each tenant meets
  problems at the same pace, so 50 tenants have ~17x the incidents of 3. The code is drawn from a
  Zipf-like popularity over ``codes`` catalog problems (default the 20 of DEMO_CODES; more adds the
  catalog's other problems with 2+ fixes, in catalog order); the same code recurs later.
- Sightings: while an incident is open, each of its tenant's runs sees it with a probability
  set by its severity; a run sees at most two. Runs that see nothing are clean rows.
- Attempts: a sighting with no fix in flight is an attempt: the team picks a fix by Thompson
  sampling (Beta(successes+1, failures+1) per fix, from the outcomes every tenant has recorded so
  far for the problem: the shared memory DevDiag is) among the fixes whose catalog conditions
  hold for the incident's error text (``applicable_fixes``: no force-push for a rejected push to
  main, no ``pip install`` for the project's own module), as the server would suggest them. The
  outcome, drawn from the fix's hidden true success rate, is recorded hours to days later (``resolved_at``); sightings
  meanwhile carry the same suggestion. ``fixed`` or ``manual`` ends the incident; ``failed``
  lets the next sighting try again. Outcomes due after ``now`` stay pending (NULL).
- Confidence: each suggestion stores what ``devdiag.fix_confidence`` gave at that moment, from
  the outcomes recorded before the run (that tenant, and all tenants); the formula is evaluated
  by the database, in bulk, never re-implemented here.
- Guard rails for the health checks and alerts: at most 10 distinct problems a UTC day across all
  tenants, and no problem above ~13% of the runs of any trailing 7 days (the alert fires above 20%).
- The week's two most frequent problems are seen again in the last 20 hours, as dominant
  problems are current ones: the runbook's "review recent occurrences" step has rows to show.

Resulting shape (checked by tests/python/test_demo_data.py from 2,000 runs up): 45-55% clean
runs, median time to resolution ~0.3 days, 30-day average confidence of suggestions 0.71-0.83
(higher with more history). 1M runs: ~7-15 s to simulate (3 or 50 tenants alike), ~15-25 s to load;
~250-350 MB for the simulation; 10M runs at 50 tenants and 60 codes: ~3 GB.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import math
import random
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click
import psycopg

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, connect, scalar
from mcp_devdiag import classifier, details, ids
from mcp_devdiag.catalog import Problem, load_catalog
from mcp_devdiag.writer import RunRow, write_runs

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
MAX_CODES_PER_DAY = 10  # the diversity health check warns above 10
MAX_CODE_SHARE_7D = 0.13  # of the runs: alert 1 fires above 20% of a 7-day window
DIVERSITY_SOFT_LIMIT = 8  # above this many codes today, new incidents prefer codes already seen today
INCIDENTS_PER_DAY = 5.5  # all tenants together
RUNS_PER_DAY_FOR_FULL_RATE = 40  # below this, fewer incidents (rate × (runs a day / 40) ** 0.6)
ZIPF_EXPONENT = 0.9
SECOND_FINDING = 0.3  # chance that a run seeing two open incidents reports both
MANUAL_SHARE = 0.3  # of the outcomes that are not `fixed`, resolved another way
SIGHTING = {"critical": 0.75, "error": 0.6, "warning": 0.45}  # per run, while an incident is open
SCORE_BATCH = 50_000
FLARE_UP_HOURS = 20  # the week's top problems are seen again within the last day
FLARE_UP_CODES = 2

# The 20 demo problems, most frequent first (Zipf rank); all must be catalog codes.
DEMO_CODES = (
    "PY_MODULE_NOT_FOUND",
    "NODE_MODULE_NOT_FOUND",
    "PORT_IN_USE",
    "CORS_BLOCKED",
    "CONNECTION_REFUSED",
    "GIT_MERGE_CONFLICT",
    "DOCKER_DAEMON_NOT_RUNNING",
    "DB_AUTH_FAILED",
    "TS_CANNOT_FIND_MODULE",
    "NPM_ERESOLVE",
    "GIT_NON_FAST_FORWARD",
    "PY_VERSION_MISMATCH",
    "JS_HEAP_OOM",
    "DB_PENDING_MIGRATIONS",
    "TLS_CERT_UNTRUSTED",
    "PERMISSION_DENIED",
    "GIT_PUBLICKEY_DENIED",
    "DOCKER_PORT_ALLOCATED",
    "FILE_WATCHER_LIMIT",
    "NODE_ENGINE_MISMATCH",
)
DEFAULT_CODES = len(DEMO_CODES)

# Error text as developers paste it, already redacted; each matches its problem's catalog patterns.
ERROR_TEMPLATES: dict[str, str] = {
    "PY_MODULE_NOT_FOUND": 'File "/home/dev/{repo}/app/main.py", line {line}, in <module>\n'
    "    import {pymod}\nModuleNotFoundError: No module named '{pymod}'",
    "NODE_MODULE_NOT_FOUND": "Error: Cannot find module '{npm}'\nRequire stack:\n- /home/dev/{repo}/src/server.js",
    "PORT_IN_USE": "Error: listen EADDRINUSE: address already in use :::{port}",
    "CORS_BLOCKED": "Access to fetch at 'https://api.{domain}/v1/{path}' from origin 'http://localhost:{port}' "
    "has been blocked by CORS policy: No 'Access-Control-Allow-Origin' header is present on the requested resource.",
    "CONNECTION_REFUSED": "Error: connect ECONNREFUSED 127.0.0.1:{port}\n"
    "    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1595:16)",
    "GIT_MERGE_CONFLICT": "Auto-merging {file}\nCONFLICT (content): Merge conflict in {file}\n"
    "Automatic merge failed; fix conflicts and then commit the result.",
    "DOCKER_DAEMON_NOT_RUNNING": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?",
    "DB_AUTH_FAILED": 'connection to server at "db.{domain}" (10.0.{octet}.12), port 5432 failed: FATAL:  '
    'password authentication failed for user "{dbuser}" (dsn postgresql://{dbuser}:[REDACTED]@db.{domain}/app)',
    "TS_CANNOT_FIND_MODULE": "src/{tsfile}.ts:{line}:21 - error TS2307: Cannot find module '{npm}' "
    "or its corresponding type declarations.",
    "NPM_ERESOLVE": "npm ERR! code ERESOLVE\nnpm ERR! ERESOLVE unable to resolve dependency tree\n"
    'npm ERR! Found: react@{react}\nnpm ERR! Could not resolve dependency: peer react@"^{react_peer}"',
    "GIT_NON_FAST_FORWARD": " ! [rejected]        {branch} -> {branch} (fetch first)\n"
    "error: failed to push some refs to 'github.com:{org}/{repo}.git'\n"
    "hint: Updates were rejected because the remote contains work that you do not have locally.",
    "PY_VERSION_MISMATCH": "ERROR: Package '{pypkg}' requires a different Python: "
    "3.{pyold}.{patch} not in '>=3.{pynew}'",
    "JS_HEAP_OOM": "<--- Last few GCs --->\nFATAL ERROR: Reached heap limit Allocation failed - "
    "JavaScript heap out of memory\n 1: 0xb7b3e0 node::Abort() [node]",
    "DB_PENDING_MIGRATIONS": "You have {count} unapplied migration(s). Your project may not work properly "
    "until you apply the migrations for app(s): {apps}.",
    "TLS_CERT_UNTRUSTED": "GET https://{host}.{domain}/api/health net::ERR_CERT_AUTHORITY_INVALID",
    "PERMISSION_DENIED": "PermissionError: [Errno 13] Permission denied: '/usr/local/lib/python3.{pynew}/"
    "site-packages/{pymod}'",
    "GIT_PUBLICKEY_DENIED": "git@github.com: Permission denied (publickey).\n"
    "fatal: Could not read from remote repository.",
    "DOCKER_PORT_ALLOCATED": "Error response from daemon: driver failed programming external connectivity on "
    "endpoint {repo}-{service}-1: Bind for 0.0.0.0:{port} failed: port is already allocated",
    "FILE_WATCHER_LIMIT": "Error: ENOSPC: System limit for number of file watchers reached, "
    "watch '/home/dev/{repo}/src'",
    "NODE_ENGINE_MISMATCH": "npm WARN EBADENGINE Unsupported engine {{\n"
    "npm WARN EBADENGINE   package: '{npm}@{semver}',\n"
    "npm WARN EBADENGINE   required: {{ node: '>=20' }},\n"
    "npm WARN EBADENGINE   current: {{ node: 'v18.19.0', npm: '10.2.3' }}",
    # The other catalog problems (used when the demo runs with more than its 20 codes: --codes).
    "CORS_PREFLIGHT_FAILED": "Access to fetch at 'https://api.{domain}/v1/{path}' "
    "from origin 'http://localhost:{port}' has been blocked by CORS policy: "
    "Response to preflight request doesn't pass access control check: It does not have HTTP ok status.",
    "FRAME_EMBED_BLOCKED": "Refused to display 'https://{host}.{domain}/' in a frame because it set "
    "'X-Frame-Options' to 'sameorigin'.",
    "CSP_INLINE_SCRIPT_BLOCKED": "Refused to execute inline script because it violates the following Content Security "
    "Policy directive: \"script-src 'self'\". Either the 'unsafe-inline' keyword, a hash or a nonce is required.",
    "MIXED_CONTENT": "Mixed Content: The page at 'https://{host}.{domain}/' was loaded over HTTPS, but requested an "
    "insecure XMLHttpRequest endpoint 'http://api.{domain}/v1/{path}'. This request has been blocked.",
    "COOKIE_REJECTED": 'This attempt to set a cookie via a Set-Cookie header was blocked because it had the "Secure" '
    "attribute but was not received over a secure connection.",
    "TLS_CERT_EXPIRED": "fatal: unable to access 'https://git.{domain}/{org}/{repo}.git/': "
    "SSL certificate problem: certificate has expired",
    "TLS_HOSTNAME_MISMATCH": "curl: (60) SSL: no alternative certificate subject name matches target host name "
    "'{host}.{domain}'",
    "HTTP_5XX_BURST": "POST http://localhost:{port}/api/{path} 500 (Internal Server Error)",
    "REQUEST_TIMEOUT": "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.{domain}', port=443): "
    "Read timed out. (read timeout=30)",
    "INVALID_JSON_RESPONSE": "Uncaught (in promise) SyntaxError: Unexpected token '<', "
    '"<!DOCTYPE "... is not valid JSON',
    "DB_UNREACHABLE": "django.db.utils.OperationalError: FATAL:  the database system is starting up",
    "DB_DATABASE_MISSING": 'psycopg.OperationalError: connection failed: FATAL:  database "{dbuser}" does not exist',
    "DB_TOO_MANY_CONNECTIONS": "FATAL:  remaining connection slots are reserved for "
    "non-replication superuser connections",
    "PY_EXTERNALLY_MANAGED": "error: externally-managed-environment\n\n× This environment is externally managed\n"
    "╰─> To install Python packages system-wide, try apt install\n    python3-xyz, where xyz is the package you are "
    "trying to\n    install.",
    "PIP_SSL_ERROR": "Could not fetch URL https://pypi.org/simple/{pypkg}/: There was a problem confirming the ssl "
    "certificate: HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded with url: /simple/{pypkg}/ "
    "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]')))",
    "PY_SYNTAX_ERROR": 'File "/home/dev/{repo}/app/main.py", line {line}\n    if user is None\n'
    "                   ^\nSyntaxError: expected ':'",
    "PIP_NO_MATCHING_DIST": "ERROR: Could not find a version that satisfies the requirement {pypkg}==0.0.1 "
    "(from versions: none)\nERROR: No matching distribution found for {pypkg}==0.0.1",
    "PIP_BUILD_WHEEL_FAILED": "ERROR: Failed building wheel for {pypkg}\nFailed to build {pypkg}\n"
    "ERROR: Could not build wheels for {pypkg}, which is required to install pyproject.toml-based projects",
    "PIP_RESOLUTION_CONFLICT": "ERROR: Cannot install -r requirements.txt (line {line}) and {pypkg}==2.0.0 "
    "because these package versions have conflicting dependencies.\nERROR: ResolutionImpossible",
    "PY_VENV_BROKEN": "-bash: /home/dev/{repo}/.venv/bin/pip: /home/dev/{repo}-old/.venv/bin/python3: bad interpreter: "
    "No such file or directory",
    "NPM_EACCES": "npm ERR! code EACCES\nnpm ERR! syscall mkdir\nnpm ERR! path /usr/local/lib/node_modules/{npm}\n"
    "npm ERR! errno -13",
    "NODE_ESM_CJS_MISMATCH": "SyntaxError: Cannot use import statement outside a module\n"
    "    at internalCompileFunction (node:internal/vm:76:18)",
    "NODE_OPENSSL_UNSUPPORTED": "Error: error:0308010C:digital envelope routines::unsupported\n"
    "    at new Hash (node:internal/crypto/hash:69:19)",
    "NODE_LOCKFILE_OUT_OF_SYNC": "npm ERR! `npm ci` can only install packages when your package.json and "
    "package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` "
    "before continuing.\nnpm ERR! Missing: {npm}@{semver} from lock file",
    "SSH_HOST_KEY_FAILED": "Host key verification failed.\nfatal: Could not read from remote repository.",
    "GIT_NOT_A_REPO": "fatal: not a git repository (or any of the parent directories): .git",
    "GIT_UNCOMMITTED_CHANGES": "error: Your local changes to the following files would be overwritten by checkout:\n"
    "\t{file}\nPlease commit your changes or stash them before you switch branches.\nAborting",
    "GIT_AUTH_FAILED": "remote: Invalid username or password.\n"
    "fatal: Authentication failed for 'https://github.com/{org}/{repo}.git/'",
    "GIT_DUBIOUS_OWNERSHIP": "fatal: detected dubious ownership in repository at '/home/dev/{repo}'\n"
    "To add an exception for this directory, call:\n\n\tgit config --global --add safe.directory /home/dev/{repo}",
    "DOCKER_SOCKET_PERMISSION": "permission denied while trying to connect to the Docker daemon socket at "
    "unix:///var/run/docker.sock: dial unix /var/run/docker.sock: connect: permission denied",
    "DOCKER_IMAGE_NOT_FOUND": "Error response from daemon: manifest for {org}/{repo}:{semver} not found: "
    "manifest unknown: manifest unknown",
    "DOCKER_PLATFORM_MISMATCH": "exec /usr/local/bin/docker-entrypoint.sh: exec format error",
    "K8S_CRASH_LOOP": "  Warning  BackOff  2m (x{count} over 9m)  kubelet  Back-off restarting failed container "
    "{service} in pod {repo}-7d9f8b6c5d-x2k4p",
    "DISK_FULL": "OSError: [Errno 28] No space left on device: '/home/dev/{repo}/.cache/build.tmp'",
    "TOO_MANY_OPEN_FILES": "Error: EMFILE: too many open files, open '/home/dev/{repo}/src/{tsfile}.ts'",
    "DNS_RESOLUTION_FAILED": "Error: getaddrinfo ENOTFOUND {host}.{domain}",
    "OOM_KILLED": "{repo}-{service}-1 exited with code 137",
    "SEGFAULT": "Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f1c2b4e7740 (most recent call first):",
    "COMMAND_NOT_FOUND": "/bin/sh: 1: {service}-cli: not found",
    "GO_MODULES_OUT_OF_SYNC": "main.go:{line}:2: no required module provides package github.com/{org}/{repo}; "
    "to add it:\n\tgo get github.com/{org}/{repo}",
    "RUST_TOOLCHAIN_TOO_OLD": "error: package `clap_lex v0.7.0` cannot be built because it requires rustc 1.74 or "
    "newer, while the currently active rustc version is 1.70.0",
    "JAVA_VERSION_MISMATCH": 'Exception in thread "main" java.lang.UnsupportedClassVersionError: com/example/App has '
    "been compiled by a more recent version of the Java Runtime (class file version 61.0), this version of the Java "
    "Runtime only recognizes class file versions up to 55.0",
    "JVM_DEPENDENCY_UNRESOLVED": "[ERROR] Failed to execute goal on project {repo}: Could not resolve dependencies for "
    "project com.example:{repo}:jar:1.0.0: Could not find artifact com.example:common:jar:{semver} in central "
    "(https://repo.maven.apache.org/maven2)",
    "TERRAFORM_STATE_LOCKED": "Error: Error acquiring the state lock\n\n"
    "Error message: ConditionalCheckFailedException: The conditional request failed\n"
    "Lock Info:\n  Path:      tfstate/{repo}/terraform.tfstate\n  Operation: OperationTypeApply",
}
_FILL: dict[str, tuple[str, ...]] = {
    "repo": ("billing-api", "web-shop", "data-pipeline", "mobile-bff", "auth-service", "docs-site"),
    "pymod": ("requests", "pandas", "yaml", "dotenv", "psycopg", "pydantic", "boto3"),
    "pypkg": ("numpy", "django", "pandas", "scipy", "fastapi"),
    "npm": ("express", "dotenv", "axios", "@nestjs/core", "lodash", "zod", "react-router-dom"),
    "port": ("3000", "5173", "8000", "8080", "5000", "4200"),
    "domain": ("example.com", "acme.internal", "corp.local", "staging.example.net"),
    "path": ("orders", "users/me", "session", "cart/items"),
    "file": ("src/api/routes.ts", "package-lock.json", "app/models.py", "README.md", "pyproject.toml"),
    "tsfile": ("index", "api/client", "components/App", "server/db"),
    "org": ("acme-dev", "globex", "initech-labs"),
    "dbuser": ("app", "analytics", "devdiag_writer", "web"),
    "host": ("auth", "api", "registry", "grafana"),
    "apps": ("orders", "auth, orders", "billing", "accounts, sessions"),
    "service": ("db", "web", "redis", "api"),
    "react": ("18.3.1", "18.2.0", "19.0.0"),
    "react_peer": ("17.0.2", "16.14.0"),
    "semver": ("5.1.0", "9.0.2", "4.21.1"),
    "line": ("3", "12", "27", "41"),
    "octet": ("1", "4", "20"),
    "count": ("2", "3", "7", "18"),
    "pyold": ("8", "9", "10"),
    "pynew": ("11", "12"),
    "patch": ("10", "13", "18"),
    "branch": ("main", "main", "master", "feature/checkout", "fix/flaky-login-test"),
}

TENANT_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "soylent", "stark", "wayne")
MAX_TENANTS = 999  # beyond the named eight: team-09 ... team-999
# Tenants beyond the named eight: run volume falls off like Zipf (1/rank) from about the level of the
# smaller named ones, so 50 tenants give a few large teams and a long tail (top one ~9% of runs, the
# smallest ~0.7%); working days spread over these UTC offsets.
_TAIL_WEIGHT, _TAIL_RANK = 0.2, 8.5
_TAIL_OFFSETS = (-8, 1, 5.5, -5, 2, 8, -3, 0, 9, -6, 3, 10)
# (run volume weight, UTC offset of its working day in hours, environments with weights)
_TENANT_PROFILES: tuple[tuple[float, float, tuple[tuple[str, float], ...]], ...] = (
    (
        0.45,
        -5,
        (
            ("linux/python-3.12/node-20", 0.45),
            ("macos/python-3.12/node-20", 0.30),
            ("macos/python-3.11/node-18", 0.15),
            ("windows/python-3.12/node-20", 0.10),
        ),
    ),
    (
        0.35,
        1,
        (
            ("macos/python-3.11/node-18", 0.40),
            ("linux/python-3.11/node-18", 0.30),
            ("windows/python-3.12", 0.20),
            ("linux/python-3.12/node-20", 0.10),
        ),
    ),
    (
        0.20,
        5.5,
        (
            ("windows/python-3.12", 0.45),
            ("windows/python-3.11/node-18", 0.25),
            ("linux/python-3.10", 0.20),
            ("macos/python-3.12/node-22", 0.10),
        ),
    ),
)


@dataclass(frozen=True)
class LoadReport:
    inserted: int
    skipped: int
    seconds: float
    runs: int = 0
    rows: int = 0
    generate_seconds: float = 0.0
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float
    utc_offset_h: float
    environments: tuple[str, ...]
    env_cum_weights: tuple[float, ...]

    def environment(self, rng: random.Random) -> str:
        return self.environments[bisect_right(self.env_cum_weights, rng.random() * self.env_cum_weights[-1])]


@dataclass(frozen=True)
class DemoProblem:
    code: str
    severity: str
    fixes: tuple[str, ...]
    priors: tuple[float, ...]
    # hidden true success rate per tenant index and fix index
    true_rates: tuple[tuple[float, ...], ...]


@dataclass(eq=False)
class _Incident:
    tenant: int
    problem: DemoProblem
    error_msg: str
    environment: str
    sighting: float
    fix: int | None = None  # the fix in flight (an attempt waiting for its outcome)
    applicable: tuple[int, ...] = ()  # the fixes whose catalog conditions hold for this error text
    flare_up: bool = False  # reopened for the runbook's "recent occurrences": seen once regardless


@dataclass(slots=True)
class _Row:
    """A finding (or clean run) before ids and confidence are attached (slots: 10M runs, ~10M of these)."""

    run: int
    ts_us: int
    tenant: int
    environment: str
    code: str | None = None
    fix: str | None = None
    score_key: tuple[float, int, int, int, int] | None = None
    resolution: str | None = None
    resolved_us: int | None = None
    error_msg: str | None = None


# --- public API -----------------------------------------------------------------------------------


def generate(
    runs: int,
    *,
    conn: psycopg.Connection,
    seed: int = 7,
    now: datetime | None = None,
    days: int = 185,
    tenants: int = 3,
    codes: int = DEFAULT_CODES,
) -> list[RunRow]:
    """The demo rows for ``runs`` diagnostic runs, in time order; deterministic for (seed, now).

    ``conn`` evaluates ``devdiag.fix_confidence`` (the raw schema must exist: `devdiag setup`).
    """
    with _gc_paused():
        return list(_iter_rows(*_simulate(conn, runs, seed, now, days, tenants, codes)))


def load_demo(
    settings: ConnectionSettings,
    runs: int,
    seed: int = 7,
    now: datetime | None = None,
    *,
    days: int = 185,
    tenants: int = 3,
    codes: int = DEFAULT_CODES,
) -> LoadReport:
    """Generate and load the demo history; loading the same (runs, seed, now) again inserts 0.

    Rows are built batch by batch as the writer takes them, so a million runs never sit in memory
    as a million row objects.
    """
    started = time.perf_counter()
    with connect(settings) as conn, _gc_paused():
        _require_schema(conn)
        simulation = _simulate(conn, runs, seed, now, days, tenants, codes)
        records = simulation[0]
        simulated = time.perf_counter()
        inserted = write_runs(conn, _iter_rows(*simulation))
    done = time.perf_counter()
    return LoadReport(
        inserted=inserted,
        skipped=len(records) - inserted,
        seconds=done - started,
        runs=runs,
        rows=len(records),
        generate_seconds=simulated - started,
        load_seconds=done - simulated,
    )


@dataclass(frozen=True)
class DemoRefresh:
    action: str  # "loaded", "kept" (fresh already) or "replaced" (stale history swapped for one ending now)
    removed: int
    report: LoadReport | None
    others: dict[str, int] = field(default_factory=dict)  # rows of tenants that are not the demo's, kept


FRESH_FOR = timedelta(hours=1)
SHOWN_TENANTS = 5  # in a message: the largest few of the tenants found, then "..."


def refresh_demo(settings: ConnectionSettings, runs: int, seed: int = 7, *, tenants: int = 3) -> DemoRefresh:
    """What `devdiag demo` does with the data, safe to repeat.

    A demo history ends now. Run again while it is fresh (newest demo run under an hour old), nothing
    is loaded; once it has gone stale, the demo tenants' rows are replaced by a history ending now (a
    second history beside the first would double every figure). Other tenants' rows are never
    touched: on the embedded database they are the user's own (an MCP server tried on it writes as
    tenant `default`), kept beside the demo's; a configured database (DEVDIAG_PG_*) that holds any is
    refused, as the demo must not mix made-up runs into a real team's data.
    """
    names = [t.name for t in demo_tenants(tenants)]
    with connect(settings) as conn:
        _require_schema(conn)
        others: dict[str, int]
        if settings.embedded:
            others = dict(
                conn.execute(
                    "select tenant_id, count(*) from devdiag.diag_run where tenant_id <> all(%s) "
                    "group by tenant_id order by 2 desc, 1",
                    (names,),
                ).fetchall()
            )
        else:
            foreign = conn.execute(
                "select tenant_id from devdiag.diag_run where tenant_id <> all(%s) limit 1", (names,)
            ).fetchone()
            if foreign:
                raise click.ClickException(
                    f"{settings.describe()} holds runs of tenant {foreign[0]!r}, not "
                    "demo data: the demo loads only into an empty database or the embedded one: point "
                    "DEVDIAG_PG_* at an empty database, or unset DEVDIAG_PG_* to use the embedded one"
                )
            others = {}
        newest = scalar(conn, "select max(ts) from devdiag.diag_run where tenant_id = any(%s)", (names,))
        now = datetime.now(UTC)
        if newest is not None and now - newest < FRESH_FOR:
            return DemoRefresh("kept", 0, None, others)
        removed = 0
        if newest is not None:
            removed = conn.execute("delete from devdiag.diag_run where tenant_id = any(%s)", (names,)).rowcount
    report = load_demo(settings, runs=runs, seed=seed, now=now, tenants=tenants)
    return DemoRefresh("replaced" if removed else "loaded", removed, report, others)


def describe_tenants(rows_by_tenant: dict[str, int]) -> str:
    """'default' (3 rows), 'me' (1 row), ...: the largest few, for a one-line message."""
    shown = [
        f"{name!r} ({count:,} row{'s' if count != 1 else ''})"
        for name, count in list(rows_by_tenant.items())[:SHOWN_TENANTS]
    ]
    more = len(rows_by_tenant) - SHOWN_TENANTS
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Millions of small objects and no cycles: the cyclic GC would only rescan them, again and again.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _simulate(
    conn: psycopg.Connection,
    runs: int,
    seed: int,
    now: datetime | None,
    days: int,
    tenants: int,
    codes: int = DEFAULT_CODES,
) -> tuple[list[_Row], dict[tuple, float], tuple[Tenant, ...], int]:
    """Replay the history, then score every suggestion with devdiag.fix_confidence in bulk."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if days < 8:
        raise ValueError(f"days must be at least 8 (a 7-day window and today), got {days}")
    now_us = ids.micros(now if now is not None else datetime.now(UTC))  # rejects a naive `now`
    sim = _Simulation(runs, seed, now_us, days, tenants, codes)
    records = sim.run()
    scores = _score(conn, set(sim.score_keys))
    return records, scores, sim.tenants, seed


def demo_codes(count: int = DEFAULT_CODES) -> tuple[str, ...]:
    """The first ``count`` demo problem codes, most frequent first: DEMO_CODES, then the catalog's
    other problems with at least two fixes, in catalog order."""
    catalog = load_catalog()
    eligible = [p.code for p in catalog if len(p.fixes) >= 2]
    ordered = [c for c in DEMO_CODES if c in eligible]
    ordered += [c for c in eligible if c not in ordered]
    if not 1 <= count <= len(ordered):
        raise ValueError(f"codes must be between 1 and {len(ordered)} (catalog problems with 2+ fixes), got {count}")
    return tuple(ordered[:count])


def demo_problems(seed: int = 7, tenants: int = 3, codes: int = DEFAULT_CODES) -> tuple[DemoProblem, ...]:
    """The demo problems (20 by default) with their catalog fixes, priors and hidden true success rates."""
    catalog = load_catalog()
    return tuple(_demo_problem(catalog.problem(code), seed, tenants) for code in demo_codes(codes))


def demo_tenants(count: int = 3) -> tuple[Tenant, ...]:
    """The first ``count`` demo tenants: the eight named ones, then team-09, team-10, ... (smaller and smaller)."""
    if not 1 <= count <= MAX_TENANTS:
        raise ValueError(f"tenants must be between 1 and {MAX_TENANTS}, got {count}")
    result = []
    for i in range(count):
        weight, offset, envs = _TENANT_PROFILES[i % len(_TENANT_PROFILES)]
        if i >= len(TENANT_NAMES):
            name = f"team-{i + 1:02d}"
            weight, offset = _TAIL_WEIGHT * _TAIL_RANK / (i + 1), _TAIL_OFFSETS[i % len(_TAIL_OFFSETS)]
        else:
            name = TENANT_NAMES[i]
            if i >= len(_TENANT_PROFILES):
                weight, offset = weight * 0.6, offset + 3 * (i // len(_TENANT_PROFILES))
        labels = tuple(e for e, _ in envs)
        result.append(Tenant(name, weight, offset, labels, tuple(itertools.accumulate(w for _, w in envs))))
    return tuple(result)


@functools.cache
def applicable_fixes(code: str, error_msg: str) -> tuple[int, ...]:
    """Indexes of ``code``'s fixes whose conditions hold for ``error_msg``, decided as the server
    decides them (classifier captures, mcp_devdiag.details); every fix when the text is not matched."""
    catalog = load_catalog()
    problem = catalog.problem(code)
    captured = next((f.captured for f in classifier.classify(error_msg, catalog) if f.code == code), {})
    found = details.derive(problem, captured, error_msg)
    applicable = tuple(i for i, fix in enumerate(problem.fixes) if fix.applies(found, error_msg))
    return applicable or tuple(range(len(problem.fixes)))


def error_message(code: str, rng: random.Random) -> str | None:
    """A realistic, redacted error text for ``code`` (None when the demo has no template for it)."""
    template = ERROR_TEMPLATES.get(code)
    if template is None:
        return None
    return template.format(**{k: rng.choice(v) for k, v in _FILL.items()})


# --- problems and tenants -------------------------------------------------------------------------


def _demo_problem(problem: Problem, seed: int, tenants: int) -> DemoProblem:
    """True rates: one fix works well (not always the catalog's first), the others less so."""
    rng = random.Random(f"{seed}:truth:{problem.code}")
    fixes = problem.fixes
    best = 0 if rng.random() < 0.45 else rng.randrange(1, len(fixes))
    base = [rng.uniform(0.86, 0.96) if i == best else rng.uniform(0.25, 0.6) for i in range(len(fixes))]
    priors = tuple(f.prior for f in fixes)
    rates = tuple(
        tuple(_unlike(min(0.97, max(0.05, b + rng.gauss(0, 0.04))), p) for b, p in zip(base, priors, strict=True))
        for _ in range(tenants)
    )
    return DemoProblem(problem.code, problem.severity, tuple(f.id for f in fixes), priors, rates)


def _unlike(rate: float, prior: float, gap: float = 0.05) -> float:
    """Keep a true rate at least ``gap`` away from the catalog's prior: learning must have work to do."""
    if abs(rate - prior) >= gap:
        return rate
    return prior + gap if prior + gap <= 0.97 else prior - gap


# --- the simulation -------------------------------------------------------------------------------


@functools.cache
def _week_activity(offset_h: float) -> tuple[float, ...]:
    """_activity for each UTC hour of the week (index weekday * 24 + hour)."""
    return tuple(_activity(h % 24, h // 24, offset_h) for h in range(24 * 7))


def _activity(hour_utc: int, weekday_utc: int, offset_h: float) -> float:
    """Relative activity of a tenant in one UTC hour: working hours, quieter nights and weekends."""
    local = (hour_utc + offset_h) % 24
    weekday = (weekday_utc + (1 if hour_utc + offset_h >= 24 else -1 if hour_utc + offset_h < 0 else 0)) % 7
    day = 1.0 if weekday < 5 else 0.25
    if 9 <= local < 18:
        hour = 1.0
    elif 7 <= local < 21:
        hour = 0.5
    else:
        hour = 0.12
    return day * hour


class _Simulation:
    def __init__(self, runs: int, seed: int, now_us: int, days: int, tenants: int, codes: int = DEFAULT_CODES) -> None:
        self.runs = runs
        self.now_us = now_us
        self.start_us = now_us - days * DAY_US
        self.tenants = demo_tenants(tenants)
        # Each tenant meets problems at the same pace, so more tenants means more incidents (the
        # daily diversity cap still holds org-wide). Small demos have too few runs to sight many
        # problems: fewer incidents, else almost every run would find one. From ~7,500 runs (40 a
        # day) per three tenants on, the rate no longer depends on N.
        scale = len(self.tenants) / 3
        full_rate_runs = RUNS_PER_DAY_FOR_FULL_RATE * max(1.0, scale)
        self.incidents_per_day = INCIDENTS_PER_DAY * scale * min(1.0, runs / days / full_rate_runs) ** 0.6
        self.problems = demo_problems(seed, tenants, codes)
        # score keys interned: a suggestion's key repeats until its next outcome (saves memory at 10M runs)
        self.score_keys: dict[tuple[float, int, int, int, int], tuple[float, int, int, int, int]] = {}
        ranks = range(1, len(self.problems) + 1)
        self.popularity = [r**-ZIPF_EXPONENT for r in ranks]
        self.popularity_new_today = [w * 0.05 for w in self.popularity]
        self.code_index = {p.code: i for i, p in enumerate(self.problems)}
        # One RNG per concern: changing the number of runs does not reshuffle the incidents' codes.
        self.rng_runs = random.Random(f"{seed}:runs")
        self.rng_incidents = random.Random(f"{seed}:incidents")
        self.rng_sight = random.Random(f"{seed}:sightings")
        self.rng_outcomes = random.Random(f"{seed}:outcomes")
        # outcomes recorded so far: (tenant, code, fix) and (code, fix) -> [successes, attempts]
        self.by_tenant: dict[tuple[int, str, str], list[int]] = {}
        self.by_fix: dict[tuple[str, str], list[int]] = {}
        self.open: list[list[_Incident]] = [[] for _ in self.tenants]
        self.pending: list[tuple[int, int, _Incident, int, bool, bool]] = []  # outcome heap
        self.seq = itertools.count()
        # today's distinct codes and the trailing 7-day counts (hour buckets)
        self.day = -1
        self.today: set[str] = set()
        self.hour = -1
        self.win_runs = 0
        self.win_codes: dict[str, int] = {}
        self.hour_log: dict[int, tuple[int, dict[str, int]]] = {}

    # -- timelines --

    def _hour_weights(self) -> tuple[list[int], list[float]]:
        """(tenant << 40 | hour, cumulative weight) over tenants × hours, for sampling run times."""
        keys: list[int] = []
        cum: list[float] = []
        total = 0.0
        first_hour = self.start_us // HOUR_US
        last_hour = (self.now_us - 1) // HOUR_US
        span_hours = last_hour - first_hour + 1
        hours = []
        for h, hour_of_week in self._hours():
            lo, hi = max(h * HOUR_US, self.start_us), min((h + 1) * HOUR_US, self.now_us)
            growth = 0.8 + 0.4 * (h - first_hour) / span_hours  # adoption grows over the period
            hours.append((h, hour_of_week, growth, hi - lo))
        for t, tenant in enumerate(self.tenants):
            weight, activity, base = tenant.weight, _week_activity(tenant.utc_offset_h), t * (1 << 40)
            for h, hour_of_week, growth, length in hours:
                total += weight * activity[hour_of_week] * growth * length
                keys.append(base + h)
                cum.append(total)
        return keys, cum

    def _hours(self) -> list[tuple[int, int]]:
        """(hour since the epoch, UTC hour of the week: weekday * 24 + hour) of every hour of the demo."""
        out = []
        for h in range(self.start_us // HOUR_US, (self.now_us - 1) // HOUR_US + 1):
            dt = datetime.fromtimestamp(h * 3600, UTC)
            out.append((h, dt.weekday() * 24 + dt.hour))
        return out

    def _run_times(self) -> list[int]:
        """Every run as ts_us * tenants + tenant, sorted (one int a run, not a tuple: 10M runs);
        the last hour before `now` always has runs."""
        rng = self.rng_runs
        n = len(self.tenants)
        anchors = min(self.runs, 3)
        keys, cum = self._hour_weights()
        picks = rng.choices(keys, cum_weights=cum, k=self.runs - anchors)
        out = []
        for key in picks:
            tenant, h = divmod(key, 1 << 40)
            lo, hi = max(h * HOUR_US, self.start_us), min((h + 1) * HOUR_US, self.now_us)
            out.append((lo + int(rng.random() * (hi - lo))) * n + tenant)
        del picks
        # Freshness: a few runs in the last hour, and today (UTC) when today has begun.
        lo = max(self.now_us - HOUR_US, self.now_us - self.now_us % DAY_US)
        for _ in range(anchors):
            out.append((lo + int(rng.random() * max(1, self.now_us - lo))) * n + rng.randrange(n))
        out.sort()
        return out

    def _arrivals(self) -> list[tuple[int, int]]:
        """Sorted (ts_us, tenant) at which a new problem appears, independent of the run count."""
        rng = self.rng_incidents
        weights = [math.sqrt(t.weight) for t in self.tenants]
        total = sum(weights)
        hours = self._hours()
        out = []
        for t, tenant in enumerate(self.tenants):
            per_day = self.incidents_per_day * weights[t] / total
            # normalise activity so the tenant averages `per_day` over a week
            week = _week_activity(tenant.utc_offset_h)
            scale = per_day * 7 / sum(week)
            for h, hour_of_week in hours:
                if rng.random() < scale * week[hour_of_week]:
                    ts = max(h * HOUR_US, self.start_us) + int(rng.random() * HOUR_US)
                    if ts < self.now_us:
                        out.append((ts, t))
        out.sort()
        return out

    # -- the replay --

    def run(self) -> list[_Row]:
        arrivals = self._arrivals()
        records: list[_Row] = []
        ai = 0
        flare_at: int | None = self.now_us - FLARE_UP_HOURS * HOUR_US
        n = len(self.tenants)
        for run_no, key in enumerate(self._run_times()):
            ts, tenant = divmod(key, n)
            ai = self._advance(ts, arrivals, ai)
            self._roll_windows(ts)
            if flare_at is not None and ts >= flare_at:
                self._flare_up()
                flare_at = None
            found = self._sightings(tenant)
            records.extend(self._record_run(run_no, ts, tenant, found))
        return records

    def _advance(self, ts: int, arrivals: list[tuple[int, int]], ai: int) -> int:
        """Apply, in time order, the outcomes recorded and the problems that appeared before ts."""
        pending = self.pending
        while True:
            next_outcome = pending[0][0] if pending else None
            next_arrival = arrivals[ai][0] if ai < len(arrivals) else None
            if (
                next_outcome is not None
                and next_outcome < ts
                and (next_arrival is None or next_outcome <= next_arrival)
            ):
                self._apply_outcome(*heapq.heappop(pending)[2:])
            elif next_arrival is not None and next_arrival < ts:
                self._open_incident(arrivals[ai][1], arrivals[ai][0])
                ai += 1
            else:
                return ai

    def _apply_outcome(self, inc: _Incident, fix: int, success: bool, ends: bool) -> None:
        code, fix_id = inc.problem.code, inc.problem.fixes[fix]
        for counts in (
            self.by_tenant.setdefault((inc.tenant, code, fix_id), [0, 0]),
            self.by_fix.setdefault((code, fix_id), [0, 0]),
        ):
            counts[0] += success
            counts[1] += 1
        inc.fix = None
        if ends:
            self.open[inc.tenant].remove(inc)

    def _open_incident(self, tenant: int, ts: int) -> None:
        """A new problem for the tenant: by popularity, not one it already has open, less likely if
        already prominent this week or (on a day with many problems already) not yet seen today."""
        rng = self.rng_incidents
        index = self.code_index
        if len(self.today) >= DIVERSITY_SOFT_LIMIT:
            weights = self.popularity_new_today[:]
            for code in self.today:
                weights[index[code]] = self.popularity[index[code]]
        else:
            weights = self.popularity[:]
        if self.win_runs:
            limit = 0.6 * MAX_CODE_SHARE_7D * self.win_runs
            for code, seen in self.win_codes.items():
                if seen > limit:
                    weights[index[code]] *= 0.05  # already prominent this week: let another problem have its turn
        for inc in self.open[tenant]:
            weights[index[inc.problem.code]] = 0.0
        if any(weights):
            self._start(tenant, rng.choices(self.problems, weights=weights)[0])

    def _start(self, tenant: int, problem: DemoProblem, *, flare_up: bool = False) -> None:
        rng = self.rng_incidents
        error_msg = error_message(problem.code, rng) or problem.code
        inc = _Incident(
            tenant=tenant,
            problem=problem,
            error_msg=error_msg,
            environment=self.tenants[tenant].environment(rng),
            sighting=SIGHTING.get(problem.severity, 0.55),
            flare_up=flare_up,
            applicable=applicable_fixes(problem.code, error_msg),
        )
        self.open[tenant].append(inc)

    def _flare_up(self) -> None:
        """The week's most frequent problems are still around in the last day, as dominant problems
        are: the runbook's "review recent occurrences" of the top problem then has rows to show."""
        top = sorted(self.win_codes.items(), key=lambda kv: (-kv[1], kv[0]))[:FLARE_UP_CODES]
        by_code = {p.code: p for p in self.problems}
        busiest = max(range(len(self.tenants)), key=lambda t: self.tenants[t].weight)
        for code, count in top:
            if count and not any(inc.problem.code == code for incs in self.open for inc in incs):
                self._start(busiest, by_code[code], flare_up=True)

    def _roll_windows(self, ts: int) -> None:
        day = ts // DAY_US
        if day != self.day:
            self.day, self.today = day, set()
        hour = ts // HOUR_US
        if hour != self.hour:
            for old in [h for h in self.hour_log if h <= hour - 24 * 7]:
                runs, codes = self.hour_log.pop(old)
                self.win_runs -= runs
                for code, n in codes.items():
                    self.win_codes[code] -= n
            self.hour = hour
            self.hour_log[hour] = (0, {})

    def _sightings(self, tenant: int) -> list[_Incident]:
        """The tenant's open incidents this run sees: each with its sighting probability, within the
        day's diversity cap and the 7-day share cap (inlined: this runs for every run)."""
        rng = self.rng_sight
        today, win_codes = self.today, self.win_codes
        day_full = len(today) >= MAX_CODES_PER_DAY
        # The share is checked when a sighting is added; it can still creep up as older runs leave
        # the window (a quiet weekend after a busy week), hence the margin below the alert's 20%.
        share_cap = MAX_CODE_SHARE_7D * (self.win_runs + 1)
        hits = []
        for inc in self.open[tenant]:
            if rng.random() < inc.sighting:
                code = inc.problem.code
                if day_full and code not in today:
                    continue
                seen = win_codes.get(code, 0) + 1
                if seen <= 5 or inc.flare_up or seen <= share_cap:
                    hits.append(inc)
        if len(hits) > 1:
            rng.shuffle(hits)
            hits = hits[:2] if rng.random() < SECOND_FINDING else hits[:1]
            if len(self.today | {inc.problem.code for inc in hits}) > MAX_CODES_PER_DAY:
                hits = hits[:1]  # each was allowed alone, not both: keep the day within the limit
        return hits

    def _record_run(self, run_no: int, ts: int, tenant: int, found: list[_Incident]) -> Iterable[_Row]:
        runs, codes = self.hour_log[self.hour]
        self.hour_log[self.hour] = (runs + 1, codes)
        self.win_runs += 1
        if not found:
            return [_Row(run_no, ts, tenant, self.tenants[tenant].environment(self.rng_runs))]
        # A run happens in one environment: the first incident's, most of the time.
        env = found[0].environment
        if self.rng_runs.random() < 0.3:
            env = self.tenants[tenant].environment(self.rng_runs)
        rows = []
        for inc in found:
            code = inc.problem.code
            self.today.add(code)
            codes[code] = codes.get(code, 0) + 1
            self.win_codes[code] = self.win_codes.get(code, 0) + 1
            rows.append(self._finding(run_no, ts, tenant, env, inc))
        return rows

    def _finding(self, run_no: int, ts: int, tenant: int, env: str, inc: _Incident) -> _Row:
        problem = inc.problem
        row = _Row(run_no, ts, tenant, env, problem.code, error_msg=inc.error_msg)
        inc.flare_up = False  # seen: from now on the usual limits apply
        if inc.fix is None:
            inc.fix = self._choose_fix(tenant, problem, inc.applicable)
            self._attempt(row, inc)
        fix_id = problem.fixes[inc.fix]
        row.fix = fix_id
        mine = self.by_tenant.get((tenant, problem.code, fix_id), (0, 0))
        everyone = self.by_fix.get((problem.code, fix_id), (0, 0))
        key = (problem.priors[inc.fix], everyone[0], everyone[1], mine[0], mine[1])
        row.score_key = self.score_keys.setdefault(key, key)
        return row

    def _choose_fix(self, tenant: int, problem: DemoProblem, applicable: Sequence[int]) -> int:
        """Thompson sampling on all tenants' recorded outcomes for the problem's fixes that apply
        (as the server does: a fix whose condition fails is never suggested, so never credited)."""
        rng = self.rng_outcomes
        best, best_draw = applicable[0], -1.0
        for i in applicable:
            fix_id = problem.fixes[i]
            s, n = self.by_fix.get((problem.code, fix_id), (0, 0))
            draw = rng.betavariate(s + 1, n - s + 1)
            if draw > best_draw:
                best, best_draw = i, draw
        return best

    def _attempt(self, row: _Row, inc: _Incident) -> None:
        """The fix is tried; its outcome is recorded hours to days later (pending if after now)."""
        rng = self.rng_outcomes
        assert inc.fix is not None
        success = rng.random() < inc.problem.true_rates[inc.tenant][inc.fix]
        resolution = "fixed" if success else ("manual" if rng.random() < MANUAL_SHARE else "failed")
        delay_h = min(120.0, max(0.15, rng.lognormvariate(math.log(6.0), 1.0)))
        resolved = row.ts_us + int(delay_h * HOUR_US)
        if resolved > self.now_us:
            return  # still pending: the fix stays in flight until the end of the demo
        row.resolution, row.resolved_us = resolution, resolved
        heapq.heappush(self.pending, (resolved, next(self.seq), inc, inc.fix, success, resolution != "failed"))


# --- confidence and rows --------------------------------------------------------------------------


def _score(conn: psycopg.Connection, keys: set[tuple[float, int, int, int, int]]) -> dict[tuple, float]:
    """devdiag.fix_confidence for every distinct (prior, s_all, n_all, s_tenant, n_tenant), in bulk."""
    ordered = sorted(keys)
    scores: dict[tuple, float] = {}
    for i in range(0, len(ordered), SCORE_BATCH):
        chunk = ordered[i : i + SCORE_BATCH]
        columns = list(zip(*chunk, strict=True))
        cur = conn.execute(
            "select devdiag.fix_confidence(p, sa, na, st, nt) from unnest("
            "%s::float8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[]) with ordinality as u(p, sa, na, st, nt, i) "
            "order by i",
            [list(c) for c in columns],
        )
        scores.update(zip(chunk, (r[0] for r in cur), strict=True))
    return scores


def _iter_rows(
    records: Sequence[_Row], scores: dict[tuple, float], tenants: Sequence[Tenant], seed: int
) -> Iterator[RunRow]:
    """The rows, with time-ordered ids drawn from a seeded stream (same seed, same ids)."""
    rng = random.Random(f"{seed}:ids")
    bits = rng.getrandbits
    uuid7_int, from_int = ids.uuid7_int, ids.from_int
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    names = [t.name for t in tenants]
    run_no, run_id, ts = -1, uuid.UUID(int=0), epoch  # set by the first record (run numbers start at 0)
    for r in records:
        if r.run != run_no:
            run_no = r.run
            run_id = from_int(uuid7_int(r.ts_us, bits(62)))
            ts = epoch + timedelta(microseconds=r.ts_us)
        yield RunRow(
            from_int(uuid7_int(r.ts_us, bits(62))),
            run_id,
            ts,
            names[r.tenant],
            r.environment,
            r.code,
            r.fix,
            scores[r.score_key] if r.score_key is not None else None,
            r.resolution,
            epoch + timedelta(microseconds=r.resolved_us) if r.resolved_us is not None else None,
            r.error_msg,
        )


def _require_schema(conn: psycopg.Connection) -> None:
    found = conn.execute(
        "select to_regclass('devdiag.diag_run') is not null, "
        "to_regprocedure('devdiag.fix_confidence(double precision, bigint, bigint, bigint, bigint)') is not null"
    ).fetchone()
    if not (found and all(found)):
        raise DatabaseUnavailable("the DevDiag schema is missing: run `devdiag setup` first")
