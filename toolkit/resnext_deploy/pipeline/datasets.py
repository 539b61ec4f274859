"""Image folders: calibration sets (any layout) and labeled validation sets (ImageFolder layout)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError
from ..preprocess import Preprocessing, load_image, preprocess_image
from ..progress import StepProgress
from ..sampling import evenly_spaced

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}



@dataclass
class LoadedImages:
    """Preprocessed images, the files they came from, and what was skipped (path, reason)."""

    data: np.ndarray
    paths: List[Path]
    labels: Optional[np.ndarray] = None
    skipped: List[Tuple[Path, str]] = field(default_factory=list)


def _files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _require_folder(folder: Union[str, Path], what: str) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise BadInputError(f"The {what} folder '{folder}' does not exist. Pass an existing folder of images.")
    if not folder.is_dir():
        raise BadInputError(f"The {what} path '{folder}' is not a folder. Pass a folder of images.")
    return folder


SKIP_REASONS = ("truncated", "not an image", "unreadable")
SHOWN_SKIPPED = 5  # how many skipped files a log line or an error names; the report/sidecar has them all


def skip_reason(path: Path) -> Optional[str]:
    """Why ``path`` cannot be used as an image (one of SKIP_REASONS), or None when it decodes.

    Every file of a folder is probed, sampled or not, so every loader reports the same skipped files for the
    same folder. JPEGs are decoded in draft mode (DCT-scaled, several times cheaper) but still to the end,
    which is where a truncated file fails.
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.debug("cannot decode %s: %s", path, exc)
        return "truncated" if "truncated" in str(exc).lower() else "unreadable"
    return None


def describe_skipped(skipped: Sequence[Tuple[Path, str]], folder: Optional[Path] = None) -> str:
    """'3 files skipped: a.jpg (truncated), b.txt (not an image), ...' naming the first SHOWN_SKIPPED."""
    def name(p: Path) -> str:
        try:
            return str(p.relative_to(folder)) if folder else str(p)
        except ValueError:
            return str(p)

    shown = ", ".join(f"{name(p)} ({why})" for p, why in skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: {shown}{more}"


def skipped_records(skipped: Sequence[Tuple[Path, str]]) -> List[Dict[str, str]]:
    """The full skipped list for a report or sidecar."""
    return [{"path": str(p), "reason": why} for p, why in skipped]


def _probe(paths: Sequence[Path]) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    good, skipped = [], []
    for p in paths:
        why = skip_reason(p)
        if why:
            skipped.append((p, why))
        else:
            good.append(p)
    return good, skipped


def _load(paths: Sequence[Path], spec: Preprocessing, progress: StepProgress) -> Tuple[List[np.ndarray], List[int], List[Tuple[Path, str]]]:
    arrays, kept, skipped = [], [], []
    for i, p in enumerate(paths):
        why = "not an image" if p.suffix.lower() not in IMAGE_SUFFIXES else None
        if why is None:
            try:
                arrays.append(preprocess_image(load_image(p), spec))
                kept.append(i)
            except BadInputError:
                why = skip_reason(p) or "unreadable"
        if why:
            skipped.append((p, why))
        if progress:
            progress(i + 1, len(paths))
    return arrays, kept, skipped


def _warn_skipped(what: str, folder: Path, skipped: Sequence[Tuple[Path, str]]) -> None:
    if skipped:
        log.warning("%s folder %s: %s", what, folder, describe_skipped(skipped, folder))


def load_calibration(
    folder: Union[str, Path],
    spec: Preprocessing,
    count: Optional[int] = None,
    seed: int = 0,
    progress: StepProgress = None,
) -> LoadedImages:
    """Every readable image below ``folder`` (any layout), a seeded sample of ``count`` of them."""
    folder = _require_folder(folder, "calibration")
    files = _files(folder)
    if not files:
        raise BadInputError(f"The calibration folder '{folder}' is empty. Put a few hundred representative images in it.")
    usable, skipped = files, []
    if count is not None and count < len(files):
        # Probe every file (so the skipped list is the folder's, whatever the count), then a seeded sample of
        # the usable ones: deterministic, and exactly ``count`` images.
        usable, skipped = _probe(files)
        if count < len(usable):
            usable = sorted(random.Random(seed).sample(usable, count))
    arrays, kept, late = _load(usable, spec, progress)
    skipped += late
    _warn_skipped("calibration", folder, skipped)
    if not arrays:
        raise BadInputError(
            f"The calibration folder '{folder}' has no readable images ({describe_skipped(skipped, folder)}). "
            f"Supported: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return LoadedImages(np.stack(arrays), [usable[i] for i in kept], None, sorted(skipped))


def list_classes(folder: Union[str, Path]) -> List[str]:
    """Class names of an ImageFolder-layout folder (sorted subfolder names)."""
    folder = _require_folder(folder, "validation")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        hint = f" It holds {len(loose)} images directly (e.g. '{loose[0]}')." if loose else ""
        raise BadInputError(
            f"The validation folder '{folder}' is not in class-subfolder layout: it has no subfolders.{hint} "
            "Put each class's images in a subfolder named for the class (root/<class>/<image>), "
            "subfolders sorted by name giving the class indices."
        )
    return classes


def load_labeled(
    folder: Union[str, Path],
    spec: Preprocessing,
    limit: Optional[int] = None,
    progress: StepProgress = None,
) -> LoadedImages:
    """An ImageFolder-layout folder (root/<class>/<image>): labels are the sorted subfolder indices."""
    folder = Path(folder)
    classes = list_classes(folder)
    files, labels = [], []
    for idx, name in enumerate(classes):
        for p in _files(folder / name):
            files.append(p)
            labels.append(idx)
    skipped: List[Tuple[Path, str]] = []
    if limit is not None and limit < len(files):
        # Probe every file (so the skipped list is the folder's, whatever the limit), then an even stride over
        # the usable ones: every class represented, deterministic.
        usable, skipped = _probe(files)
        index = {p: i for i, p in enumerate(files)}
        pairs = [(p, labels[index[p]]) for p in usable]
        if limit < len(pairs):
            pick = evenly_spaced(len(pairs), limit)
            pairs = [pairs[i] for i in pick]
        files, labels = [p for p, _ in pairs], [lab for _, lab in pairs]
    arrays, kept, late = _load(files, spec, progress)
    skipped += late
    _warn_skipped("validation", folder, skipped)
    if not arrays:
        detail = f" ({describe_skipped(skipped, folder)})" if skipped else ""
        raise BadInputError(f"The validation folder '{folder}' has no readable images in its class subfolders{detail}.")
    return LoadedImages(np.stack(arrays), [files[i] for i in kept], np.asarray([labels[i] for i in kept]), sorted(skipped))
