"""``python -m mcp_devdiag``: the DevDiag MCP server on stdio."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys

# The runbook finds the server with `ps aux | grep mcp-devdiag`, which a `python -m mcp_devdiag`
# command line does not match. So the module re-executes the same interpreter, with the same flags
# and arguments, plus `-X mcp-devdiag` (CPython keeps unknown -X options in sys._xoptions; its
# presence also stops the loop). argv[0] stays what it was: renaming it to "mcp-devdiag" would make
# Python look for its prefix beside a program of that name and lose the virtualenv. exec keeps the
# pid, the environment and file descriptors 0-2, so the editor's stdio pipes go on unchanged; it
# runs before anything reads stdin.
PROCESS_MARK = "mcp-devdiag"


def _reexec_args() -> list[str] | None:
    """The command line to re-execute with the mark, or None to run here as we are."""
    if os.name != "posix" or PROCESS_MARK in sys._xoptions or not sys.executable:
        return None  # Windows' execv starts a new process (the editor would see this one exit)
    argv = list(getattr(sys, "orig_argv", []))
    # Only as the interpreter's own `-m mcp_devdiag`: never re-run a host that imported this module.
    if not any(a == "-m" and b == "mcp_devdiag" for a, b in itertools.pairwise(argv)):
        return None
    return [argv[0], "-X", PROCESS_MARK, *argv[1:]]


def _reexec() -> None:
    args = _reexec_args()
    if args is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # cannot re-execute: serve as we are, only the command line differs
        os.execv(sys.executable, args)


_reexec()

from mcp_devdiag.server import main  # noqa: E402

main()
