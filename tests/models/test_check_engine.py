"""The check engine alone (synthetic events), and one wording per finding kind whatever the framework."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.errors import MissingDependencyError
from resnext_deploy.models.check import CheckEngine, ConvSpec, Site, StopForward
from resnext_deploy.models.check.findings import broadcast_shapes

SHAPE = (1, 3, 16, 16)
BLOCK = Site("layer1.0", "Bottleneck")


# ---------------------------------------------------------------------------------------------------
# the engine fed by hand


def test_equal_adds_are_counted_per_block_and_pass() -> None:
    engine = CheckEngine(SHAPE)
    engine.add(BLOCK, (1, 64, 8, 8), (1, 64, 8, 8))
    engine.add(BLOCK, (1, 64, 8, 8), (1, 64, 8, 8))
    engine.add(Site("layer2.0", "Bottleneck"), (1, 128, 4, 4), (1, 128, 4, 4))
    report = engine.finish()
    assert report.passed and report.residual_adds == 3
    assert report.blocks == ["layer1.0", "layer2.0"] and report.blocks_checked == 2


def test_residual_add_with_known_shortcut_is_worded_exactly() -> None:
    engine = CheckEngine(SHAPE)
    with pytest.raises(StopForward):
        engine.add(BLOCK, (1, 128, 4, 4), (1, 64, 8, 8), shortcut=1)
    (f,) = engine.finish().findings
    assert (f.kind, f.layer, f.module_type) == ("residual_add", "layer1.0", "Bottleneck")
    assert f.shapes == [(1, 128, 4, 4), (1, 64, 8, 8)]
    assert f.message == (
        "Residual add in block 'layer1.0' (Bottleneck) adds a main path of shape (1, 128, 4, 4) to a shortcut of "
        "shape (1, 64, 8, 8) (128 vs 64 channels): the identity shortcut is used while the main path changes channels "
        "(64 -> 128) and spatial size (8x8 -> 4x4); the add fails with a size-mismatch error. " + f.advice
    )
    assert "projection shortcut" in f.advice and "downsample" in f.advice


def test_residual_add_that_broadcasts_without_known_shortcut() -> None:
    engine = CheckEngine(SHAPE)
    with pytest.raises(StopForward):
        engine.add(Site("", "Net"), (1, 16, 8, 8), (1, 1, 8, 8))
    (f,) = engine.finish().findings
    assert f.shapes == [(1, 16, 8, 8), (1, 1, 8, 8)]
    assert f.message.startswith(
        "Residual add in the top-level module (Net) adds tensors of shapes (1, 16, 8, 8) and (1, 1, 8, 8) (16 vs 1 "
        "channels): a residual add needs both operands of identical shape, and the add silently broadcasts "
        "(1, 1, 8, 8) to (1, 16, 8, 8) without an error and the model computes wrong features."
    )


def test_channels_last_adds_name_the_channels_at_the_end() -> None:
    engine = CheckEngine((1, 8, 8, 3))
    with pytest.raises(StopForward):
        engine.add(Site("block1", "MyBlock"), (1, 8, 8, 1), (1, 8, 8, 32), shortcut=0, channel_axis=-1)
    assert "changes channels (1 -> 32);" in engine.finish().findings[0].message


def test_static_conv_groups_and_counts() -> None:
    engine = CheckEngine(SHAPE)
    assert engine.conv_layer("stem", "Conv2d", ConvSpec(3, 16, 1, (16, 3, 3, 3), 3, 16, 2))
    assert engine.conv_layer("g", "Conv2d", ConvSpec(64, 64, 8, (64, 8, 3, 3), 8, 64, 2))
    assert not engine.conv_layer("bad", "Conv2d", ConvSpec(64, 48, 3, (48, 64, 3, 3), 64, 48, 2))
    assert engine.conv_layer("traced", "Conv2d", ConvSpec(weight_shape=(8, 8, 1, 1)))  # groups unknown: not judged
    report = engine.finish()
    assert (report.convs_checked, report.grouped_convs, report.grouped_conv_names) == (4, 2, ["g", "bad"])
    assert any("1 conv(s) expose no groups value" in n for n in report.notes)
    (f,) = report.findings
    assert f.kind == "conv_groups" and f.shapes == [(48, 64, 3, 3)]
    assert f.message == (
        "Conv 'bad' (Conv2d, weight (48, 64, 3, 3)) is inconsistent: in_channels=64 is not divisible by groups=3 "
        "(64 channels cannot be split into 3 equal groups). The layer cannot run like this (or computes garbage). "
        + f.advice
    )


@pytest.mark.parametrize("spec,clause", [
    (ConvSpec(64, 64, 0), "groups=0 is not a positive integer"),
    (ConvSpec(64, 60, 8), "out_channels=60 is not divisible by groups=8"),
    (ConvSpec(64, 64, 8, (64, 16, 3, 3), 16, 64, 2), "weight.shape[1] * groups = 16 * 8 = 128 input channels"),
    (ConvSpec(64, 64, 8, (64, 8, 3), 8, 64, 2), "expected 4 dimensions"),
    (ConvSpec(64, 64, 8, (32, 8, 3, 3), 8, 32, 2), "has 32 output channels, not out_channels=64"),
])
def test_each_conv_inconsistency_has_its_clause(spec, clause) -> None:
    engine = CheckEngine(SHAPE)
    assert not engine.conv_layer("c", "Conv2d", spec)
    assert clause in engine.finish().findings[0].message


def test_conv_receiving_the_wrong_width_stops_the_forward() -> None:
    engine = CheckEngine(SHAPE)
    engine.conv("c", "Conv2d", ConvSpec(32, 32, 1, (32, 32, 1, 1), 32, 32, 2), (1, 32, 8, 8))  # fine
    with pytest.raises(StopForward):
        engine.conv("c", "Conv2d", ConvSpec(groups=4, weight_shape=(32, 8, 1, 1), weight_in=8, weight_out=32),
                    (1, 64, 8, 8))
    (f,) = engine.finish().findings
    assert f.kind == "conv_input_channels" and f.shapes == [(1, 64, 8, 8)]
    assert f.message == (
        "Conv 'c' (Conv2d, weight (32, 8, 1, 1)) expects 32 input channels (groups=4) but receives a tensor of shape "
        "(1, 64, 8, 8) with 64 channels: the layer feeding it produces a different width. Make the layer feeding it "
        "output 32 channels, or build this conv for 64 input channels."
    )


def test_nonfinite_weights_and_forward_errors() -> None:
    engine = CheckEngine(SHAPE)
    engine.weights(Site("fc", "Linear"), [("fc.weight", "parameter", 2, 40), ("fc.bias", "parameter", 1, 4)], "NaN")
    engine.forward_failed(Site("head", "Linear", noun="module"), ValueError("x"), "mat1 and\n mat2 shapes differ.")
    engine.forward_failed(Site("head", "Linear", noun="module"), ValueError("x"), "mat1 and\n mat2 shapes differ.")
    nan, err = engine.finish().findings  # the same message twice is recorded once
    assert nan.kind == "non_finite" and nan.layer == "fc"
    assert nan.message.startswith("The parameter 'fc.weight' holds NaN (2 of 40 values), so the model's outputs would "
                                  "be NaN or Inf. 1 more tensor(s) hold NaN/Inf too: 'fc.bias'.")
    assert err.kind == "forward_error" and err.message.startswith(
        "The forward pass on an input of shape (1, 3, 16, 16) failed in module 'head' (Linear) with ValueError: "
        "mat1 and mat2 shapes differ. Check that")


@pytest.mark.parametrize("a,b", [((1, 64, 8, 8), (1, 1, 8, 8)), ((8, 1), (3,)), ((1, 3, 4), (2, 3, 4)),
                                 ((1, 64, 8, 8), (1, 32, 8, 8)), ((5,), (1, 4, 5)), ((2, 3), (3, 2))])
def test_broadcast_rule_is_numpys(a, b) -> None:
    try:
        expected = tuple(np.broadcast_shapes(a, b))
    except ValueError:
        expected = None
    assert broadcast_shapes(a, b) == expected


def test_each_wording_lives_in_findings_only() -> None:
    root = Path(__import__("resnext_deploy").__file__).parent
    phrases = ["Residual add in ", "is inconsistent: ", "input channels (groups=", "so the model's outputs would be",
               "The forward pass on an input of shape", "projection shortcut ("]
    for path in root.rglob("*.py"):
        if path.parts[-3:] == ("models", "check", "findings.py"):
            continue
        text = path.read_text(encoding="utf-8")
        for phrase in phrases:
            assert phrase not in text, (phrase, str(path.relative_to(root)))


# ---------------------------------------------------------------------------------------------------
# the same broken block in every framework: the same text but for the layer and the tensor layout


def _same_text(finding, site_text: str) -> str:
    text = finding.message.replace(site_text, "<layer>")
    return re.sub(r"\(\d+(, \d+)*\)", "<shape>", text)


@pytest.fixture(scope="module")
def frameworks():
    torch = pytest.importorskip("torch")
    try:
        from resnext_deploy.optional import require_keras

        keras = require_keras("test the check engine")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    return torch, keras


def _torch_models(torch, broken: str):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 64, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x  # a 1-channel identity shortcut added to a 64-channel branch

    class ShortcutNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)

    class GroupsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grouped = nn.Conv2d(64, 48, 3, padding=1)

        def forward(self, x):
            return self.grouped(x)

    torch.manual_seed(0)
    net = (ShortcutNet() if broken == "shortcut" else GroupsNet()).eval()
    if broken == "groups":
        net.grouped.groups = 3  # 64 channels in 3 groups
    return {"torch eager": net, "TorchScript": torch.jit.script(net)}


def _keras_model(keras, broken: str):
    layers = keras.layers

    class Block(layers.Layer):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.conv = layers.Conv2D(64, 3, padding="same", name="conv")

        def call(self, x):
            return self.conv(x) + x

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="net")
            self.block = Block(name="block")
            self.conv = layers.Conv2D(48, 3, padding="same", groups=3, name="grouped")

        def call(self, x):
            return self.block(x) if broken == "shortcut" else self.conv(x)

    return Net()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("broken,kind", [("shortcut", "residual_add"), ("groups", "conv_groups")])
def test_one_broken_block_reads_the_same_in_every_framework(frameworks, broken, kind) -> None:
    from resnext_deploy.models.check import check_keras_model, check_torch_module

    torch, keras = frameworks
    channels = 1 if broken == "shortcut" else 64
    found = {name: check_torch_module(m, (1, channels, 16, 16)).findings
             for name, m in _torch_models(torch, broken).items()}
    found["Keras"] = check_keras_model(_keras_model(keras, broken), (1, 16, 16, channels)).findings
    texts = {}
    for name, findings in found.items():
        assert len(findings) == 1, (name, [f.message for f in findings])
        f = findings[0]
        assert f.kind == kind, (name, f.message)
        site = re.match(r"(Residual add in )?(.*?) (adds|is inconsistent)", f.message).group(2)
        assert f"'{f.layer}'" in site
        texts[name] = _same_text(f, site)
    assert len(set(texts.values())) == 1, texts
    if broken == "shortcut":
        assert "changes channels (1 -> 64); the add silently broadcasts <shape> to <shape>" in texts["Keras"]
        assert [f.shapes for f in found["torch eager"]] == [[(1, 64, 16, 16), (1, 1, 16, 16)]]
        assert [f.shapes for f in found["Keras"]] == [[(1, 16, 16, 64), (1, 16, 16, 1)]]
    else:
        assert "in_channels=64 is not divisible by groups=3" in texts["Keras"]


def test_keras_nan_weight_is_named_like_a_torch_one(frameworks) -> None:
    from resnext_deploy.models.check import check_keras_model

    _, keras = frameworks
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs))
    kernel, bias = model.get_layer("c").get_weights()
    kernel[0, 0, 0, :2] = [np.nan, np.inf]
    model.get_layer("c").set_weights([kernel, bias])
    (f,) = check_keras_model(model).findings
    assert f.kind == "non_finite" and f.layer == "c"
    assert f.message.startswith("The weight 'c/kernel' holds NaN and Inf (2 of 108 values), so the model's outputs")
