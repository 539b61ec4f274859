"""What one build shares between its steps: the source, the recipe, the images, where it writes, and what it learns.

The steps (``steps.py``), the accuracy fallback and the backends' build hooks take a ``BuildContext``
instead of long parameter lists and out-parameters: timings, notes and report sections are recorded on it,
and the float reference's logits are computed once, by the first evaluation, and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..progress import Progress, StepProgress, step_progress
from ..recipes import Recipe
from ..data.datasets import LoadedImages
from .source import ModelSource


@dataclass
class BuildContext:
    source: ModelSource
    recipe: Recipe
    calibration: LoadedImages
    validation: LoadedImages
    #: the staging directory the build writes into (swapped in whole at the end)
    staging: Path
    progress: Progress = None
    #: seconds per step, for the report
    timings: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    #: report sections the steps add (check, export, sensitivity, fallback, tensorrt, ...)
    extra: Dict[str, Any] = field(default_factory=dict)
    #: the float reference's logits on the validation images (set by the first evaluation)
    reference_logits: Optional[np.ndarray] = None
    #: where logits are computed (scale.open_inference: this process or Ray workers); None = this process
    inference: Any = None
    #: the workstation's signing.SigningKey (build --sign-key): signs what leaves for a device (the bundle's manifest)
    signing_key: Any = None

    def step(self, name: str) -> StepProgress:
        """The progress callback of one named step."""
        return step_progress(self.progress, name)

    def attempt(self, staging: Path) -> "BuildContext":
        """The same build written elsewhere (a fallback candidate): own timings, notes and sections; same reference."""
        return replace(self, staging=staging, timings={}, notes=[], extra={})
