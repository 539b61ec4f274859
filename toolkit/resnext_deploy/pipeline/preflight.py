"""Checks of the output location made before the first stage, so no build fails at its end for a reason
knowable at its start (issue 28): an empty or relative-to-nothing name, a mount point, a read-only file system,
an output that holds the build's own inputs, a foreign folder without ``--force``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from ..buildfolder.artifacts import check_replaceable, ensure_writable_dir
from ..errors import BadInputError
from ..names import shown

PathLike = Union[str, "os.PathLike[str]"]


def check_output(out: PathLike, force: bool = False, inputs: Iterable[Optional[PathLike]] = (),
                 ours: Optional[Callable[[Path], bool]] = None) -> Path:
    """The output folder ``out`` as a Path, or BadInputError (exit 2) / ResourceError (exit 6) naming why not.

    A build replaces its output whole by renaming a staging folder beside it, so ``out`` must have a name and a
    parent on the same file system: ``.``, ``..``, ``""`` and a mount point (``docker run -v host:/out``) cannot
    be swapped. A folder holding one of ``inputs`` (the model, the image folders, the recipe) is refused even with
    ``force``: replacing it would delete them."""
    text = os.fspath(out)
    if not text.strip():
        raise BadInputError("--out is empty. Name the folder to write, e.g. --out build/mymodel.")
    path = Path(text)
    if path.name in ("", ".", ".."):
        raise BadInputError(
            f"--out '{shown(text)}' names a folder by reference ({os.path.abspath(text)}), not a new one: a build "
            "replaces its output whole. Name a folder inside it, e.g. --out build/mymodel."
        )
    if is_mount_point(path):
        raise BadInputError(
            f"--out '{shown(text)}' is a mount point: a build is written beside its output and swapped in whole, "
            f"which cannot cross into a mount. Write into a folder inside it, e.g. --out {shown(text.rstrip('/'))}/build."
        )
    ensure_writable_dir(path.parent)
    _refuse_holding_inputs(path, inputs)
    check_replaceable(path, force, ours)
    return path


def is_mount_point(path: Path) -> bool:
    """True if ``path`` is a mount point: os.path.ismount (another device), or listed in /proc/self/mountinfo (a
    bind mount of a folder of the same file system, which ismount does not see: ``docker run -v``)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            points = {line.split(" ")[4] for line in fh if line.count(" ") >= 4}
    except OSError:
        return False
    real = os.path.realpath(path)
    # mountinfo writes space, tab, newline and backslash as octal escapes (proc(5))
    escaped = real.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    return escaped in points


def _refuse_holding_inputs(path: Path, inputs: Iterable[Optional[PathLike]]) -> None:
    """BadInputError if ``path`` is, or is a folder above, one of ``inputs`` or the current folder."""
    if path.is_symlink() or not path.exists():
        return  # a link is replaced itself, never what it points to; a missing folder holds nothing
    real = Path(os.path.realpath(path))
    named = [(Path(p), "input") for p in inputs if p] + [(Path.cwd(), "current folder")]
    for given, what in named:
        target = Path(os.path.realpath(given))
        if target == real or real in target.parents:
            raise BadInputError(
                f"--out '{shown(str(path))}' holds the build's {what} '{shown(str(given))}': a build replaces its "
                "output whole, so it would be deleted (--force does not change this). Choose another --out."
            )
