"""One build step beyond pyproject.toml: the wheel carries the dbt project and the Grafana files.

The repository root stays an ordinary dbt project (plain `dbt build --profiles-dir .`, sqlfluff, the
docs and tests use these paths), so the files are copied into the build, under
``devdiag_db/project/``, instead of moving into a package. `devdiag_db.config.project_dir()` finds a
checkout first and that copy otherwise. MANIFEST.in puts the same files in the sdist, so a wheel
built from the sdist carries them too (tests/python/test_wheel.py checks both).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROJECT_PACKAGE_DIR = ("devdiag_db", "project")  # devdiag_db.config.PACKAGED_PROJECT
PROJECT_FILES = ("dbt_project.yml", "selectors.yml", "profiles.yml.example")
PROJECT_TREES = ("models", "macros", "tests", "grafana")
# tests/python holds pytest files, not dbt tests: they stay out of the wheel.
EXCLUDED = (("tests", "python"),)


def project_files(root: Path = ROOT) -> Iterator[Path]:
    """Paths, relative to the root, of everything the commands read at run time besides the packages."""
    for name in PROJECT_FILES:
        yield Path(name)
    for tree in PROJECT_TREES:
        for path in sorted((root / tree).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and rel.parts[:2] not in EXCLUDED:
                yield rel


class BuildPyWithProject(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        target = Path(self.build_lib).joinpath(*PROJECT_PACKAGE_DIR)
        shutil.rmtree(target, ignore_errors=True)  # a file deleted from the project leaves no stale copy
        for rel in project_files():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / rel), str(target / rel))


setup(cmdclass={"build_py": BuildPyWithProject})
