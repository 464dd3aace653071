"""pyproject.toml's dependency ranges agree with what is installed and with what the code imports.

- every requirement (main and the `dev` extra that CI installs) is installed at a version inside
  its range, so the floors in pyproject are never above what the suite runs on (and the suite
  runs on what pyproject promises);
- every requirement has a lower bound;
- every third-party package imported by the library, the stages and the flows is declared (a
  package that only arrives through another package's dependencies can vanish with its update).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
REQUIREMENTS = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]

CODE_DIRS = ("src/simcse_ops", "stages", "flows")
LOCAL = {"simcse_ops", "stages", "flows", "tests"}
# Imported only on request, with an error naming the package to install when missing.
OPTIONAL_IMPORTS = {"Stemmer"}  # PyStemmer: domain.score_bm25(stem=True)


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


@pytest.mark.parametrize("req", REQUIREMENTS + DEV, ids=str)
def test_installed_version_is_inside_the_declared_range(req):
    if not _applies(req):
        pytest.skip(f"marker {req.marker} does not apply here")
    try:
        installed = md.version(req.name)
    except md.PackageNotFoundError:
        pytest.fail(f"{req.name} is declared in pyproject.toml ({req}) but not installed: pip install -e '.[dev]'")
    assert req.specifier.contains(installed, prereleases=True), (
        f"{req.name} {installed} is installed but pyproject.toml requires {req}: the suite runs on a version "
        f"outside the declared range; move the bound to what the code really runs on")


@pytest.mark.parametrize("req", REQUIREMENTS + DEV, ids=str)
def test_every_requirement_has_a_lower_bound(req):
    assert any(s.operator in (">=", "==", "~=", "===") for s in req.specifier), (
        f"{req}: give a lower bound the code is known to run on (see the comments in pyproject.toml)")


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in CODE_DIRS (absolute imports) -> files importing them."""
    found: dict[str, set[str]] = {}
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_package_is_declared():
    declared = {canonicalize_name(r.name) for r in REQUIREMENTS}
    providers = md.packages_distributions()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        if module in OPTIONAL_IMPORTS:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            missing.append(f"{module} (not installed; imported by {', '.join(sorted(files))})")
        elif not dists & declared:
            missing.append(f"{module} from {'/'.join(sorted(dists))} (imported by {', '.join(sorted(files))})")
    assert not missing, "imported but not declared in pyproject.toml [project.dependencies]: " + "; ".join(missing)
