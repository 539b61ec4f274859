"""ResNeXt defined in-house, with torchvision's parameter names so its state_dicts load without it.

The block is the seed's bottleneck: 1x1 reduce -> 3x3 grouped conv (groups = cardinality) -> 1x1 expand
(x4), BN after each, ReLU, residual add, with a 1x1 projection shortcut when stride or channels change.
width = int(planes * width_per_group / 64) * groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from ..optional import require

torch = require("torch", "define ResNeXt models")
nn = torch.nn


@dataclass(frozen=True)
class ArchSpec:
    """Everything that defines one member of the family."""

    layers: List[int]
    groups: int
    width_per_group: int
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "small": 3x3/1 conv, no pool
    stem_width: int = 64
    base_planes: int = 64
    default_num_classes: int = 1000
    input_size: int = 224

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


ARCHS: Dict[str, ArchSpec] = {
    "resnext50_32x4d": ArchSpec([3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": ArchSpec([3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ArchSpec([3, 4, 23, 3], 64, 4),
    # Compact member for 32x32 inputs (the offline demo on scikit-learn's digits).
    "resnext_demo": ArchSpec(
        [1, 1, 1], 8, 16, stem="small", stem_width=32, base_planes=16, default_num_classes=10, input_size=32
    ),
}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out)


class ResNeXt(nn.Module):
    def __init__(self, spec: ArchSpec, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.spec = spec
        num_classes = num_classes or spec.default_num_classes
        self.inplanes = spec.stem_width
        if spec.stem == "imagenet":
            self.conv1 = nn.Conv2d(3, spec.stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, spec.stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        for i, blocks in enumerate(spec.layers):
            planes = spec.base_planes * 2**i
            setattr(self, f"layer{i + 1}", self._make_layer(planes, blocks, stride=1 if i == 0 else 2))
        # Stages stay attributes (torchvision's key names); a missing 4th stage is a parameter-free Identity
        # so forward() has no data-dependent attribute access and stays scriptable.
        for i in range(len(spec.layers), 4):
            setattr(self, f"layer{i + 1}", nn.Identity())
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.spec.groups, self.spec.width_per_group)]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, 1, None, self.spec.groups, self.spec.width_per_group))
        return nn.Sequential(*layers)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def create(arch: str, num_classes: Optional[int] = None) -> ResNeXt:
    """Build an architecture by name (see ARCHS), randomly initialised."""
    from ..errors import BadInputError

    if arch not in ARCHS:
        raise BadInputError(f"Unknown --arch '{arch}'. Known architectures: {', '.join(sorted(ARCHS))}.")
    return ResNeXt(ARCHS[arch], num_classes)
