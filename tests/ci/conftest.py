"""Builds the CI tests compare: two good demo builds and one whose calibration collapsed (plain INT8, no fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_GATE_FAILED, EXIT_OK

SCHEMA = Path(__file__).with_name("jenkins-junit.xsd")


def _build(out: Path, recipe: Path, *extra: str) -> CliRunner:
    return CliRunner().invoke(cli, ["-q", "build", "--recipe", str(recipe), "--out", str(out), *extra])


@pytest.fixture(scope="session")
def ci_builds(tmp_path_factory, fast_recipe):
    """{"good1", "good2", "bad"}: build directories; "recipe": the recipe all three were built with. Each build
    also wrote <name>.junit.xml and <name>.summary.md beside its directory (build --junit --summary)."""
    d = tmp_path_factory.mktemp("ci-builds")
    recipe = d / "ci.toml"
    # fallback off: it would leave the stem conv in float and rescue the collapsed build
    recipe.write_text(fast_recipe.read_text() + "\n[fallback]\nenabled = false\n")
    calib = d / "calib"
    calib.mkdir()
    Image.new("L", (32, 32), color=0).save(calib / "black.png")  # one constant image: activation ranges collapse
    out = {"recipe": recipe}
    for name, extra, code in (("good1", (), EXIT_OK), ("good2", (), EXIT_OK), ("bad", ("--calib", str(calib)), EXIT_GATE_FAILED)):
        res = _build(d / name, recipe, *extra, "--junit", str(d / f"{name}.junit.xml"), "--summary", str(d / f"{name}.summary.md"))
        assert res.exit_code == code, res.output
        out[name] = d / name
    return out


@pytest.fixture(scope="session")
def junit_schema():
    xmlschema = pytest.importorskip("xmlschema", reason="the JUnit schema check needs xmlschema (the test extra)")
    return xmlschema.XMLSchema(str(SCHEMA))
