"""pyproject.toml lists packages explicitly (recipes/ and calibration/ are mapped into the package): keep it complete."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT / "toolkit").parts)
        for p in (ROOT / "toolkit" / "resnext_deploy").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for pkg in listed:
        mapped = cfg["package-dir"].get(pkg)
        folder = ROOT / mapped if mapped else ROOT / "toolkit" / Path(*pkg.split("."))
        assert folder.is_dir(), f"{pkg} is listed but {folder} does not exist"


def test_shipped_data_is_declared_as_package_data():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.toml" in cfg["package-data"]["resnext_deploy.recipe_files"]
    assert any("png" in g for g in cfg["package-data"]["resnext_deploy.demo_data"])
    assert any(".pt" in g for g in cfg["package-data"]["resnext_deploy.demo_data"])
