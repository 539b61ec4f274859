"""The one progress callback type: the CLI draws it; library code only calls it."""

from __future__ import annotations

from typing import Callable, Optional

#: progress(stage, done, total)
Progress = Optional[Callable[[str, int, int], None]]

#: progress(done, total) for one named step (what loaders and calibrators take)
StepProgress = Optional[Callable[[int, int], None]]


def step_progress(progress: Progress, name: str) -> StepProgress:
    """``progress`` bound to one step name, or None when nobody is listening."""
    return (lambda done, total: progress(name, done, total)) if progress else None
