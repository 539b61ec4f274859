"""The architecture check stage for Keras models (Keras 3 on the torch backend), run before export.

The check itself lives in :mod:`resnext_deploy.models.check` (:mod:`~resnext_deploy.models.check.keras` observes
the forward; findings are worded as for PyTorch models); this module keeps the names the pipeline imports.
"""

from __future__ import annotations

from ..models.check import CheckReport, Finding, check_keras_model, check_keras_or_raise

__all__ = ["CheckReport", "Finding", "check_keras_model", "check_keras_or_raise"]
