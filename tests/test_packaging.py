"""Packaging facts: one version, the PEP 561 marker, the docs extra."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pope

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_version_written_once_and_installed_metadata_agrees():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    # pyproject.toml does not repeat the version: it is read from src/pope/__init__.py
    assert "version" not in project
    assert "version" in project["dynamic"]
    provider = pyproject["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["input"] == "src/pope/__init__.py"
    init = (ROOT / "src" / "pope" / "__init__.py").read_text()
    written = re.findall(r'^__version__ = "([^"]+)"$', init, flags=re.MULTILINE)
    assert len(written) == 1
    assert pope.__version__ == written[0]
    assert importlib.metadata.version("pope") == pope.__version__


def test_package_is_marked_typed():
    # the wheel maps src/pope to pope, so the marker ships with it
    assert (Path(pope.__file__).parent / "py.typed").is_file()


def test_docs_extra_matches_what_conf_py_loads():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in extras["docs"]}
    test_names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in extras["test"]}
    assert names <= test_names  # scripts/test.sh builds the docs with the test extra
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert '"myst_parser"' in conf and "myst-parser" in names
    assert 'html_theme = "furo"' in conf and "furo" in names


def test_test_command_type_checks_with_the_test_extra():
    # scripts/test.sh runs scripts/typecheck.sh in the environment setup.sh builds from .[test]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    test_names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in extras["test"]}
    typecheck = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in extras["typecheck"]}
    assert typecheck <= test_names
    assert 'install -q -e "$root[test]"' in (ROOT / "scripts" / "setup.sh").read_text()
    assert "scripts/typecheck.sh" in (ROOT / "scripts" / "test.sh").read_text()
