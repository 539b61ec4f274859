"""load_torch_model: every form a user may bring round-trips; every bad file is a clear BadInputError."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from resnext_deploy.errors import EXIT_BAD_INPUT, BadInputError  # noqa: E402
from resnext_deploy.models.loading import LoadedModel, load_torch_model, strip_wrapper_prefixes  # noqa: E402
from resnext_deploy.models.resnext import ARCHS, create  # noqa: E402

ARCH = "resnext_demo"


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    model = create(ARCH)
    # Non-trivial BN statistics, so a load that forgets buffers shows in the outputs.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    return model


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _same_outputs(loaded: LoadedModel, reference, x) -> None:
    assert not loaded.module.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(x), rtol=0, atol=0)


def _sd(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "form, make, arch, source",
    [
        ("plain state_dict", lambda m: _sd(m), ARCH, "state_dict"),
        ("{'state_dict': sd}", lambda m: {"state_dict": _sd(m)}, ARCH, "checkpoint"),
        ("{'model': sd}", lambda m: {"model": _sd(m), "arch": ARCH}, None, "checkpoint"),
        ("{'model': module} (opt-in)", lambda m: {"model": m}, None, "checkpoint"),
        ("DDP module. prefix", lambda m: {"module." + k: v for k, v in _sd(m).items()}, ARCH, "state_dict"),
        (
            "torch.compile _orig_mod. prefix",
            lambda m: {"state_dict": {"_orig_mod." + k: v for k, v in _sd(m).items()}, "arch": ARCH},
            None,
            "checkpoint",
        ),
        ("pickled whole module (opt-in)", lambda m: m, None, "module"),
    ],
)
def test_accepted_forms_round_trip(tmp_path: Path, demo, x, form, make, arch, source) -> None:
    path = tmp_path / "model.pt"
    torch.save(make(demo), path)
    loaded = load_torch_model(path, arch, None, allow_pickle="opt-in" in form)
    assert loaded.source == source, form
    assert loaded.arch == ARCH
    assert loaded.num_classes == 10
    _same_outputs(loaded, demo, x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated in recent torch
def test_torchscript_round_trip(tmp_path: Path, demo, x) -> None:
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.trace(demo, x), str(path))
    loaded = load_torch_model(path, None, None)
    assert loaded.source == "torchscript" and loaded.is_torchscript
    assert loaded.num_classes == 10
    assert loaded.arch == ARCH  # recognised from the structure of its weights
    _same_outputs(loaded, demo, x)


def test_num_classes_inferred_from_fc(tmp_path: Path, x) -> None:
    model = create(ARCH, num_classes=7).eval()
    path = tmp_path / "seven.pt"
    torch.save(model.state_dict(), path)
    loaded = load_torch_model(path, ARCH, None)
    assert loaded.num_classes == 7
    assert loaded.module(x).shape == (1, 7)


def test_checkpoint_metadata_used_and_explicit_arch_wins(tmp_path: Path, demo, x, caplog) -> None:
    path = tmp_path / "ckpt.pth"
    labels = [f"class_{i}" for i in range(10)]
    torch.save(
        {
            "state_dict": _sd(demo),
            "arch": "resnext50_32x4d",  # wrong on purpose: the explicit --arch must win
            "num_classes": 10,
            "labels": labels,
            "preprocessing": {"resize": 36, "crop": 32},
            "epoch": 12,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}},
        },
        path,
    )
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.models.loading"):
        loaded = load_torch_model(path, ARCH, None)
    assert loaded.arch == ARCH
    assert any("resnext50_32x4d" in r.getMessage() and ARCH in r.getMessage() for r in caplog.records)
    assert loaded.labels == labels
    assert loaded.preprocessing == {"resize": 36, "crop": 32}
    assert loaded.metadata.get("epoch") == 12 and "optimizer" not in loaded.metadata
    _same_outputs(loaded, demo, x)


def test_strip_wrapper_prefixes_nested() -> None:
    t = torch.zeros(1)
    assert strip_wrapper_prefixes({"module._orig_mod.fc.weight": t, "module._orig_mod.fc.bias": t}) == {
        "fc.weight": t,
        "fc.bias": t,
    }


# ---------------------------------------------------------------------------------------------------
# errors


def _raises(path, arch=None, num_classes=None, **kw) -> str:
    with pytest.raises(BadInputError) as info:
        load_torch_model(path, arch, num_classes, **kw)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert info.value.__cause__ is None  # no torch traceback chained onto the user's error
    return str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "weights.pth"
    assert str(path) in _raises(path, ARCH)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    msg = _raises(path, ARCH)
    assert str(path) in msg and "empty" in msg


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_checkpoint(tmp_path: Path, demo, zip_format: bool) -> None:
    full = tmp_path / "full.pt"
    torch.save({"state_dict": demo.state_dict(), "arch": ARCH}, full, _use_new_zipfile_serialization=zip_format)
    data = full.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    msg = _raises(path, ARCH)
    assert str(path) in msg
    assert "truncated" in msg and ("re-save" in msg.lower() or "download" in msg)
    assert "Traceback" not in msg


def test_not_a_pytorch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n" * 20)
    msg = _raises(path, ARCH)
    assert str(path) in msg and "not a PyTorch file" in msg


def test_state_dict_without_arch_lists_known_archs(tmp_path: Path, demo) -> None:
    path = tmp_path / "sd.pt"
    torch.save(demo.state_dict(), path)
    msg = _raises(path, None)
    assert "--arch" in msg
    for name in ARCHS:
        assert name in msg


def test_unknown_arch(tmp_path: Path, demo) -> None:
    path = tmp_path / "sd.pt"
    torch.save(demo.state_dict(), path)
    msg = _raises(path, "resnext999_1x1d")
    assert "resnext999_1x1d" in msg and ARCH in msg


def test_unknown_arch_recorded_in_checkpoint(tmp_path: Path, demo) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": demo.state_dict(), "arch": "my_custom_net"}, path)
    msg = _raises(path, None)
    assert "my_custom_net" in msg and ARCH in msg


def test_wrong_num_classes_shows_shapes(tmp_path: Path, demo) -> None:
    path = tmp_path / "sd.pt"
    torch.save(demo.state_dict(), path)
    msg = _raises(path, ARCH, 1000)
    assert "fc.weight: checkpoint (10, 256) vs model (1000, 256)" in msg
    assert "--num-classes" in msg


def test_missing_and_unexpected_keys_listed(tmp_path: Path, demo) -> None:
    sd = _sd(demo)
    del sd["layer2.0.conv2.weight"]
    sd["head.extra.weight"] = torch.zeros(3)
    sd["layer1.0.conv1.weight"] = torch.zeros(5, 5, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    msg = _raises(path, ARCH)
    assert "layer2.0.conv2.weight" in msg
    assert "head.extra.weight" in msg
    assert "layer1.0.conv1.weight: checkpoint (5, 5, 1, 1) vs model (32, 32, 1, 1)" in msg
    assert "--arch" in msg


def test_many_missing_keys_are_capped(tmp_path: Path, demo) -> None:
    sd = {k: v for k, v in _sd(demo).items() if not k.startswith("layer3.")}
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    msg = _raises(path, ARCH)
    assert "more)" in msg
    assert msg.count("layer3.") == 5  # the first five missing keys, then a count


def test_dict_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "arch": ARCH}, path)
    msg = _raises(path, None)
    assert "'epoch'" in msg and "state_dict" in msg


def test_pickled_module_refused_by_default(tmp_path: Path, demo) -> None:
    path = tmp_path / "whole.pt"
    torch.save(demo, path)
    msg = _raises(path, None)
    assert str(path) in msg and "state_dict" in msg and "--trust-pickle" in msg


def test_num_classes_disagreeing_with_whole_module(tmp_path: Path, demo) -> None:
    path = tmp_path / "whole.pt"
    torch.save(demo, path)
    msg = _raises(path, None, 5, allow_pickle=True)
    assert "5" in msg and "10" in msg
