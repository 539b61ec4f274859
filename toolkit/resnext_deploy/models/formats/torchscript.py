"""TorchScript (``torch.jit.save``): its program runs in TorchScript's interpreter (torch operators, no Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .base import Sniff
from .torch_module import TorchModuleFormat


class TorchScriptFormat(TorchModuleFormat):
    name = "torchscript"
    help = "TorchScript (torch.jit.save)"

    def detect(self, sniff: Sniff) -> bool:
        """A zip with ``constants.pkl`` or a ``code/`` folder (a torch.save zip has neither)."""
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" or "/code/" in n for n in sniff.zip_names or ())

    def read(self, path: Path, arch: Optional[str], num_classes: Optional[int], allow_pickle: bool) -> Any:
        from ..loading import load_torchscript

        return load_torchscript(path, arch, num_classes)
