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


class Rate:
    """Items per second and the time left of one step, from the first call on (what the CLI's bar shows)."""

    def __init__(self, clock: Optional[Callable[[], float]] = None) -> None:
        import time

        self._clock = clock or time.monotonic
        self._start: Optional[float] = None
        self._first = 0

    def update(self, done: int, total: int) -> "tuple[Optional[float], Optional[float]]":
        """(items per second, seconds left), None until two calls have measured something."""
        now = self._clock()
        if self._start is None:
            # The first report may come after a resume store or a slow load: count from it, not from zero.
            self._start, self._first = now, done
            return None, None
        elapsed, moved = now - self._start, done - self._first
        if elapsed <= 0 or moved <= 0:
            return None, None
        rate = moved / elapsed
        return rate, max(0, total - done) / rate


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
