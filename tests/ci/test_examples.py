"""examples/ci: the GitHub Actions and GitLab CI pipelines, parsed and their script lines run against the demo.

Only what needs the network or the CI service is left out (installing, fetching main's artifact, `uses:` actions):
the baseline such a fetch would unpack is put where the pipeline looks for it; RECIPE points at a faster recipe
that extends the example's own. Everything else runs as written, with bash -e as both CI systems do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="parsing the example pipelines needs pyyaml (the test extra)")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ci"


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory):
    """PATH with a `resnext-deploy` that runs this checkout; RECIPE: the example's recipe, made fast."""
    d = tmp_path_factory.mktemp("ci-shell")
    (d / "bin").mkdir()
    exe = d / "bin" / "resnext-deploy"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m resnext_deploy "$@"\n')
    exe.chmod(0o755)
    fast = d / "fast.toml"
    fast.write_text(f'extends = "{EXAMPLES / "recipe.toml"}"\n[backends.onnxruntime]\nprecisions = ["int8"]\n'
                    '[backends.openvino]\nprecisions = ["int8"]\n[calibration]\ncount = 64\n'
                    '[evaluation]\nlimit = 100\nwarmup = 1\niterations = 5\n')
    env = dict(os.environ, PATH=f"{d / 'bin'}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(ROOT / "toolkit")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env, fast


def _run(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _check_outputs(cwd: Path, ci_out: str, junit_schema, with_baseline: bool) -> None:
    out = cwd / ci_out
    junit_schema.validate(str(out / "junit.xml"))
    for name in ("report.html", "report.md", "report.json", "summary.md"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] and report["target"] == "x86-cpu"
    assert ("baseline" in report) == with_baseline
    if with_baseline:
        assert report["baseline"]["passed"] and "**vs baseline**" in (out / "summary.md").read_text()
        # the example recipe's one change, layered over x86-cpu under the test's fast settings
        assert report["baseline"]["thresholds"]["max_top1_drop_vs_baseline"] == 0.5


def test_the_example_recipe_is_two_lines_over_a_target():
    lines = [ln for ln in (EXAMPLES / "recipe.toml").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 2 and lines[0] == 'extends = "x86-cpu"'


def test_github_actions_workflow_runs_against_the_demo(shell_env, ci_builds, tmp_path, junit_schema):
    env, fast = shell_env
    wf = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    assert set(wf[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    steps = wf["jobs"]["gate"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert {"actions/checkout", "actions/setup-python", "actions/upload-artifact"} <= set(uses)
    install = next(s for s in steps if s.get("name", "").startswith("Install"))
    assert "-c requirements/ci.lock" in install["run"]
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    kept = " ".join(str(s["with"]["path"]) for s in uploads)
    assert "report.json" in kept and "manifest.json" in kept and "CI_OUT" in kept
    step_env = dict(env, **{k: str(v) for k, v in wf["env"].items()})
    step_env["RECIPE"] = str(fast)
    summary = tmp_path / "step-summary.md"
    step_env["GITHUB_STEP_SUMMARY"] = str(summary)
    # what "Fetch the baseline" would download: main's build (report.json + manifest.json)
    base = tmp_path / step_env["BASELINE_DIR"]
    base.mkdir()
    for name in ("report.json", "manifest.json"):
        shutil.copy(ci_builds["good1"] / name, base / name)
    ran = []
    for step in steps:
        name = step.get("name", "")
        if "run" not in step or name.startswith(("Install", "Fetch")):
            continue
        res = _run(step["run"], tmp_path, step_env)
        assert res.returncode == 0, f"{name}: {res.stdout}\n{res.stderr}"
        ran.append(name)
    assert ran == ["Build", "Gate against the baseline"]
    _check_outputs(tmp_path, step_env["CI_OUT"], junit_schema, with_baseline=True)
    assert "vs baseline" in summary.read_text()  # GitHub's job page


def test_gitlab_pipeline_runs_against_the_demo_first_without_then_with_a_baseline(shell_env, ci_builds, tmp_path, junit_schema):
    env, fast = shell_env
    doc = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    job = doc["resnext-gate"]
    assert any("-c requirements/ci.lock" in line for line in job["before_script"])
    assert job["artifacts"]["reports"]["junit"] == "ci-out/junit.xml" and job["artifacts"]["when"] == "always"
    assert {"build/ci/report.json", "build/ci/manifest.json"} <= set(job["artifacts"]["paths"])
    job_env = dict(env, **{k: str(v) for k, v in doc["variables"].items()})
    job_env["RECIPE"] = str(fast)
    offline = [line for line in job["script"] if "curl" not in line]  # the download of main's artifacts
    assert len(offline) == len(job["script"]) - 1
    for with_baseline in (False, True):
        cwd = tmp_path / ("with" if with_baseline else "first")
        cwd.mkdir()
        if with_baseline:  # what the curl + unzip would unpack: main's artifacts, paths as stored
            base = cwd / job_env["BASELINE_DIR"] / job_env["BUILD_DIR"]
            base.mkdir(parents=True)
            for name in ("report.json", "manifest.json"):
                shutil.copy(ci_builds["good1"] / name, base / name)
        res = _run("\n".join(offline), cwd, job_env)
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
        _check_outputs(cwd, job_env["CI_OUT"], junit_schema, with_baseline)
    # a failing gate fails the job with exit 3: the pipeline does not swallow it
    bad = cwd / "bad.toml"
    # (min_cosine = 1.0: no INT8 logits equal float's exactly; a value out of range would be refused with exit 2)
    bad.write_text(f'extends = "{fast}"\n[gates]\nmin_cosine = 1.0\n')
    res = _run("\n".join(offline), cwd, dict(job_env, RECIPE=str(bad)))
    assert res.returncode == 3, f"{res.stdout}\n{res.stderr}"
    assert "min_cosine" in res.stdout and "gate FAILED" in res.stdout
