"""Write the CI outputs a command was asked for: ``--junit FILE``, ``--summary FILE`` and GitHub's step summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..buildfolder.artifacts import atomic_file
from ..errors import BadInputError
from .junit import junit_from_report
from .summary import summary_markdown

PathLike = Union[str, Path]


def write_ci_outputs(report: Dict[str, Any], junit: Optional[PathLike] = None, summary: Optional[PathLike] = None,
                     step_summary: Optional[PathLike] = None) -> List[Path]:
    """Write JUnit XML and the Markdown summary (each atomically); append the summary to ``step_summary``
    (the file GitHub names in GITHUB_STEP_SUMMARY, which the job page shows). Returns what was written."""
    written: List[Path] = []
    if junit:
        with atomic_file(junit) as tmp:
            tmp.write_text(junit_from_report(report), encoding="utf-8")
        written.append(Path(junit))
    if summary:
        with atomic_file(summary) as tmp:
            tmp.write_text(summary_markdown(report), encoding="utf-8")
        written.append(Path(summary))
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as f:  # GitHub collects appends from every step
                f.write(summary_markdown(report) + "\n")
        except OSError as exc:
            raise BadInputError(f"Cannot append the job summary to GITHUB_STEP_SUMMARY='{step_summary}': {exc}.") from exc
        written.append(Path(step_summary))
    return written
