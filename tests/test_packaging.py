"""The wheel: pure Python, the toolkit and its recipes only (no demo or stand-in data), <= 5 MB, built without
warnings by the build backend pyproject.toml names (hatchling: PEP 639 license on Python 3.8 too)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from resnext_deploy.data import resources
from resnext_deploy.tensorrt.distribution import wheel_for_device

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 5_000_000


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return wheel_for_device(tmp_path_factory.mktemp("wheel"))


def test_pyproject_declares_an_spdx_license_and_a_backend_that_reads_it_on_python_38():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["project"]["license"] == "Apache-2.0"  # PEP 639: not the table form setuptools removes in 2027
    assert cfg["build-system"]["build-backend"] == "hatchling.build"
    assert cfg["build-system"]["requires"] == ["hatchling>=1.27"]  # 1.27: PEP 639, and still Python 3.8
    assert cfg["project"]["requires-python"] == ">=3.8"


def test_the_wheel_is_pure_small_and_carries_no_data(wheel):
    assert wheel.name.endswith("-py3-none-any.whl")
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".pt", ".png", ".npy", ".onnx", ".so", ".pyd"))]
    assert not [n for n in names if "demo_data" in n or "calibration/" in n]
    found = {str(p.relative_to(ROOT / "toolkit")) for p in (ROOT / "toolkit" / "resnext_deploy").rglob("*.py")}
    assert found <= set(names), sorted(found - set(names))[:5]  # every module, no package forgotten
    recipes = {f"resnext_deploy/recipe_files/{p.name}" for p in (ROOT / "recipes").glob("*.toml")}
    assert recipes and recipes <= set(names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Requires-Python: >=3.8" in meta
    heavy = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    # cryptography: the device signs its report (buildfolder/signing.py), so the wheel the bundle carries needs it
    assert sorted(ln.split()[1].split(">")[0].split(";")[0] for ln in heavy) == ["click", "cryptography", "numpy",
                                                                               "pillow", "tomli"]
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "resnext-deploy = resnext_deploy.cli:main" in entry


def test_the_wheel_is_reproducible(wheel, tmp_path):
    again = wheel_for_device(tmp_path)
    assert again.read_bytes() == wheel.read_bytes()  # the bundle's tarball stays byte-identical


def test_building_prints_no_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (proc.stdout + proc.stderr).lower()
    assert "warning" not in text.replace("warning: location", ""), text  # pip's own index-location notes aside
    assert "deprecat" not in text


def test_a_wheel_install_repacks_itself_and_refuses_an_altered_install(wheel, tmp_path):
    """Installed from a wheel (not a checkout), the device wheel is repacked from the install, checked by RECORD."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    script = ("import json, sys; from pathlib import Path; from resnext_deploy.tensorrt.distribution import wheel_for_device\n"
              "from resnext_deploy.errors import DeployError\n"
              "from resnext_deploy.data import resources\nfrom resnext_deploy.models.demo import digits as demo\n"
              "try:\n    w = wheel_for_device(Path(sys.argv[1]))\n"
              "    print(json.dumps({'wheel': str(w), 'checkout': resources.in_checkout(), 'demo': str(demo.DEMO_DIR)}))\n"
              "except DeployError as e:\n    print(json.dumps({'error': str(e), 'code': e.exit_code}))\n")
    run = lambda out: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120, check=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout.strip().splitlines()[-1])
    got = run(tmp_path / "out")
    # installed from the wheel: not a checkout, and the demo's data are looked for in the user's cache
    assert got["checkout"] is False and got["demo"] == str(tmp_path / ".cache" / "resnext-deploy" / "data" / "digits")
    repacked = zipfile.ZipFile(got["wheel"])
    original = zipfile.ZipFile(wheel)
    pkg = [n for n in original.namelist() if n.startswith("resnext_deploy/")]
    assert sorted(n for n in repacked.namelist() if n.startswith("resnext_deploy/")) == sorted(pkg)
    assert all(repacked.read(n) == original.read(n) for n in pkg)
    (target / "resnext_deploy" / "evaluation" / "gate.py").write_text("# edited after installation\n")
    got = run(tmp_path / "out2")
    assert got["code"] == 2 and "resnext_deploy/evaluation/gate.py" in got["error"] and "RECORD" in got["error"]


def test_demo_data_location(monkeypatch, tmp_path):
    assert resources.in_checkout() and resources.data_dir() == ROOT / "calibration"  # the README's commands
    monkeypatch.setenv(resources.DATA_ENV, str(tmp_path))
    assert resources.data_dir() == tmp_path
    assert json.loads((ROOT / "calibration" / "digits" / "demo.json").read_text())["arch"] == "resnext_demo"
