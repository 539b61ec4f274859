"""safetensors: a JSON header and raw tensor bytes, a state_dict that cannot carry code (arch etc. in its metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .base import Sniff
from .torch_module import TorchModuleFormat


class SafetensorsFormat(TorchModuleFormat):
    name = "safetensors"
    packages = TorchModuleFormat.packages + ("safetensors",)
    suffixes = (".safetensors",)
    help = "safetensors (a state_dict; arch, num_classes, labels, preprocessing from its metadata)"

    def detect(self, sniff: Sniff) -> bool:
        return sniff.safetensors_header()

    def read(self, path: Path, arch: Optional[str], num_classes: Optional[int], allow_pickle: bool) -> Any:
        from ..loading import from_state_dict
        from ..trust import safetensors_load

        tensors, meta = safetensors_load(path)
        return from_state_dict(tensors, path, arch, num_classes, meta=meta, source="safetensors")
