"""The seeds' bug (a residual add whose identity shortcut meets a wider main path) and a wrong-groups conv, caught
the same way for every form a model arrives in: state_dict + --arch, checkpoint dict, `module.` prefix, safetensors,
pickled module (with --trust-pickle), TorchScript (scripted and traced). Exit 2, block and shapes named, no traceback, no Torch IR."""

from __future__ import annotations

import warnings

import pytest
import torch
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB
from resnext_deploy.models.resnext import ArchSpec, ResNeXt, create
from resnext_deploy.pipeline.check import check_model

nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated in recent torch


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args])


def assert_refused(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    out = res.output
    assert out.startswith("error: ") and "Traceback" not in out
    for ir in ("Torch IR", "graph(", "prim::", "onnx::", "%"):  # no TorchScript / exporter IR on the console
        assert ir not in out, (ir, out)
    for f in fragments:
        assert f in out, (f, out)


def widen_block(model: nn.Module, stage: int, index: int) -> nn.Module:
    """The seeds' bug: conv3/bn3 of one block made twice as wide; its shortcut is left as it was."""
    blk = getattr(model, f"layer{stage}")[index]
    width = blk.conv3.out_channels * 2
    blk.conv3 = nn.Conv2d(blk.conv3.in_channels, width, 1, bias=False)
    blk.bn3 = nn.BatchNorm2d(width)
    return model


def save(model: nn.Module, form: str, path, arch: str):
    """Save ``model`` the way a user would; returns the extra CLI options the form needs."""
    sd = model.state_dict()
    if form == "state_dict":
        torch.save(sd, path)
        return ["--arch", arch]
    if form == "checkpoint":
        torch.save({"state_dict": sd, "arch": arch, "epoch": 3}, path)
        return []
    if form == "module_prefix":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
        return ["--arch", arch]
    if form == "safetensors":  # the file keeps the .pt name: the format is recognised by its header
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return ["--arch", arch]
    if form == "pickled":
        torch.save(model, path)
        return ["--trust-pickle"]  # a whole pickled module runs code when it loads: the user opts in
    if form == "script":
        torch.jit.script(model).save(str(path))
        return []
    if form == "trace":
        size = model.spec.input_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, torch.zeros(1, 3, size, size)).save(str(path))
        return []
    raise AssertionError(form)


# A model whose forward cannot run cannot be traced either (torch.jit.trace runs it): traced models are checked
# in test_silent_broadcast_in_a_traced_model and test_check.py.
FORMS = ["state_dict", "checkpoint", "module_prefix", "safetensors", "pickled", "script"]
WEIGHT_FORMS = {"state_dict", "checkpoint", "module_prefix", "safetensors"}


@pytest.mark.parametrize("form", FORMS)
def test_bad_block_caught_in_every_format(form, tmp_path):
    torch.manual_seed(0)
    model = widen_block(create("resnext_demo", 10).eval(), 2, 0)  # layer2.0: main path 256, projection 128
    path = tmp_path / "bad.pt"
    extra = save(model, form, path, "resnext_demo")
    for cmd in (["check"], ["export", "--calib", str(DEMO_CALIB), "--out", str(tmp_path / "m.onnx")]):
        res = run(*cmd, "--model", str(path), *extra)
        assert_refused(res, "Residual add in block 'layer2.0' (Bottleneck)", "(1, 256, 16, 16)", "(1, 128, 16, 16)",
                       "projection shortcut")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("form", FORMS)
def test_wrong_groups_conv_caught_in_every_format(form, tmp_path):
    torch.manual_seed(0)
    model = create("resnext_demo", 10).eval()
    conv = model.layer2[0].conv2  # 64 -> 64 channels in 8 groups
    if form in WEIGHT_FORMS:
        # What weights can say about groups: 60 filters cannot be split into 8 groups.
        model.layer2[0].conv2 = nn.Conv2d(64, 60, 3, padding=1, groups=4, bias=False)
        model.layer2[0].conv2.weight = nn.Parameter(torch.randn(60, 8, 3, 3))
        model.layer2[0].conv2.groups = 8
        model.layer2[0].bn2 = nn.BatchNorm2d(60)
        expect = ["'layer2.0.conv2'", "groups=8", "(60, 8, 3, 3)"]
    else:
        conv.groups = 6  # edited after construction: 64 channels do not divide by 6
        expect = ["'layer2.0.conv2'", "groups=6", "in_channels=64", "(64, 8, 3, 3)"]
    path = tmp_path / "bad.pt"
    extra = save(model, form, path, "resnext_demo")
    assert_refused(run("check", "--model", str(path), *extra), *expect)


@pytest.mark.parametrize("stage,index", [(1, 1), (2, 1), (3, 1)])
@pytest.mark.parametrize("how", ["eager", "script"])
def test_bad_block_in_each_stage_named_with_its_shortcut(stage, index, how):
    torch.manual_seed(0)
    spec = ArchSpec([2, 2, 2], 4, 8, stem="small", stem_width=16, base_planes=8, default_num_classes=4, input_size=16)
    model = widen_block(ResNeXt(spec).eval(), stage, index)
    if how == "script":
        model = torch.jit.script(model)
    (finding,) = check_model(model, (1, 3, 16, 16)).findings
    channels = 32 * 2 ** (stage - 1)
    side = 16 // 2 ** (stage - 1)
    assert finding.kind == "residual_add" and finding.module == f"layer{stage}.{index}"
    assert finding.shapes == [(1, 2 * channels, side, side), (1, channels, side, side)]
    assert f"channels ({channels} -> {2 * channels})" in finding.message  # the identity shortcut is recognised


class BasicBlock(nn.Module):
    """A ResNet-18-style basic block (not ResNeXt), its own names: the identity shortcut is `x` itself."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.na = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.nb = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.nb(self.b(torch.relu(self.na(self.a(x)))))
        return torch.relu(y + x)


class TinyResNet(nn.Module):
    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 24 if broken else 16), BasicBlock(16, 16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class Broadcast(nn.Module):
    """A 1-channel map added to a 16-channel one: PyTorch broadcasts without a word, so it traces fine."""

    def __init__(self) -> None:
        super().__init__()
        self.wide, self.narrow = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.wide(x) + self.narrow(x)).mean((2, 3))


def test_silent_broadcast_in_a_traced_model(tmp_path):
    path = tmp_path / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Broadcast().eval(), torch.zeros(1, 3, 224, 224)).save(str(path))
    assert_refused(run("check", "--model", str(path)), "Residual add in the top-level module (Broadcast)",
                   "(1, 16, 224, 224)", "(1, 1, 224, 224)", "silently broadcast")


@pytest.mark.parametrize("form", ["pickled", "script", "trace"])
def test_bad_block_in_a_non_resnext_residual_net(form, tmp_path):
    torch.manual_seed(0)
    assert check_model(torch.jit.script(TinyResNet(False).eval()), (1, 3, 224, 224)).passed
    model = TinyResNet(True).eval()
    path = tmp_path / "net.pt"
    if form == "pickled":
        torch.save(model, path)
    elif form == "script":
        torch.jit.script(model).save(str(path))
    else:
        with pytest.raises(RuntimeError):  # tracing it fails too: the forward cannot run
            torch.jit.trace(model, torch.zeros(1, 3, 224, 224))
        return
    trust = ["--trust-pickle"] if form == "pickled" else []
    assert_refused(run("check", "--model", str(path), *trust), "block 'body.1' (BasicBlock)", "(1, 24, 224, 224)",
                   "(1, 16, 224, 224)", "channels (16 -> 24)")


def test_torchscript_resnext50_from_the_issue(tmp_path):
    """The issue's model: torchvision-layout resnext50_32x4d, 10 classes, layer2.1 widened, torch.jit.script."""
    torch.manual_seed(0)
    model = widen_block(create("resnext50_32x4d", 10).eval(), 2, 1)
    path = tmp_path / "bad.pt"
    torch.jit.script(model).save(str(path))
    for cmd in (["check"], ["export", "--calib", str(DEMO_CALIB), "--out", str(tmp_path / "m.onnx")]):
        res = run(*cmd, "--model", str(path))
        assert_refused(res, "Residual add in block 'layer2.1' (Bottleneck)", "(1, 1024, 28, 28)", "(1, 512, 28, 28)",
                       "channels (512 -> 1024)")
        assert len(res.output.splitlines()) <= 15


def test_build_refuses_the_broken_torchscript_before_exporting(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "bad.pt"
    torch.jit.script(widen_block(create("resnext_demo", 10).eval(), 3, 0)).save(str(path))
    from resnext_deploy.models.demo.digits import DEMO_VAL

    res = run("build", "--model", str(path), "--calib", str(DEMO_CALIB), "--val", str(DEMO_VAL), "--out", str(tmp_path / "b"))
    assert_refused(res, "Residual add in block 'layer3.0' (Bottleneck)", "(1, 512, 8, 8)", "(1, 256, 8, 8)")
    assert not (tmp_path / "b").exists()
