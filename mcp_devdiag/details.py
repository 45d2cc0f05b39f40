"""Captured details of a finding: what the catalog's named groups took from the message, made safe
to show and to put into a command, plus what derives from them.

Safe: a value is kept only when redaction leaves it unchanged (a secret is dropped, not shown
masked) and it is a plain token: letters, digits and ``. _ - / @ : + ~`` (no blanks, quotes or shell
metacharacters), at most ``MAX_VALUE`` characters. A step such as ``pip install <package>`` can then
be rendered into a command that does what it says and nothing else; a dropped value leaves the
placeholder in the step.

Derived from a captured ``module`` (deterministic: the decision rests on the pasted text and on
fixed tables, never on the server's own machine, which for a team service is not the developer's):

- ``module_kind``: ``stdlib`` when the top-level name is in the standard library (Python:
  ``sys.stdlib_module_names``; Node: its built-in modules or a ``node:`` specifier); ``own`` when it
  is the project's: a Node specifier that is a path (``./``, ``../``, ``/``, ``~/``, ``@/``), or a
  Python top-level name that is a folder or file of a project path in the text (``.../app/x.py``
  for ``app``, outside ``site-packages``, ``dist-packages``, ``node_modules`` and virtual
  environments), or a dotted name whose top level is no well-known distribution
  (``app.models``); otherwise ``third_party``.
- ``package``: what to install: for Python the distribution of well-known import names whose
  distribution is named differently (``yaml`` -> ``pyyaml``, ``cv2`` -> ``opencv-python``), else the
  top-level name; for Node the package part of the specifier (``@scope/name`` or ``name``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

from mcp_devdiag.catalog import Problem
from mcp_devdiag.redaction import redact

MAX_VALUE = 120
_SAFE = re.compile(r"^[\w.\-/@:+~]+$")

# Import name -> distribution, where they differ (the common cases developers meet).
PY_DISTRIBUTIONS: dict[str, str] = {
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "bs4": "beautifulsoup4",
    "dotenv": "python-dotenv",
    "dateutil": "python-dateutil",
    "jwt": "pyjwt",
    "magic": "python-magic",
    "serial": "pyserial",
    "usb": "pyusb",
    "OpenSSL": "pyopenssl",
    "Crypto": "pycryptodome",
    "google.protobuf": "protobuf",
    "attr": "attrs",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "docx": "python-docx",
    "pptx": "python-pptx",
    "multipart": "python-multipart",
    "jose": "python-jose",
    "telegram": "python-telegram-bot",
    "slugify": "python-slugify",
    "Levenshtein": "python-levenshtein",
    "win32api": "pywin32",
    "win32com": "pywin32",
    "gi": "pygobject",
    "fitz": "pymupdf",
    "zmq": "pyzmq",
    "git": "gitpython",
    "ldap": "python-ldap",
    "websocket": "websocket-client",
    "kafka": "kafka-python",
    "faiss": "faiss-cpu",
    "tensorflow_hub": "tensorflow-hub",
}
# Dotted imports whose top level is a well-known distribution (so `numpy.linalg` is third-party).
PY_KNOWN_TOP_LEVEL = frozenset(
    {
        *(name.split(".")[0] for name in PY_DISTRIBUTIONS),
        *("numpy", "pandas", "scipy", "matplotlib", "requests", "django", "flask", "fastapi", "pydantic"),
        *("sqlalchemy", "boto3", "botocore", "google", "azure", "torch", "tensorflow", "transformers", "celery"),
        *("pytest", "setuptools", "werkzeug", "jinja2", "starlette", "uvicorn", "httpx", "aiohttp", "redis"),
        *("psycopg", "pymongo", "airflow", "dbt", "streamlit", "plotly", "seaborn", "rest_framework", "openai"),
    }
)
NODE_BUILTINS = frozenset(
    {
        *("assert", "buffer", "child_process", "cluster", "crypto", "dgram", "dns", "events", "fs", "http"),
        *("http2", "https", "net", "os", "path", "perf_hooks", "process", "querystring", "readline", "stream"),
        *("string_decoder", "timers", "tls", "tty", "url", "util", "v8", "vm", "worker_threads", "zlib"),
    }
)
_VENDORED = re.compile(r"(?:site-packages|dist-packages|node_modules|/\.?venv/|/lib/python\d)", re.IGNORECASE)
_PATHS = re.compile(r"(?:[A-Za-z]:)?/[^\s'\"<>:,()]+")


def safe(value: str | None) -> str | None:
    """``value`` when it can be shown and put into a command as is (module doc), else None."""
    if value is None:
        return None
    value = value.strip().strip("'\"`")
    if not value or len(value) > MAX_VALUE or not _SAFE.match(value) or redact(value) != value:
        return None
    return value


def _python_kind(module: str, text: str) -> str:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return "stdlib"
    for path in _PATHS.findall(text):
        if _VENDORED.search(path):
            continue
        parts = path.split("/")
        if top in parts[:-1] or parts[-1] in (f"{top}.py", top):
            return "own"
    if "." in module and top not in PY_KNOWN_TOP_LEVEL:
        return "own"  # a submodule of an unknown package: most often the project's own layout
    return "third_party"


def _node_package(module: str) -> str:
    parts = module.removeprefix("node:").split("/")
    return "/".join(parts[:2]) if module.startswith("@") else parts[0]


def _node_kind(module: str) -> str:
    if module.startswith((".", "/", "~/", "@/")):
        return "own"
    if module.startswith("node:") or _node_package(module) in NODE_BUILTINS:
        return "stdlib"
    return "third_party"


def derive(problem: Problem, captured: Mapping[str, str | None], text: str) -> dict[str, str]:
    """The finding's details: the safe captured values, plus what derives from ``module``."""
    details = {name: value for name, raw in captured.items() if (value := safe(raw)) is not None}
    module = details.get("module")
    if module is None or "module_kind" not in problem.details:
        return details
    if problem.category == "python":
        details["module_kind"] = _python_kind(module, text)
        package = PY_DISTRIBUTIONS.get(module) or PY_DISTRIBUTIONS.get(module.split(".")[0]) or module.split(".")[0]
    else:
        details["module_kind"] = _node_kind(module)
        package = _node_package(module)
    if "package" not in details and details["module_kind"] == "third_party":
        details["package"] = package
    return details
