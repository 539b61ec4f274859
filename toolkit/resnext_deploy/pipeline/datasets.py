"""Image folders: calibration sets (any layout) and labeled validation sets (ImageFolder layout)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BadInputError
from ..preprocess import Preprocessing, load_image, preprocess_image
from ..progress import StepProgress

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


def _load(paths: Sequence[Path], spec: Preprocessing, progress: StepProgress) -> Tuple[List[np.ndarray], List[int], List[Tuple[Path, str]]]:
    arrays, kept, skipped = [], [], []
    for i, p in enumerate(paths):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((p, "not an image file"))
        else:
            try:
                arrays.append(preprocess_image(load_image(p), spec))
                kept.append(i)
            except BadInputError as exc:
                skipped.append((p, str(exc)))
        if progress:
            progress(i + 1, len(paths))
    return arrays, kept, skipped


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
    if count is not None and count < len(files):
        # Sample before decoding so a large folder costs only what is used; deterministic given the seed.
        files = sorted(random.Random(seed).sample(files, count))
    arrays, kept, skipped = _load(files, spec, progress)
    if skipped:
        log.warning("calibration: skipped %d unreadable or non-image files in %s", len(skipped), folder)
    if not arrays:
        raise BadInputError(
            f"The calibration folder '{folder}' has no readable images ({len(skipped)} files skipped, e.g. "
            f"'{skipped[0][0].name}': {skipped[0][1]}). Supported: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return LoadedImages(np.stack(arrays), [files[i] for i in kept], None, skipped)


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
    if limit is not None and limit < len(files):
        # An even stride keeps every class represented and is deterministic.
        pick = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files, labels = [files[i] for i in pick], [labels[i] for i in pick]
    arrays, kept, skipped = _load(files, spec, progress)
    if skipped:
        log.warning("validation: skipped %d unreadable or non-image files in %s", len(skipped), folder)
    if not arrays:
        raise BadInputError(f"The validation folder '{folder}' has no readable images in its class subfolders.")
    return LoadedImages(np.stack(arrays), [files[i] for i in kept], np.asarray([labels[i] for i in kept]), skipped)
