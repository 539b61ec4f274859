"""An ONNX model brought as it is: protobuf, read by onnx / ONNX Runtime (no code), copied as the build's FP32 ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ...buildfolder.artifacts import Artifact
from ...errors import BadInputError, ModelCheckError
from .base import CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, Sniff, preprocessing_for

#: the name of the float reference artifact every build compares with (pipeline/steps.py's REFERENCE)
FP32_NAME = "onnx-fp32"


def onnx_checker(path: Path) -> CheckOutcome:
    """onnx.checker (full) on a float ONNX: the one architecture check an ONNX file gets here."""
    from ...optional import require

    onnx = require("onnx", "check ONNX models")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises several types
        raise BadInputError(f"The ONNX model '{path}' fails onnx.checker: {exc}") from exc
    return CheckOutcome({"passed": True, "checks": ["onnx.checker (full)"]}, f"{path}: passed onnx.checker (full)")


def copied(src: ModelSource, out_path: Path, settings: ExportSettings, note: str) -> Exported:
    """The ONNX the model already is, copied to ``out_path`` with its external data, if any, as the FP32 artifact
    (nothing to compare with)."""
    from ..onnx_inputs import copy_onnx

    files = copy_onnx(src.path, out_path)
    art = Artifact.from_files(FP32_NAME, files, settings.root, kind="onnx", backend="onnx", precision="fp32",
                              stage="export", settings={"copied_from": str(src.path)})
    return Exported(art, {"copied_from": str(src.path)}, note)


class OnnxFormat(ModelFormat):
    name = "onnx"
    kind = "onnx"
    packages = ("onnx", "onnxruntime")
    extra = "ort"
    suffixes = (".onnx",)
    help = "ONNX (exported already: the architecture check is onnx.checker's)"
    onnx_input = True

    def detect(self, sniff: Sniff) -> bool:
        return sniff.onnx_header()

    def scan(self, path: Path, allow_pickle: bool) -> None:
        """A float source for a build (onnx_inputs.scan_onnx): external data inside the model's folder and within the
        size limits, finite initializers, not already quantized."""
        from ..onnx_inputs import scan_onnx

        scan_onnx(path, quantized_ok=False)

    def check_file(self, path: Path) -> Optional[Dict[str, Any]]:
        """The ONNX as it is (a Q/DQ model too): its inputs scanned, onnx.checker, then every backend's own rules
        (Backend.check_onnx: TensorRT's Q/DQ rules); a violation is a ModelCheckError listing them all."""
        from ... import backends
        from ..onnx_inputs import scan_onnx

        scan_onnx(path)  # external data confined and bounded, no NaN/Inf weights: before the checker reads it
        onnx_checker(path)
        rules = backends.check_onnx(path)
        failed = [r for r in rules if not r.passed]
        if failed:
            raise ModelCheckError("\n".join(f"{r.summary}\n{r.remedy}".rstrip() for r in failed))
        return {"model": str(path), "passed": True,
                "checks": ["onnx.checker (full)"] + [r.name for r in rules if r.applied],
                **{r.key: r.record for r in rules},
                "summary": "\n".join([f"{path}: passed onnx.checker (full)"] + [r.summary for r in rules])}

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        from ..export.torch_onnx import onnx_input_info
        from . import model_name

        info = onnx_input_info(path)
        shape = info["shape"]
        if len(shape) != 4 or shape[1] != 3:
            raise BadInputError(f"The ONNX model '{path}' takes input of shape {shape}; expected (batch, 3, H, W) images.")
        size = shape[-1] if isinstance(shape[-1], int) else 224
        classes = info["output_shape"][-1] if isinstance(info["output_shape"][-1], int) else request.num_classes
        return ModelSource(model_name(path), path, self, request.arch, classes, None,
                           preprocessing_for(None, size, request.overrides), None, "onnx")

    def check(self, src: ModelSource) -> CheckOutcome:
        return onnx_checker(src.path)

    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        return copied(src, out_path, settings,
                      "The model was given as ONNX: the architecture check was onnx.checker's and there was no "
                      "framework model to compare the ONNX with.")
