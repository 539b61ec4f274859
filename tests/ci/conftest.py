"""Builds the CI tests compare: two good demo builds and one whose calibration collapsed (plain INT8, no fallback)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_GATE_FAILED, EXIT_OK

SCHEMA = Path(__file__).with_name("jenkins-junit.xsd")


def _build(out: Path, recipe: Path, *extra: str) -> CliRunner:
    return CliRunner().invoke(cli, ["-q", "build", "--recipe", str(recipe), "--out", str(out), *extra])


@pytest.fixture(scope="session")
def ci_builds(tmp_path_factory, collapsed_build):
    """{"good1", "good2", "bad"}: build directories; "recipe": the recipe all three were built with (the fast one,
    fallback off: it would leave the stem conv in float and rescue the collapsed build). Each build also wrote
    <name>.junit.xml and <name>.summary.md beside its directory (build --junit --summary). "bad" is the session's
    collapsed build (tests/conftest.py), made once for these tests and tests/pipeline/test_build.py."""
    d = tmp_path_factory.mktemp("ci-builds")
    recipe = collapsed_build["recipe"]
    assert collapsed_build["exit_code"] == EXIT_GATE_FAILED, collapsed_build["output"]
    out = {"recipe": recipe, "bad": collapsed_build["out"]}
    for name in ("good1", "good2"):
        res = _build(d / name, recipe, "--junit", str(d / f"{name}.junit.xml"), "--summary", str(d / f"{name}.summary.md"))
        assert res.exit_code == EXIT_OK, res.output
        out[name] = d / name
    shutil.copy(collapsed_build["junit"], d / "bad.junit.xml")  # beside the good ones, as the build wrote it
    shutil.copy(collapsed_build["summary"], d / "bad.summary.md")
    return out


@pytest.fixture(scope="session")
def junit_schema():
    xmlschema = pytest.importorskip("xmlschema", reason="the JUnit schema check needs xmlschema (the test extra)")
    return xmlschema.XMLSchema(str(SCHEMA))
