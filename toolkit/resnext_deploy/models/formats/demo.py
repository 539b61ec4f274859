"""The shipped demo (no --model): a small trained ResNeXt checkpoint with its labels, preprocessing and images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...preprocess import Preprocessing
from .base import LoadRequest, ModelSource, Sniff, preprocessing_for
from .checkpoint import CheckpointFormat
from .torch_module import TorchModuleFormat


class DemoFormat(TorchModuleFormat):
    name = "demo"
    kind = "demo"
    help = "none: the shipped demo"

    def detect(self, sniff: Sniff) -> bool:
        return False  # chosen by giving no --model, never from a file

    def read(self, path: Path, arch: Optional[str], num_classes: Optional[int], allow_pickle: bool) -> Any:
        return CheckpointFormat().read(path, arch, num_classes, allow_pickle)

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        from ..demo.digits import DEMO_CHECKPOINT, demo_model_info

        info = demo_model_info()
        inner = LoadRequest(info["arch"], info["num_classes"], request.overrides)
        src = super().load(Path(DEMO_CHECKPOINT), inner)
        src.name, src.is_demo = info["arch"], True
        src.labels = src.labels or list(info["labels"])
        if not src.preprocessing or src.preprocessing == Preprocessing():
            src.preprocessing = preprocessing_for(info["preprocessing"], None, request.overrides)
        return src
