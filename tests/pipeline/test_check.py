"""check_model / check_or_raise: the architecture lint run before export."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from resnext_deploy.pipeline.check import CheckReport, check_model, check_or_raise  # noqa: E402
from resnext_deploy.errors import EXIT_BAD_INPUT, ModelCheckError  # noqa: E402
from resnext_deploy.models.resnext import create  # noqa: E402

SHAPE = (1, 3, 32, 32)


def _demo():
    torch.manual_seed(0)
    return create("resnext_demo")


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------------
# user-defined modules (not our classes)


class BroadcastAdd(nn.Module):
    """Adds a 1-channel map to a 64-channel one: PyTorch silently broadcasts."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 64, 3, padding=1)
        self.narrow = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return torch.add(self.wide(x), self.narrow(x))


class MyBlock(nn.Module):
    """A user's own ResNeXt-style block whose identity shortcut ignores the stride/width change."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 4) -> None:
        super().__init__()
        mid = cout // 2
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.grouped = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        )
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.expand(self.grouped(self.reduce(x)))
        out += x  # identity shortcut: wrong when stride != 1 or cin != cout
        return out.relu()


class MyNet(nn.Module):
    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stage = nn.Sequential(MyBlock(16, 16, 1), MyBlock(16, 32 if broken else 16, 2 if broken else 1))
        self.head = nn.Linear(32 if broken else 16, 4)

    def forward(self, x):
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


class BiasAdd(nn.Module):
    """x + a learned (1, C, 1, 1) bias and x + a scalar: broadcasts that are not residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bias = nn.Parameter(torch.zeros(1, 8, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.bias + 3.0


# ---------------------------------------------------------------------------------------------------


def test_clean_demo_passes_and_counts() -> None:
    model = _demo().train()
    report = check_model(model, SHAPE)
    assert isinstance(report, CheckReport)
    assert report.passed, [f.message for f in report.findings]
    assert report.residual_adds == 3  # one per Bottleneck
    assert report.blocks_checked == 3 and report.blocks == ["layer1.0", "layer2.0", "layer3.0"]
    assert report.grouped_convs == 3
    assert report.dynamic_check
    # The model is left as it was.
    assert model.training and all(m.training for m in model.modules())
    assert _hooks_left(model) == 0
    assert check_or_raise(model, SHAPE).passed


def test_default_input_shape_comes_from_spec() -> None:
    report = check_model(_demo().eval())
    assert tuple(report.input_shape) == SHAPE and report.passed


def test_missing_projection_shortcut_is_named() -> None:
    model = _demo().eval()
    model.layer2[0].downsample = None
    with pytest.raises(ModelCheckError) as info:
        check_or_raise(model, SHAPE)
    msg = str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert "'layer2.0'" in msg and "Bottleneck" in msg
    assert "(1, 128, 16, 16)" in msg and "(1, 64, 32, 32)" in msg
    assert "downsample" in msg and "projection shortcut" in msg
    assert not model.training and _hooks_left(model) == 0


def test_broadcasting_add_is_caught() -> None:
    model = BroadcastAdd()
    model(torch.zeros(SHAPE))  # plain PyTorch runs it without complaint
    report = check_model(model, SHAPE)
    assert not report.passed
    (finding,) = report.findings
    assert finding.kind == "residual_add"
    assert "(1, 64, 32, 32)" in finding.message and "(1, 1, 32, 32)" in finding.message
    assert "broadcast" in finding.message
    assert "BroadcastAdd" in finding.message


def test_bias_and_scalar_adds_are_not_residual_adds() -> None:
    report = check_model(BiasAdd(), SHAPE)
    assert report.passed and report.residual_adds == 0


def test_altered_groups_is_caught_with_conv_name() -> None:
    model = _demo()
    model.layer1[0].conv2.groups = 7  # 32 channels: not divisible by 7
    with pytest.raises(ModelCheckError) as info:
        check_or_raise(model, SHAPE)
    msg = str(info.value)
    assert "'layer1.0.conv2'" in msg and "groups=7" in msg and "in_channels=32" in msg
    assert "Traceback" not in msg
    assert _hooks_left(model) == 0


def test_altered_weight_is_caught() -> None:
    model = _demo()
    conv = model.layer2[0].conv2
    conv.weight = nn.Parameter(torch.zeros(conv.out_channels, conv.weight.shape[1] * 2, 3, 3))
    report = check_model(model, SHAPE)
    assert not report.passed
    assert report.findings[0].module == "layer2.0.conv2"
    assert "weight.shape[1] * groups" in report.findings[0].message


def test_conv_input_channel_mismatch_names_conv() -> None:
    model = _demo()
    model.layer2[0].conv1 = nn.Conv2d(32, 32, 1, bias=False)  # receives 64 channels
    report = check_model(model, SHAPE)
    assert not report.passed
    (finding,) = report.findings
    assert finding.kind == "conv_input_channels" and finding.module == "layer2.0.conv1"
    assert "expects 32" in finding.message and "64 channels" in finding.message


def test_user_block_with_wrong_identity_shortcut() -> None:
    assert check_model(MyNet(broken=False), SHAPE).passed
    model = MyNet(broken=True)
    with pytest.raises(ModelCheckError) as info:
        check_or_raise(model, SHAPE)
    msg = str(info.value)
    assert "'stage.1'" in msg and "MyBlock" in msg
    assert "(1, 32, 16, 16)" in msg and "(1, 16, 32, 32)" in msg


def test_forward_failure_becomes_a_finding() -> None:
    report = check_model(_demo(), (1, 5, 32, 32))  # wrong number of input channels
    assert not report.passed
    assert report.findings[0].module == "conv1"
    assert "3 input channels" in report.findings[0].message


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated in recent torch
@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_gets_the_forward_pass_check(how) -> None:
    model = _demo().eval()
    ts = torch.jit.trace(model, torch.zeros(SHAPE)) if how == "trace" else torch.jit.script(model)
    report = check_model(ts, SHAPE)
    assert report.passed and report.complete and report.dynamic_check
    assert report.grouped_convs == 3 and report.residual_adds == 3
    assert report.blocks == ["layer1.0", "layer2.0", "layer3.0"]  # the same names as in eager mode


def test_scripted_submodule_in_an_eager_model_is_reported_as_not_covered() -> None:
    model = _demo().eval()
    model.layer2 = torch.jit.script(model.layer2)
    report = check_model(model, SHAPE)
    assert report.passed and not report.complete
    assert any("TorchScript submodule" in u for u in report.uncovered)
    assert "INCOMPLETE" in report.summary()
