"""Failures inside torch.onnx.export or the ONNX checker read like errors: a few lines naming what failed, the
module and what to try; the exporter's full output in a log file; exit 2 for the model, 4 only for our bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB
from resnext_deploy.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, DeployError
from resnext_deploy.models.resnext import create
from resnext_deploy.pipeline import export

nn = torch.nn


class Spectral(nn.Module):
    """Passes the architecture check (no residual adds) but uses an operator ONNX opset 17 lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.head = SpectralHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


class SpectralHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).real.mean((2, 3))


def _no_ir(text: str) -> None:
    for ir in ("Torch IR", "graph(", "prim::Constant", "%"):
        assert ir not in text, (ir, text)


def test_unsupported_operator_is_a_short_error_with_the_module_and_a_log(tmp_path):
    path = tmp_path / "spectral.pt"
    torch.save(Spectral().eval(), path)
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["-q", "export", "--model", str(path), "--trust-pickle", "--calib", str(DEMO_CALIB),
                                   "--out", str(out)])
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "Traceback" not in res.output and len(res.output.splitlines()) <= 15
    _no_ir(res.output)
    assert "torch.onnx.export could not convert the model (UnsupportedOperatorError)" in res.output
    assert "'aten::fft_fft2'" in res.output and "module 'head' (SpectralHead)" in res.output
    assert "what to try:" in res.output
    log = tmp_path / "m.onnx.export.log"
    assert f"The exporter's full output: {log}" in res.output
    text = log.read_text()
    assert "Torch IR graph at exception" in text and "aten::fft_fft2" in text  # what the console no longer shows
    assert not out.exists()


def test_broken_torchscript_that_skips_the_check_names_the_block(tmp_path):
    """onnx_from_torch alone (no check first): the exporter's 'Cannot determine scalar type' becomes the block."""
    model = create("resnext_demo", 10).eval()
    blk = model.layer2[0]
    blk.conv3, blk.bn3 = nn.Conv2d(blk.conv3.in_channels, 256, 1, bias=False), nn.BatchNorm2d(256)
    sample = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    with pytest.raises(DeployError) as info:
        export.onnx_from_torch(torch.jit.script(model), tmp_path / "m.onnx", sample, log_path=tmp_path / "export.log")
    msg = str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT and len(msg.splitlines()) <= 15
    _no_ir(msg)
    assert "module 'layer2.0' (Bottleneck), at an onnx::Add node" in msg
    assert "resnext-deploy check" in msg and str(tmp_path / "export.log") in msg
    assert "Torch IR graph at exception" in (tmp_path / "export.log").read_text()


def test_a_failure_in_our_own_code_is_internal(tmp_path, monkeypatch):
    def broken(*args):  # our bug, not the model's: a function of ours called wrongly
        export._scope_to_module(None)

    monkeypatch.setattr(export, "_torch_export", broken)
    sample = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(DeployError) as info:
        export.onnx_from_torch(create("resnext_demo", 10), tmp_path / "m.onnx", sample, log_path=tmp_path / "x.log")
    assert info.value.exit_code == EXIT_INTERNAL
    assert "bug" in str(info.value) and "AttributeError" in str(info.value)


def test_a_clean_export_leaves_no_log(tmp_path):
    sample = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    export.onnx_from_torch(create("resnext_demo", 10), tmp_path / "m.onnx", sample, log_path=tmp_path / "x.log")
    assert (tmp_path / "m.onnx").is_file() and not (tmp_path / "x.log").exists()
