"""The canonical environment label stored with every run, e.g. ``linux/python-3.12/node-20``.

Readable and coarse on purpose: analytics group by it (v_env_diversity), so patch versions would
split one environment into many. ``DEVDIAG_ENVIRONMENT`` overrides the detected label.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys

_OS_NAMES = {"linux": "linux", "darwin": "macos", "windows": "windows"}
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*(?:/[a-z0-9][a-z0-9._+-]*)*$")
MAX_LABEL = 200  # the writer's limit for labels
NODE_TIMEOUT_S = 2.0


def os_label() -> str:
    system = platform.system().lower()
    return _OS_NAMES.get(system, system or "unknown")


def python_label() -> str:
    return f"python-{sys.version_info.major}.{sys.version_info.minor}"


def node_label() -> str | None:
    """``node-20`` for the Node.js on PATH, None when there is none (or it does not answer)."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v?(\d+)\.", out.stdout.strip())
    return f"node-{match.group(1)}" if match else None


def detect() -> str:
    """The label of this machine: operating system, Python minor version, Node.js major version."""
    parts = [os_label(), python_label()]
    node = node_label()
    if node:
        parts.append(node)
    return "/".join(parts)


def canonical(label: str) -> str:
    """Normalise an explicit label (lower case, no spaces around the slashes) or raise ValueError."""
    value = "/".join(part.strip() for part in label.strip().lower().split("/"))
    if not value or len(value) > MAX_LABEL or not _LABEL_RE.match(value):
        raise ValueError(
            f"environment label {label!r} is not valid: use lower-case parts joined by '/', "
            "e.g. linux/python-3.12/node-20"
        )
    return value
