"""The architecture check stage for PyTorch models (eager and TorchScript), run before export.

The check itself lives in :mod:`resnext_deploy.models.check` (one engine, one observer per framework); this
module keeps the names the pipeline, the CLI and older callers import.
"""

from __future__ import annotations

from ..models.check import (
    ADD_NAMES,
    CheckReport,
    Finding,
    check_model,
    check_or_raise,
    nonfinite_tensors,
    residual_finding,
)

__all__ = ["ADD_NAMES", "CheckReport", "Finding", "check_model", "check_or_raise", "nonfinite_tensors",
           "residual_finding"]
