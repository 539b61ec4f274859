"""What the PyTorch formats share once the file is a torch module: the check, the export and the eager runner."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .base import CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, preprocessing_for


def outcome(report: Any) -> CheckOutcome:
    """The check engine's report as the pipeline records it."""
    return CheckOutcome(report.to_dict(), report.summary(), bool(getattr(report, "complete", True)),
                        list(getattr(report, "uncovered", [])), report)


class TorchModuleFormat(ModelFormat):
    """A format that loads into a torch.nn.Module (eager or TorchScript) through models/loading.py."""

    kind = "torch"
    packages = ("torch", "onnx", "onnxruntime")
    extra = "build"
    compared_with = "torch"
    runner_row = "pytorch-fp32"

    def scan(self, path: Path, allow_pickle: bool) -> None:
        """What a torch file unpacks to, from its zip directory, before torch reads it (archive_bounds): a 3 MB
        ``.pt`` whose pickle inflates to gigabytes is refused unread."""
        from ..archive_bounds import check_archive

        check_archive(path)

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        from ..resnext import ARCHS
        from . import model_name

        loaded = self.load_module(path, request)
        size = ARCHS[loaded.arch].input_size if loaded.arch in ARCHS else 224
        return ModelSource(model_name(path), path, self, loaded.arch, loaded.num_classes, loaded.labels,
                           preprocessing_for(loaded.preprocessing, size, request.overrides), loaded.module, loaded.source)

    @abc.abstractmethod
    def read(self, path: Path, arch: Optional[str], num_classes: Optional[int], allow_pickle: bool) -> Any:
        """models/loading.py's LoadedModel of the file (load_torch_model has checked the path and the options)."""

    def load_module(self, path: Path, request: LoadRequest) -> Any:
        """The file as models/loading.py's LoadedModel (the module and what the file said about it)."""
        from ..loading import load_torch_model

        return load_torch_model(path, request.arch, request.num_classes, allow_pickle=request.allow_pickle, fmt=self)

    def check(self, src: ModelSource) -> CheckOutcome:
        from ..check import check_or_raise

        return outcome(check_or_raise(src.module, (1,) + src.preprocessing.input_shape))

    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        from ..export.torch_onnx import onnx_from_torch

        res = onnx_from_torch(src.module, out_path, sample, settings.opset, settings.tolerance, settings.simplify,
                              root=settings.root, log_path=settings.log_path)
        res.artifact.settings["compared_with"] = self.compared_with
        return Exported(res.artifact, res.to_dict())

    def runner(self, src: ModelSource, threads: int = 0) -> Any:
        from ..runner import TorchRunner

        return TorchRunner(src.module, threads=threads)
