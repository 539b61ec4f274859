"""The Jetson hand-off rehearsed on JetPack's Pythons (3.8, 3.10, 3.12): rehearse.py on a demo `--target jetson` build.

Each Python gets a clean venv with numpy and onnxruntime only (pins in rehearse.PINS, from the package index),
installs resnext-deploy from the bundle's wheel alone, runs the bundle README's device lines, predicts, and the
device report goes home through `report --device`; a tampered copy is refused. A Python missing here is skipped
with the reason. One bundle (the generic `--target jetson`) and one venv per Python serve every module: each module
of the table on that Python's JetPack gets its device facts injected and its engine plan checked against the table's.
$REHEARSAL_JSON (set by .ci/run) collects the seconds per Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rehearse  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generic_build(tmp_path_factory, quick_timing):
    """The demo for `--target jetson` (any Jetson) with the shipped recipe, through the CLI (as the card writes it);
    only its workstation timing runs are fewer (--recipe extending "jetson"): the rehearsal checks no latency."""
    out = tmp_path_factory.mktemp("rehearsal") / "jetson"
    cli = shutil.which("resnext-deploy") or str(Path(sys.executable).parent / "resnext-deploy")
    proc = subprocess.run([cli, "-q", "build", "--target", "jetson", "--recipe", str(quick_timing("jetson")),
                           "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_the_build_prints_the_next_steps_of_the_bundle_readme(generic_build):
    out, console = generic_build
    lines = rehearse.device_lines(out)  # the README's block, equal to report.json's device_steps
    for line in lines:
        assert f"  {line}\n" in console + "\n", line
    assert f"tarball: {out / 'resnext_demo-jetson-bundle.tar.gz'}" in console
    assert f"cd {out}" in console
    wheel = next((out / "resnext_demo-jetson-bundle" / "wheels").glob("*.whl"))
    assert lines[3:7] == ["sha256sum -c SHA256SUMS", "python3 -m pip install -r dependencies.txt",
                          "python3 -m pip install --no-deps --require-hashes -r requirements.txt",
                          "resnext-deploy compile --bundle ."]
    assert f"./wheels/{wheel.name} --hash=sha256:" in (wheel.parents[1] / "requirements.txt").read_text()


@pytest.fixture(scope="module")
def rehearsals(generic_build, tmp_path_factory, request):
    """Every selected Python's rehearsal on the one bundle, run side by side (each in its own venv and folders; the
    work is subprocesses: venv, pip, the device lines): {version: result dict | skip reason (str) | the exception}."""
    out, _ = generic_build
    selected = {item.callspec.params["version"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_rehearsal_on_jetpacks_python" and hasattr(item, "callspec")}
    versions = [v for v in rehearse.PYTHONS if v in selected]
    cli = shutil.which("resnext-deploy") or str(Path(sys.executable).parent / "resnext-deploy")
    work = tmp_path_factory.mktemp("rehearse")

    def one(version):
        python = rehearse.find_python(version)
        if python is None:
            return (f"no Python {version} here (pyenv: ~/.pyenv/versions/{version}.*, or $REHEARSE_PYTHON_"
                    f"{version.replace('.', '_')})")
        try:
            return rehearse.rehearse_one(version, python, out, work, cli)  # folders named per version: no clash
        except rehearse.IndexUnavailable as exc:  # the device venv's numpy/onnxruntime come from the package index
            return str(exc)
        except Exception as exc:  # reported by that Python's test
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(versions))) as pool:
        return dict(zip(versions, pool.map(one, versions)))


@pytest.mark.parametrize("version", rehearse.PYTHONS)
def test_rehearsal_on_jetpacks_python(generic_build, rehearsals, version):
    res = rehearsals[version]
    if isinstance(res, Exception):
        raise res
    if isinstance(res, str):
        pytest.skip(res)
    out, _ = generic_build
    assert res["versions"]["python"].startswith(version + ".")
    assert res["versions"]["numpy"] == rehearse.PINS[version][0].split("==")[1]
    assert res["versions"]["onnxruntime"] == rehearse.PINS[version][1].split("==")[1]
    assert res["artifact"] == "onnx-int8-int8" and res["predict_images"] == 500
    # every module of the table on this Python's JetPack: the plan its injected facts give on the device
    from resnext_deploy.tensorrt.device_plan import bundle_specs, table_plans
    from resnext_deploy.tensorrt.bundle import read_bundle

    specs = bundle_specs(read_bundle(out / "resnext_demo-jetson-bundle").info["engines"])
    want = {f"{p.module.key}@{p.row.key}": [s.name for s in p.engines] for p in table_plans(specs)
            if p.row.python == version}
    assert want and {k: v["engines"] for k, v in res["engine_plans"].items()} == want
    assert res["compiled_as"] == next(iter(want))
    for key, plan in res["engine_plans"].items():
        print(f"Python {version} {key}: " + " | ".join(plan["lines"]))
    target = os.environ.get("REHEARSAL_JSON")
    if target:
        path = Path(target)
        done = json.loads(path.read_text()) if path.is_file() else {}
        done[version] = {"seconds": res["seconds"], "versions": res["versions"]}
        path.write_text(json.dumps(done))
