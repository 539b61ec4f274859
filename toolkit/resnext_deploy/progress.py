"""The one progress callback type: library code only calls it; the CLI draws it with :class:`ProgressDisplay`.

On a terminal the display is rich's progress bars; on anything else (a CI log, a file, a pipe) it writes one plain
line when a stage starts and one per 10 % of it, so a 12-minute bench is never a silent log.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Callable, Dict, Optional

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


def rate_unit(stage: str) -> str:
    """What a stage counts, for its rate: images for evaluation, loading and calibration, else steps."""
    return "img/s" if any(w in stage for w in ("evaluate", "image", "calibrat", "end to end")) else "/s"


class ProgressDisplay:
    """A :data:`Progress` callback that draws: rich bars on a terminal, a line per stage start and per 10 % elsewhere.

    A stage that starts again (``done`` going back, or a new pass after it finished, as the fallback's
    re-evaluations do) starts a new bar and a new rate, so its speed is that pass's own."""

    def __init__(self, enabled: bool = True, stream: Optional[IO[str]] = None, terminal: Optional[bool] = None,
                 clock: Optional[Callable[[], float]] = None) -> None:
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty() if terminal is None else terminal
        self._clock = clock
        self._stages: Dict[str, Dict[str, Any]] = {}
        self._rich: Any = None
        if enabled and self._terminal:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn
            except ImportError:  # rich is in the build extra; the on-device CLI falls back to lines
                self._terminal = False
            else:
                self._rich = RichProgress(TextColumn("  {task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                                          TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                                          console=Console(file=self._stream), transient=False)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        state = self._stages.get(stage)
        if state is None or done < state["done"] or (state["done"] >= state["total"] and done < total):
            state = self._start(stage, total)
        rate, left = state["rate"].update(done, total)
        state["done"], state["total"] = done, total
        speed = f"{rate:.1f} {rate_unit(stage)}" if rate else ""
        if self._rich is not None:
            self._rich.update(state["task"], completed=done, total=max(total, 1), speed=speed)
            if done >= total and all(s["done"] >= s["total"] for s in self._stages.values()):
                self._rich.stop()
            return
        tenth = done * 10 // max(total, 1)
        if tenth > state["tenth"] or (done >= total and not state["ended"]):
            state["tenth"], state["ended"] = tenth, done >= total
            eta = f", {format_eta(left)} left" if left is not None and done < total else ""
            self._line(f"{stage}: {done}/{total} ({100 * done // max(total, 1)}%){', ' + speed if speed else ''}{eta}")

    def _start(self, stage: str, total: int) -> Dict[str, Any]:
        state: Dict[str, Any] = {"rate": Rate(self._clock), "done": 0, "total": total, "tenth": 0, "ended": False}
        if self._rich is not None:
            old = self._stages.get(stage)
            if old is not None:
                self._rich.remove_task(old["task"])
            self._rich.start()
            state["task"] = self._rich.add_task(stage, total=max(total, 1), speed="")
        else:
            self._line(f"{stage}: started ({total} to do)")
        self._stages[stage] = state
        return state

    def _line(self, text: str) -> None:
        self._stream.write(f"  {text}\n")
        self._stream.flush()
