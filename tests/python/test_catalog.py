"""The packaged catalog's content rules, its API, and validation of broken catalog files."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_devdiag.catalog import CATEGORIES, SEVERITIES, Catalog, Fix, Problem, load_catalog, parse_catalog

CATALOG_FILE = Path(__file__).resolve().parents[2] / "mcp_devdiag" / "catalog.yaml"

# Codes other modules (probes, demo data) and the brief rely on, grouped by area.
REQUIRED_CODES = {
    "browser": [
        "CORS_BLOCKED",
        "CORS_PREFLIGHT_FAILED",
        "FRAME_EMBED_BLOCKED",
        "CSP_INLINE_SCRIPT_BLOCKED",
        "MIXED_CONTENT",
        "COOKIE_REJECTED",
        "TLS_CERT_EXPIRED",
        "TLS_CERT_UNTRUSTED",
        "TLS_HOSTNAME_MISMATCH",
    ],
    "backend": [
        "HTTP_5XX_BURST",
        "CONNECTION_REFUSED",
        "DB_UNREACHABLE",
        "DB_AUTH_FAILED",
        "DB_PENDING_MIGRATIONS",
        "REQUEST_TIMEOUT",
    ],
    "python": ["PY_MODULE_NOT_FOUND", "PY_VERSION_MISMATCH", "PY_EXTERNALLY_MANAGED", "PIP_SSL_ERROR"],
    "node": ["NODE_MODULE_NOT_FOUND", "NODE_ENGINE_MISMATCH", "PORT_IN_USE", "NPM_ERESOLVE"],
    "git": ["GIT_PUBLICKEY_DENIED", "GIT_NOT_A_REPO", "GIT_MERGE_CONFLICT"],
    "docker": ["DOCKER_DAEMON_NOT_RUNNING", "DOCKER_PORT_ALLOCATED"],
    "os": ["DISK_FULL", "PERMISSION_DENIED", "TOO_MANY_OPEN_FILES", "DNS_RESOLUTION_FAILED"],
    "extra": [
        "JS_HEAP_OOM",
        "OOM_KILLED",
        "SEGFAULT",
        "GIT_NON_FAST_FORWARD",
        "NPM_EACCES",
        "TS_CANNOT_FIND_MODULE",
        "PY_SYNTAX_ERROR",
        "FILE_WATCHER_LIMIT",
    ],
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def raw() -> dict[str, Any]:
    """A fresh copy of the packaged catalog document, to break in one place per test."""
    return copy.deepcopy(yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8")))


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- content


def test_catalog_has_at_least_40_problem_codes(catalog: Catalog) -> None:
    assert len(catalog.problems) >= 40


@pytest.mark.parametrize("area", sorted(REQUIRED_CODES))
def test_required_codes_present(catalog: Catalog, area: str) -> None:
    missing = [code for code in REQUIRED_CODES[area] if code not in catalog.problems]
    assert not missing, f"{area}: missing {missing}"


def test_every_category_is_used(catalog: Catalog) -> None:
    assert {p.category for p in catalog} == CATEGORIES


def test_problem_fields_are_well_formed(catalog: Catalog) -> None:
    for problem in catalog:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", problem.code)
        assert problem.title.strip()
        assert problem.category in CATEGORIES
        assert problem.severity in SEVERITIES
        assert problem.patterns, problem.code
        assert all(p.flags & re.IGNORECASE for p in problem.patterns), problem.code


def test_fixes_two_to_four_with_distinct_priors_best_first(catalog: Catalog) -> None:
    for problem in catalog:
        priors = [f.prior for f in problem.fixes]
        assert 2 <= len(priors) <= 4, problem.code
        assert len(set(priors)) == len(priors), f"{problem.code}: priors not distinct {priors}"
        assert priors == sorted(priors, reverse=True), f"{problem.code}: fixes not ordered by prior"
        for fix in problem.fixes:
            assert 2 <= len(fix.steps) <= 5, fix.id
            assert all(step.strip() for step in fix.steps), fix.id


def test_priors_are_spread_not_constant(catalog: Catalog) -> None:
    priors = [f.prior for p in catalog for f in p.fixes]
    assert min(priors) <= 0.4 and max(priors) >= 0.8


def test_fix_ids_unique_kebab_case(catalog: Catalog) -> None:
    ids = [f.id for p in catalog for f in p.fixes]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids)


def test_patterns_do_not_match_empty_or_blank_text(catalog: Catalog) -> None:
    for problem in catalog:
        for pattern in problem.patterns:
            assert not pattern.search(""), pattern.pattern
            assert not pattern.search("   \n\n  "), pattern.pattern


# ---------------------------------------------------------------------------------------- API


def test_problem_lookup_and_unknown_code(catalog: Catalog) -> None:
    assert catalog.problem("CORS_BLOCKED").category == "browser"
    with pytest.raises(ValueError, match="NOT_A_CODE"):
        catalog.problem("NOT_A_CODE")


def test_fix_lookup_returns_its_problem(catalog: Catalog) -> None:
    problem, fix = catalog.fix("cors-allow-origin")
    assert isinstance(problem, Problem) and isinstance(fix, Fix)
    assert problem.code == "CORS_BLOCKED" and fix in problem.fixes
    with pytest.raises(ValueError, match="no-such-fix"):
        catalog.fix("no-such-fix")


def test_iteration_follows_file_order(catalog: Catalog, raw: dict[str, Any]) -> None:
    assert [p.code for p in catalog] == [p["code"] for p in raw["problems"]]


def test_default_catalog_is_cached_and_immutable(catalog: Catalog) -> None:
    assert load_catalog() is load_catalog()
    with pytest.raises(AttributeError):
        catalog.problem("CORS_BLOCKED").code = "X"  # type: ignore[misc]


def test_explicit_path_loads_the_same_content(tmp_path: Path, raw: dict[str, Any], catalog: Catalog) -> None:
    loaded = load_catalog(write(tmp_path, raw))
    assert loaded is not catalog
    assert list(loaded.problems) == list(catalog.problems)


# ---------------------------------------------------------------------------------------- validation


def _mutate(raw: dict[str, Any], how: str) -> str:
    """Break the document one way; return a fragment the error message must contain."""
    first, second = raw["problems"][0], raw["problems"][1]
    if how == "duplicate code":
        second["code"] = first["code"]
        return first["code"]
    if how == "duplicate fix id":
        second["fixes"][0]["id"] = first["fixes"][0]["id"]
        return first["fixes"][0]["id"]
    if how == "bad code format":
        first["code"] = "cors-blocked"
        return "cors-blocked"
    if how == "prior above 1":
        first["fixes"][1]["prior"] = 1.5
        return first["fixes"][1]["id"]
    if how == "prior below 0":
        first["fixes"][0]["prior"] = -0.1
        return first["fixes"][0]["id"]
    if how == "prior not a number":
        first["fixes"][0]["prior"] = "high"
        return first["fixes"][0]["id"]
    if how == "no fixes":
        second["fixes"] = []
        return second["code"]
    if how == "bad severity":
        first["severity"] = "fatal"
        return "fatal"
    if how == "bad category":
        first["category"] = "frontend"
        return "frontend"
    if how == "pattern does not compile":
        second["patterns"].append("unbalanced (paren")
        return second["code"]
    if how == "too many steps":
        first["fixes"][0]["steps"] = ["do it"] * 6
        return first["fixes"][0]["id"]
    if how == "fix id not kebab-case":
        first["fixes"][0]["id"] = "Cors_Allow"
        return "Cors_Allow"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "duplicate code",
        "duplicate fix id",
        "bad code format",
        "prior above 1",
        "prior below 0",
        "prior not a number",
        "no fixes",
        "bad severity",
        "bad category",
        "pattern does not compile",
        "too many steps",
        "fix id not kebab-case",
    ],
)
def test_validation_rejects_broken_catalog(tmp_path: Path, raw: dict[str, Any], how: str) -> None:
    fragment = _mutate(raw, how)
    with pytest.raises(ValueError) as excinfo:
        load_catalog(write(tmp_path, raw))
    message = str(excinfo.value)
    assert fragment in message
    assert "\n" not in message


def test_validation_rejects_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("version: 1\nproblems:\n  - code: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid YAML") as excinfo:
        load_catalog(path)
    assert "\n" not in str(excinfo.value)


def test_validation_rejects_unknown_version(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["version"] = 2
    with pytest.raises(ValueError, match="version"):
        load_catalog(write(tmp_path, raw))


def _fix_of(data: dict[str, Any], fix_id: str) -> dict[str, Any]:
    return next(f for p in data["problems"] for f in p["fixes"] if f["id"] == fix_id)


def _all_conditional(data: dict[str, Any]) -> None:
    for fix_id in ("git-pull-rebase-then-push", "git-set-pull-strategy"):
        _fix_of(data, fix_id)["when"] = {"branch": "main"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _fix_of(d, "git-force-with-lease").update(when={"remote": ["origin"]}), "names 'remote'"),
        (lambda d: _fix_of(d, "git-force-with-lease").update(when={"branch": {"like": "x"}}), "use a value, a list"),
        (lambda d: _fix_of(d, "git-force-with-lease").update(when={"branch": {"matches": "("}}), "does not compile"),
        (lambda d: _fix_of(d, "py-fix-package-path").update(unless={"module_kind": "mine"}), "module_kind is one of"),
        (lambda d: _fix_of(d, "git-force-with-lease").update(if_branch="x"), "unknown key(s) if_branch"),
        (_all_conditional, "without 'when' or 'unless'"),
        (lambda d: d["problems"][0].update(code="UNRECOGNISED"), "is reserved"),
        (lambda d: d["problems"][0]["patterns"].append("(?P<Bad>x)"), "capture name 'Bad'"),
    ],
)
def test_bad_conditions_are_refused_in_one_line_naming_the_entry(raw, change, message) -> None:
    change(raw)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_catalog(raw)
    assert "\n" not in str(info.value) and "problem " in str(info.value)


def test_conditions_decide_and_steps_render_with_details(catalog: Catalog) -> None:
    _, force = catalog.fix("git-force-with-lease")
    assert not force.applies({"branch": "main"}) and not force.applies({})  # unknown branch: not offered
    assert force.applies({"branch": "feature/x"})
    assert force.render({"branch": "feature/x"})[0].endswith("git push --force-with-lease origin feature/x.")
    _, install = catalog.fix("py-install-in-active-env")
    assert install.applies({"module_kind": "third_party"}) and install.applies({})  # `unless`: needs evidence
    assert not install.applies({"module_kind": "own"}) and not install.applies({"module_kind": "stdlib"})
    assert "<package>" in install.steps[1] and "pip install yaml" not in install.render({"package": "pyyaml"})[1]
