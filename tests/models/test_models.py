"""The in-house ResNeXt family matches torchvision's architecture (names, shapes, parameter counts)."""

from __future__ import annotations

import pytest
import torch

from resnext_deploy.models.resnext import ARCHS, create

# Parameter counts torchvision documents for its ImageNet weights (num_params in the weights' meta).
TORCHVISION_PARAMS = {"resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_count_and_key_names_match_torchvision(arch):
    with torch.device("meta"):  # no memory, no init cost: only the structure
        model = create(arch)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch]
    sd = model.state_dict()
    assert "layer1.0.downsample.0.weight" in sd and "layer1.0.downsample.1.running_var" in sd
    assert "layer2.0.conv2.weight" in sd and "fc.bias" in sd
    assert sd["fc.weight"].shape == (1000, 2048)
    n_blocks = sum(ARCHS[arch].layers)
    assert sum(1 for k in sd if k.endswith("conv2.weight")) == n_blocks


def test_block_width_and_grouped_conv():
    model = create("resnext50_32x4d")
    conv2 = model.layer1[0].conv2
    # width = int(planes * width_per_group / 64) * groups = int(64 * 4 / 64) * 32 = 128
    assert (conv2.in_channels, conv2.out_channels, conv2.groups) == (128, 128, 32)
    assert model.layer1[0].conv3.out_channels == 256  # expansion x4
    assert model.layer4[0].conv2.stride == (2, 2)  # stride on the 3x3, as torchvision (ResNet v1.5)
    big = create("resnext101_32x8d")
    assert big.layer1[0].conv2.out_channels == 256  # int(64 * 8 / 64) * 32


def test_state_dict_round_trip_and_scriptable():
    a, b = create("resnext_demo"), create("resnext_demo")
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    assert torch.allclose(torch.jit.script(a)(x), a(x))
