"""Every command that loads a model refuses a file that would run code unless --trust-pickle (issue 19, finding 1),
a safetensors demo checks and builds, and NaN/Inf weights are named before export (finding 8)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_CHECKPOINT, DEMO_VAL
from resnext_deploy.errors import EXIT_BAD_INPUT, EXIT_OK, BadInputError
from resnext_deploy.buildfolder.manifest import read_manifest
from resnext_deploy.models.trust import torch_load

SYSTEM = f"{os.system.__module__}.system"
DATA = ["--calib", str(DEMO_CALIB), "--val", str(DEMO_VAL)]


class Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args])


@pytest.fixture(scope="module")
def demo_ckpt():
    return torch_load(DEMO_CHECKPOINT)


def payload(tmp_path: Path, form: str, demo_ckpt) -> Path:
    path = tmp_path / "model.pth"
    marker = tmp_path / "PWNED"
    torch.save(Touch(marker) if form == "top-level" else {**demo_ckpt, "x": Touch(marker)}, path)
    return path


def command(cmd: str, path: Path, tmp_path: Path) -> list:
    out = tmp_path / ("m.onnx" if cmd == "export" else "out")
    extra = {"check": [], "export": ["--calib", str(DEMO_CALIB), "--out", str(out)], "build": DATA + ["--out", str(out)],
             "bench": ["--out", str(out), "--cache", str(tmp_path / "cache")]}[cmd]
    model = ["--arch", "resnext_demo", "--weights", str(path)] if cmd == "bench" else ["--model", str(path)]
    return [cmd, *model, *extra]


@pytest.mark.parametrize("form", ["top-level", "nested"])
@pytest.mark.parametrize("cmd", ["check", "export", "build", "bench"])
def test_a_payload_is_refused_by_every_command(cmd, form, tmp_path, demo_ckpt):
    path = payload(tmp_path, form, demo_ckpt)
    res = run(*command(cmd, path, tmp_path))
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    assert f"'{SYSTEM}'" in res.output and "--trust-pickle" in res.output and str(path) in res.output
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("cmd", ["check", "export", "build", "bench"])
def test_with_trust_pickle_the_payload_runs(cmd, tmp_path, demo_ckpt):
    """The user's choice: the file's code runs (then its result, os.system's status, is refused as not a model)."""
    path = payload(tmp_path, "top-level", demo_ckpt)
    res = run(*command(cmd, path, tmp_path), "--trust-pickle")
    assert (tmp_path / "PWNED").exists()
    assert res.exit_code == EXIT_BAD_INPUT and "holds a int, not a model" in res.output, res.output


def test_with_trust_pickle_the_weights_beside_the_payload_load(tmp_path, demo_ckpt):
    path = payload(tmp_path, "nested", demo_ckpt)
    res = run("check", "--model", str(path), "--trust-pickle")
    assert res.exit_code == EXIT_OK, res.output
    assert "Architecture check passed" in res.output and (tmp_path / "PWNED").exists()


def test_the_warning_is_on_stderr_before_the_payload_output(tmp_path, demo_ckpt):
    """In a real process: the opt-in warning is printed, then the payload runs (its echo follows the warning)."""

    class Echo:
        def __reduce__(self):
            return (os.system, ("echo PAYLOAD-RAN >&2",))

    path = tmp_path / "model.pth"
    torch.save({**demo_ckpt, "x": Echo()}, path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "toolkit")}
    proc = subprocess.run([sys.executable, "-m", "resnext_deploy", "-q", "check", "--model", str(path), "--trust-pickle"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == EXIT_OK, proc.stderr
    warning = proc.stderr.find("Loading it anyway because of --trust-pickle")
    assert 0 <= warning < proc.stderr.find("PAYLOAD-RAN"), proc.stderr


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(np.random.RandomState(1).bytes(200_000))
    for args in (["check", "--model", str(path), "--arch", "resnext_demo"],
                 ["build", "--model", str(path), "--arch", "resnext_demo", *DATA, "--out", str(tmp_path / "out")]):
        res = run(*args)
        assert res.exit_code == EXIT_BAD_INPUT and "safe loader" in res.output, res.output


# --------------------------------------------------------------------------------------------------
# safetensors


@pytest.fixture(scope="module")
def demo_safetensors(tmp_path_factory, demo_ckpt):
    """The demo as safetensors: its state_dict, and its labels and preprocessing as JSON metadata."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("st") / "resnext_demo.safetensors"
    meta = {"labels": json.dumps(demo_ckpt["labels"]), "preprocessing": json.dumps(demo_ckpt["preprocessing"])}
    save_file({k: v.contiguous() for k, v in demo_ckpt["state_dict"].items()}, str(path), metadata=meta)
    return path


def test_safetensors_demo_checks(demo_safetensors):
    res = run("check", "--model", str(demo_safetensors), "--arch", "resnext_demo", "--num-classes", "10")
    assert res.exit_code == EXIT_OK and "Architecture check passed" in res.output, res.output
    res = run("check", "--model", str(demo_safetensors))  # a state_dict: the architecture is not in the file
    assert res.exit_code == EXIT_BAD_INPUT and "--arch" in res.output


def test_safetensors_demo_builds(demo_safetensors, fast_recipe, tmp_path):
    out = tmp_path / "b"
    res = run("build", "--model", str(demo_safetensors), "--arch", "resnext_demo", "--recipe", str(fast_recipe),
              *DATA, "--out", str(out))
    assert res.exit_code == EXIT_OK and "gate PASSED" in res.output, res.output
    model = read_manifest(out)["model"]
    assert model["loaded_as"] == "safetensors" and model["labels"] == [str(i) for i in range(10)]
    rows = {r["artifact"]: r for r in json.loads((out / "report.json").read_text())["results"]}
    assert rows["onnx-fp32"]["top1"] >= 0.97  # the demo's weights, not a fresh init


# --------------------------------------------------------------------------------------------------
# NaN / Inf


def _broken(tmp_path: Path, demo_ckpt, key: str, value: float) -> Path:
    sd = {k: v.clone() for k, v in demo_ckpt["state_dict"].items()}
    sd[key].view(-1)[3] = value
    path = tmp_path / "broken.pt"
    torch.save({**demo_ckpt, "state_dict": sd}, path)
    return path


def test_nan_weight_is_named_by_check_export_and_build(tmp_path, demo_ckpt):
    path = _broken(tmp_path, demo_ckpt, "layer2.0.conv2.weight", float("nan"))
    for cmd in ("check", "export", "build"):
        res = run(*command(cmd, path, tmp_path))
        assert res.exit_code == EXIT_BAD_INPUT, (cmd, res.output)
        assert "parameter 'layer2.0.conv2.weight' holds NaN (1 of" in res.output, (cmd, res.output)
        assert "export.tolerance" not in res.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "out").exists()


def test_inf_in_a_buffer_is_named(tmp_path, demo_ckpt):
    path = _broken(tmp_path, demo_ckpt, "layer1.0.bn1.running_var", float("inf"))
    res = run("check", "--model", str(path), "--json")
    assert res.exit_code == EXIT_BAD_INPUT and "buffer 'layer1.0.bn1.running_var' holds Inf" in res.output, res.output


def test_export_alone_names_the_nan_weight(tmp_path, demo_ckpt):
    """onnx_from_torch without the check first (the Python API): no 'raise export.tolerance' for a NaN."""
    from resnext_deploy.models.loading import load_torch_model
    from resnext_deploy.pipeline.export import onnx_from_torch

    module = load_torch_model(_broken(tmp_path, demo_ckpt, "fc.weight", float("nan"))).module
    sample = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    with pytest.raises(BadInputError) as info:
        onnx_from_torch(module, tmp_path / "m.onnx", sample, log_path=tmp_path / "export.log")
    msg = str(info.value)
    assert "parameter 'fc.weight' holds NaN or Inf" in msg and "export.tolerance" not in msg


# --------------------------------------------------------------------------------------------------
# the flag travels to the processes that load the model


@pytest.mark.parametrize("allow", [False, True])
def test_the_bench_worker_gets_the_opt_in(tmp_path, demo_ckpt, allow):
    """`bench` loads the PyTorch model in a worker process: the refusal is a bad input there too (exit 2, not
    'internal error'), and --trust-pickle reaches it (BenchConfig.allow_pickle -> the worker's spec)."""
    from resnext_deploy.bench.pool import Worker
    from resnext_deploy.bench.run import BenchConfig

    path = payload(tmp_path, "nested", demo_ckpt)
    np.save(tmp_path / "inputs.npy", np.zeros((2, 3, 32, 32), np.float32))
    cfg = BenchConfig("pytorch-fp32", "peer", "pytorch", "fp32", str(path), "the model as trained", {"threads": 1},
                      "resnext_demo", 10, allow_pickle=allow)
    worker = Worker(cfg.name, tmp_path / "worker.log")
    try:
        if allow:
            assert worker.call("load", spec=cfg.spec(tmp_path / "inputs.npy", 2))["ok"]
        else:
            with pytest.raises(BadInputError, match=f"'{SYSTEM}'.*--trust-pickle"):
                worker.call("load", spec=cfg.spec(tmp_path / "inputs.npy", 2))
    finally:
        worker.kill()
    assert (tmp_path / "PWNED").exists() == allow
