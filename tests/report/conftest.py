"""The hostile demo built with the accuracy fallback off: INT8 gets most images wrong, so every part of the
report has something to show (failed checks, the gallery, the sensitivity and per-class charts)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_VAL

#: small enough that the gallery's cap (not the number of disagreeing images) decides its length
GALLERY_CAP = 10
HOSTILE_NO_FALLBACK = f"""
target = "x86-cpu"
[backends.onnxruntime]
precisions = ["int8"]
[backends.openvino]
precisions = ["int8"]
[calibration]
count = 64
[evaluation]
limit = 200
warmup = 1
iterations = 10
gallery = {GALLERY_CAP}
[fallback]
enabled = false
sensitivity = true
subset = 50
"""


@pytest.fixture(scope="session")
def hostile_report(tmp_path_factory):
    """(CliRunner result, build directory, report.json) of the hostile demo, fallback off."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("hostile-report")
    ckpt = root / "hostile.pt"
    res = CliRunner().invoke(cli, ["demo", "hostile", "--out", str(ckpt)])
    assert res.exit_code == 0, res.output
    recipe = root / "hostile.toml"
    recipe.write_text(HOSTILE_NO_FALLBACK)
    out = root / "build"
    res = CliRunner().invoke(cli, ["build", "--model", str(ckpt), "--arch", "resnext_demo", "--calib", str(DEMO_CALIB),
                                   "--val", str(DEMO_VAL), "--recipe", str(recipe), "--out", str(out)])
    return res, out, json.loads((out / "report.json").read_text())
