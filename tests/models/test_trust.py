"""models/trust.py: nothing from a model file runs unless the user opted in; safetensors is an input format.

The payloads are real: their ``__reduce__`` makes full unpickling call ``os.system`` (or ``logging.critical``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resnext_deploy.errors import EXIT_BAD_INPUT, BadInputError  # noqa: E402
from resnext_deploy.models import trust  # noqa: E402
from resnext_deploy.models.loading import load_torch_model  # noqa: E402
from resnext_deploy.models.resnext import create  # noqa: E402

ARCH = "resnext_demo"
SYSTEM = f"{os.system.__module__}.system"  # 'posix.system' on Linux: the global a payload asks for


class Touch:
    """Unpickled with full unpickling, this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class Shout:
    """Unpickled with full unpickling, this logs a CRITICAL record: shows when the payload ran."""

    def __reduce__(self):
        return (logging.critical, ("PAYLOAD RAN",))


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return create(ARCH).eval()


def _payload_file(tmp_path: Path, form: str, payload, demo) -> Path:
    path = tmp_path / "model.pth"
    obj = payload if form == "top-level" else {"state_dict": demo.state_dict(), "arch": ARCH, "x": payload}
    torch.save(obj, path)
    return path


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Every torch.load call's weights_only, to show full unpickling was (not) attempted."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("form", ["top-level", "nested"])
def test_payload_is_refused_and_never_runs(tmp_path, demo, form, torch_load_calls):
    marker = tmp_path / "PWNED"
    path = _payload_file(tmp_path, form, Touch(marker), demo)
    with pytest.raises(BadInputError) as info:
        load_torch_model(path, ARCH)
    msg = str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT and info.value.__cause__ is None
    assert str(path) in msg and f"'{SYSTEM}'" in msg and "--trust-pickle" in msg and "allow_pickle=True" in msg
    assert not marker.exists()
    assert torch_load_calls == [True]  # only the safe loader ever saw the file


@pytest.mark.parametrize("form", ["top-level", "nested"])
def test_payload_runs_with_the_opt_in(tmp_path, demo, form):
    marker = tmp_path / "PWNED"
    path = _payload_file(tmp_path, form, Touch(marker), demo)
    if form == "nested":  # the payload ran, and the weights beside it load
        loaded = load_torch_model(path, ARCH, allow_pickle=True)
        assert loaded.arch == ARCH
    else:  # the payload ran; what it returned (os.system's exit status) is not a model
        with pytest.raises(BadInputError, match="holds a int, not a model"):
            load_torch_model(path, ARCH, allow_pickle=True)
    assert marker.exists()


def test_the_warning_comes_before_the_payload_runs(tmp_path, demo, caplog):
    path = _payload_file(tmp_path, "nested", Shout(), demo)
    with caplog.at_level(logging.WARNING):
        load_torch_model(path, ARCH, allow_pickle=True)
    messages = [r.getMessage() for r in caplog.records]
    ours = next(i for i, m in enumerate(messages) if "--trust-pickle" in m and "logging.critical" in m)
    assert messages.index("PAYLOAD RAN") > ours


def test_random_bytes_are_refused_without_unpickling(tmp_path, torch_load_calls):
    path = tmp_path / "model.pth"
    path.write_bytes(np.random.RandomState(0).bytes(200_000))
    with pytest.raises(BadInputError) as info:
        load_torch_model(path, ARCH)
    msg = str(info.value)
    assert str(path) in msg and "safe loader" in msg and "not a PyTorch checkpoint" in msg
    assert torch_load_calls == [True]


def test_a_pickled_module_names_its_class(tmp_path, demo):
    path = tmp_path / "whole.pt"
    torch.save(demo, path)
    with pytest.raises(BadInputError) as info:
        load_torch_model(path)
    msg = str(info.value)
    assert "resnext_deploy.models.resnext.ResNeXt" in msg and "--trust-pickle" in msg and "state_dict" in msg
    assert load_torch_model(path, allow_pickle=True).source == "module"


def test_a_training_scripts_args_namespace_loads_without_the_opt_in(tmp_path, demo, torch_load_calls):
    """torchvision's reference train.py saves {"model", "optimizer", "epoch", "args": argparse.Namespace}."""
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(model="resnext_demo", lr=0.1, epochs=90)
    torch.save({"model": demo.state_dict(), "epoch": 89, "args": args, "arch": ARCH}, path)
    loaded = load_torch_model(path)
    assert loaded.arch == ARCH and loaded.metadata["epoch"] == 89
    assert torch_load_calls == [True]
    with pytest.raises(Exception):  # registered for our call only, never process-wide
        torch.load(path, weights_only=True)


def test_numpy_scalars_need_the_opt_in(tmp_path, demo):
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": demo.state_dict(), "arch": ARCH, "best_acc": np.float64(0.93)}, path)
    with pytest.raises(BadInputError, match="numpy"):
        load_torch_model(path)
    assert load_torch_model(path, allow_pickle=True).metadata["best_acc"] == pytest.approx(0.93)


def test_refuse_code_execution_is_one_switch(tmp_path, caplog):
    path = tmp_path / "model.keras"
    with pytest.raises(BadInputError) as info:
        trust.refuse_code_execution(path, "has a Lambda layer", allow_pickle=False)
    msg = str(info.value)
    assert msg.startswith(f"Model file '{path}' has a Lambda layer.") and "--trust-pickle" in msg
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.models.trust"):
        assert trust.refuse_code_execution(path, "has a Lambda layer", allow_pickle=True) is None
    assert any("Lambda layer" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_round_trip_with_and_without_metadata(tmp_path, demo):
    from safetensors.torch import save_file

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sd = {k: v.contiguous() for k, v in demo.state_dict().items()}
    bare = tmp_path / "bare.safetensors"
    save_file(sd, str(bare))
    with pytest.raises(BadInputError, match="--arch"):
        load_torch_model(bare)
    loaded = load_torch_model(bare, ARCH)
    assert loaded.source == "safetensors" and loaded.num_classes == 10
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), demo(x), rtol=0, atol=0)

    labels = [f"digit {i}" for i in range(10)]
    named = tmp_path / "weights.bin"  # another name: recognised by its header
    save_file(sd, str(named), metadata={"arch": ARCH, "labels": '["' + '", "'.join(labels) + '"]', "epoch": "12"})
    loaded = load_torch_model(named)
    assert loaded.arch == ARCH and loaded.labels == labels and loaded.metadata["epoch"] == "12"


def test_damaged_safetensors_is_a_clear_error(tmp_path, demo):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in demo.state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as info:
        load_torch_model(path, ARCH)
    assert "safetensors" in str(info.value) and str(path) in str(info.value) and info.value.__cause__ is None


def test_model_format(tmp_path, demo):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in demo.state_dict().items()}
    torch.save(sd, tmp_path / "a.pt")
    save_file(sd, str(tmp_path / "b.pt"))
    torch.jit.save(torch.jit.trace(demo, torch.zeros(1, 3, 32, 32)), str(tmp_path / "c.pt"))
    (tmp_path / "d.onnx").write_bytes(b"x")
    (tmp_path / "e.keras").write_bytes(b"x")
    got = {p.name: trust.model_format(p) for p in sorted(tmp_path.iterdir())}
    assert got == {"a.pt": "torch", "b.pt": "safetensors", "c.pt": "torchscript", "d.onnx": "onnx", "e.keras": "keras"}


def test_refuse_early_scans_without_unpickling(tmp_path, demo, torch_load_calls):
    """For a loader that runs later (a bench worker): the static scan refuses now, reading no tensor."""
    marker = tmp_path / "PWNED"
    path = _payload_file(tmp_path, "nested", Touch(marker), demo)
    with pytest.raises(BadInputError, match=f"'{SYSTEM}'.*--trust-pickle"):
        trust.refuse_early(path, allow_pickle=False)
    trust.refuse_early(path, allow_pickle=True)  # the opt-in: the loader decides (and warns) when it loads
    torch.save(demo.state_dict(), tmp_path / "weights.pt")
    trust.refuse_early(tmp_path / "weights.pt", allow_pickle=False)
    assert torch_load_calls == [] and not marker.exists()
