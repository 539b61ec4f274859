"""Which Jetson this is: the device tree model, the L4T release, the TensorRT version and the DLA cores.

Read from files under one root (``/`` on a device), so tests and the rehearsal inject each module's facts by
pointing ``root`` (or $RESNEXT_DEPLOY_DEVICE_ROOT) at a folder holding a fake device tree and release file:

- the module: ``/proc/device-tree/model`` (or ``/sys/firmware/devicetree/base/model``), e.g. "NVIDIA Jetson AGX
  Orin Developer Kit" (NUL-terminated);
- the L4T release: ``/etc/nv_tegra_release``, e.g. "# R35 (release), REVISION: 4.1, GCID: ..." (JetPack 5 is R35,
  JetPack 6 R36, JetPack 7 R38);
- TensorRT: ``tensorrt.__version__`` when the Python package imports; else the installed ``libnvinfer<N>`` /
  ``tensorrt`` package in ``/var/lib/dpkg/status`` (JetPack installs TensorRT as Debian packages; a venv without
  --system-site-packages does not see the Python bindings, the libraries are still there);
- DLA cores: ``Builder.num_DLA_cores`` when TensorRT imports, else the module table (device_plan.MODULES).

Standard library only; runs on JetPack 5's Python 3.8.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

ROOT_ENV = "RESNEXT_DEPLOY_DEVICE_ROOT"  # tests and the rehearsal only: a folder standing in for "/"
MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
TEGRA_RELEASE = "etc/nv_tegra_release"
DPKG_STATUS = "var/lib/dpkg/status"
MAX_READ = 1 << 20  # these files are a line (dpkg's status a few MB at most): read no more than this of each

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_TRT_PACKAGE = re.compile(r"^(tensorrt|libnvinfer\d+)$")


@dataclass(frozen=True)
class DeviceFacts:
    """What the device says about itself; None where it says nothing (not a Jetson, or TensorRT not found)."""

    root: str
    model: Optional[str]  # the device tree model string
    l4t: Optional[str]  # "35.4.1"
    tensorrt_version: Optional[str]  # "8.5.2.2"
    tensorrt_from: Optional[str]  # "python" (tensorrt.__version__) | "dpkg" (/var/lib/dpkg/status) | None
    dla_cores: Optional[int]  # from TensorRT's builder; None without TensorRT (then the module table says)

    @property
    def jetson(self) -> bool:
        return self.model is not None or self.l4t is not None

    @property
    def l4t_major_minor(self) -> Optional[Tuple[int, int]]:
        if not self.l4t:
            return None
        parts = self.l4t.split(".")
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), jetson=self.jetson)


def device_root(root: Union[str, Path, None] = None) -> Path:
    return Path(root if root is not None else os.environ.get(ROOT_ENV) or "/")


def read_text(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_READ)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace")


def device_model(root: Union[str, Path, None] = None) -> Optional[str]:
    """The device tree model ('NVIDIA Jetson Orin Nano Developer Kit'), None when there is no device tree model."""
    base = device_root(root)
    for rel in MODEL_FILES:
        text = read_text(base / rel)
        if text is not None and text.strip("\x00\n "):
            return text.strip("\x00\n ")
    return None


def l4t_release(root: Union[str, Path, None] = None) -> Optional[str]:
    """The L4T release from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.3, ...' -> '36.4.3')."""
    return release_from_text(read_text(device_root(root) / TEGRA_RELEASE) or "")


def release_from_text(text: str) -> Optional[str]:
    m = _RELEASE.search(text)
    return ".".join(g for g in m.groups() if g is not None) if m else None


def tensorrt_from_dpkg(root: Union[str, Path, None] = None) -> Optional[str]:
    """The installed TensorRT version in dpkg's status ('libnvinfer10' 10.3.0.30-1+cuda12.5 -> '10.3.0.30')."""
    text = read_text(device_root(root) / DPKG_STATUS)
    found: Dict[str, str] = {}
    for stanza in (text or "").split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln.startswith(" "))
        name = fields.get("Package", "")
        if _TRT_PACKAGE.match(name) and "installed" in fields.get("Status", "").split() and fields.get("Version"):
            found[name] = fields["Version"].split("-", 1)[0].split(":")[-1]
    return found.get("tensorrt") or next(iter(sorted(found.values(), reverse=True)), None)


def detect(root: Union[str, Path, None] = None, trt: Any = None, dla_cores: Optional[int] = None) -> DeviceFacts:
    """This device's facts; ``trt`` is the imported tensorrt module when there is one (its version), ``dla_cores``
    what its builder reports (the caller asks engines.dla_cores: this module stays below the engine builder)."""
    base = device_root(root)
    version, source, cores = None, None, None
    if trt is not None:
        version, source, cores = str(trt.__version__), "python", dla_cores
    else:
        version = tensorrt_from_dpkg(base)
        source = "dpkg" if version else None
    return DeviceFacts(str(base), device_model(base), l4t_release(base), version, source, cores)
