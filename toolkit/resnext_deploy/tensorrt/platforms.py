"""The software rows a TensorRT target can meet: JetPack (or pip on x86), TensorRT, CUDA, Python, DLA.

From NVIDIA's JetPack release notes, the TensorRT support matrix and the TensorRT 10.x -> 11.x Jetson
migration page: JetPack 5.1 (the last for Xavier) ships TensorRT 8.5.2; JetPack 6.1/6.2 ship 10.3; JetPack 7.0/7.1
(Thor) 10.13; JetPack 7.2 (Orin and Thor) 10.16, which has no DLA; TensorRT 11.4.1 supports JetPack 7.2.2+ on
AGX Orin (DLA back, strongly typed) and Thor (no DLA, ever). JetPack 6 and TensorRT 11 don't mix.

`resnext-deploy targets` shows these rows per target; `compile --bundle` says which row it found on the device
(by the TensorRT major.minor it imports, and the L4T release) and what the bundle cannot build there. What the
builder then does is decided by feature detection (engines.py), not by this table. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Platform:
    key: str
    jetpack: str  # "" on x86
    tensorrt: str  # the version shipped, or a major ("10.x") for pip
    cuda: str
    python: str
    dla: Tuple[str, ...]  # the targets whose DLA this row can build for
    strongly_typed: bool  # TensorRT 11: no precision flags, no calibrator

    @property
    def implicit_int8(self) -> bool:
        """A calibration cache can be used here (weakly typed TensorRT)."""
        return not self.strongly_typed

    def matches(self, tensorrt_version: str) -> bool:
        want = self.tensorrt.split(".")
        have = tensorrt_version.split(".")
        if want[1:2] == ["x"]:
            return have[:1] == want[:1]
        if self.tensorrt.endswith("+"):  # "11.4.1+": that release or a later 11.x
            return have[:1] == want[:1] and _num(have) >= _num(self.tensorrt.rstrip("+").split("."))
        return have[:2] == want[:2]

    def describe(self) -> str:
        where = f"JetPack {self.jetpack}" if self.jetpack else "pip"
        return f"{where}: TensorRT {self.tensorrt}, CUDA {self.cuda}, Python {self.python}"


def _num(parts: List[str]) -> Tuple[int, ...]:
    return tuple(int(p) for p in parts if p.isdigit())


_XAVIER_ORIN_DLA = ("jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nx", "jetson-agx-orin")
GENERIC_JETSON = "jetson"  # `--target jetson`: one bundle for every Jetson row; the device picks (device_plan.py)

PLATFORMS: Dict[str, Platform] = {p.key: p for p in (
    Platform("jetpack-5.1", "5.1.x", "8.5.2", "11.4", "3.8", _XAVIER_ORIN_DLA, False),
    Platform("jetpack-6.2", "6.1 / 6.2", "10.3", "12.6", "3.10", ("jetson-orin-nx", "jetson-agx-orin"), False),
    Platform("jetpack-7.0", "7.0 / 7.1", "10.13", "13.0", "3.12", (), False),
    Platform("jetpack-7.2", "7.2", "10.16", "13.2", "3.12", (), False),
    Platform("jetpack-7.2.2-trt11", "7.2.2+", "11.4.1+", "13.2", "3.12", ("jetson-agx-orin",), True),
    Platform("pip-trt10", "", "10.x", "12 / 13", "any", (), False),
    Platform("pip-trt11", "", "11.x", "12 / 13", "any", (), True),
)}

#: target -> the rows its bundle is made for (first = the recipe's default, the one its tensorrt_version names)
TARGET_PLATFORMS: Dict[str, Tuple[str, ...]] = {
    "jetson-xavier-nx": ("jetpack-5.1",),
    "jetson-orin-nano": ("jetpack-6.2", "jetpack-7.2"),
    "jetson-orin-nx": ("jetpack-6.2", "jetpack-7.2"),
    "jetson-agx-orin": ("jetpack-6.2", "jetpack-7.2", "jetpack-7.2.2-trt11"),
    "jetson-agx-thor": ("jetpack-7.0", "jetpack-7.2", "jetpack-7.2.2-trt11"),
    "x86-gpu": ("pip-trt10", "pip-trt11"),
    GENERIC_JETSON: ("jetpack-5.1", "jetpack-6.2", "jetpack-7.0", "jetpack-7.2", "jetpack-7.2.2-trt11"),
}


def platforms_for(target: str) -> List[Platform]:
    """The rows of a shipped target; empty for a target of the user's own (then every model is shipped)."""
    return [PLATFORMS[k] for k in TARGET_PLATFORMS.get(target, ())]


def dla_on(platform: Platform, target: str) -> bool:
    """The target can build DLA engines on this row (the generic Jetson target: where any module can)."""
    return target in platform.dla or (target == GENERIC_JETSON and bool(platform.dla))


def ships_calibration_cache(target: str, dla_core: int) -> bool:
    """The cache serves implicit INT8 on DLA (JetPack 5/6): ship it where the target can meet such a row."""
    rows = platforms_for(target)
    if dla_core < 0:
        return False
    return not rows or any(p.implicit_int8 and dla_on(p, target) for p in rows)


def find_row(target: str, tensorrt_version: str, jetson: bool) -> Optional[Platform]:
    """The target's row this machine's TensorRT belongs to (None: not one the target was made for)."""
    for p in platforms_for(target):
        if bool(p.jetpack) == jetson and p.matches(tensorrt_version):
            return p
    return None


def target_summary(target: str) -> List[str]:
    """One line per row: JetPack, TensorRT, Python, DLA (for `resnext-deploy targets`)."""
    out = []
    for p in platforms_for(target):
        dla = "DLA" if dla_on(p, target) else "no DLA"
        typed = ", strongly typed" if p.strongly_typed else ""
        out.append(f"{p.describe()}, {dla}{typed}")
    return out
