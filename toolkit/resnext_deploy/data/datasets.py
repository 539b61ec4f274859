"""Image folders: calibration sets (any layout) and labeled validation sets (ImageFolder layout)."""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import hashlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError
from ..names import shown
from ..preprocess import Preprocessing, is_regular_file, preprocess_file
from ..progress import StepProgress
from .sampling import evenly_spaced

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}



class ImageList:
    """Image files decoded on demand: ``images[a:b]`` (or an index array) decodes just those files.

    It stands where a float32 NCHW array stood, so evaluation, calibration and the samplers read a folder a
    batch at a time and never hold all of it decoded: peak memory follows the batch, not the folder.
    ``np.asarray(images)`` still decodes everything, for the few consumers that need one array.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, paths: Sequence[Path], spec: Preprocessing) -> None:
        self.paths = [Path(p) for p in paths]
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.paths),) + tuple(self.spec.input_shape)

    def _decode(self, paths: Sequence[Path]) -> np.ndarray:
        if not paths:
            return np.zeros((0,) + tuple(self.spec.input_shape), np.float32)
        return np.stack([preprocess_file(p, self.spec) for p in paths])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self._decode(self.paths[key])
        if isinstance(key, (int, np.integer)):
            return self._decode([self.paths[int(key)]])[0]
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self._decode([self.paths[int(i)] for i in index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr

    def subset(self, start: int, stop: int) -> "ImageList":
        """Images ``start:stop`` still undecoded (what a worker that sees the same files decodes itself)."""
        return ImageList(self.paths[start:stop], self.spec)

    def astype(self, dtype: Any) -> np.ndarray:
        """Every image decoded, as an array (what ``data.astype`` gave when ``data`` was one)."""
        return np.asarray(self, dtype=dtype)

    def batches(self, size: int) -> Iterator[Tuple[slice, np.ndarray]]:
        """(slice, decoded batch) in order, ``size`` images at a time."""
        for start in range(0, len(self.paths), size):
            sl = slice(start, min(start + size, len(self.paths)))
            yield sl, self[sl]

    def digest(self, labels: Optional[np.ndarray] = None) -> str:
        """sha256 of the list (path, size, mtime of every file), the labels and the preprocessing: a resume key.

        File stats, not contents: cheap for 50,000 files, and a file rewritten in place gets a new mtime.
        """
        h = hashlib.sha256(repr(sorted(self.spec.to_dict().items())).encode())
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if labels is not None:
            h.update(np.asarray(labels, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass
class LoadedImages:
    """The images of a folder (an :class:`ImageList`, decoded on demand, or an array), the files they come
    from, and what was skipped (path, reason)."""

    data: Union[np.ndarray, ImageList]
    paths: List[Path]
    labels: Optional[np.ndarray] = None
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    #: a labeled folder's class subfolders (by name), whether or not a readable image of each was kept
    classes: List[str] = field(default_factory=list)
    folder: Optional[Path] = None


def _files(folder: Path) -> List[Path]:
    """Every entry but folders and hidden names: a FIFO, socket or device is listed, then skipped with its reason."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and os.path.exists(p) and not p.name.startswith("."))


def _require_folder(folder: Union[str, Path], what: str) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise BadInputError(f"The {what} folder '{folder}' does not exist. Pass an existing folder of images.")
    if not folder.is_dir():
        raise BadInputError(f"The {what} path '{folder}' is not a folder. Pass a folder of images.")
    return folder


SKIP_REASONS = ("truncated", "not an image", "too large", "unreadable", "not a regular file")
SHOWN_SKIPPED = 5  # how many skipped files a log line or an error names; the report/sidecar has them all


def max_image_pixels() -> int:
    """The largest image (width x height) a folder may hold: Pillow's decompression-bomb limit (about 89.5
    million pixels, a 9459 x 9459 image; ~270 MB decoded as RGB), read when asked so a caller that raised
    ``PIL.Image.MAX_IMAGE_PIXELS`` gets its own limit. Larger files are skipped as "too large" from their
    header alone, before any pixel is decoded, so memory stays bounded whatever a folder holds."""
    return int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485


def skip_reason(path: Path) -> Optional[str]:
    """Why ``path`` cannot be used as an image (one of SKIP_REASONS), or None when it decodes.

    Every file of a folder is probed, sampled or not, so every loader reports the same skipped files for the
    same folder. JPEGs are decoded in draft mode (DCT-scaled, several times cheaper) but still to the end,
    which is where a truncated file fails. An image over :func:`max_image_pixels` is "too large" (its header
    says so; nothing is decoded).
    """
    if not is_regular_file(path):  # a FIFO would block the open forever, a device read without end
        return "not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # handled here: over the limit is skipped
            with Image.open(path) as img:
                if img.width * img.height > max_image_pixels():
                    log.debug("%s is %dx%d pixels, over the limit of %d", path, img.width, img.height, max_image_pixels())
                    return "too large"
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses it at open
        log.debug("%s: %s", path, exc)
        return "too large"
    except (OSError, ValueError, SyntaxError) as exc:
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

    listed = ", ".join(f"{shown(name(p))} ({why})" for p, why in skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: {listed}{more}"


def skipped_records(skipped: Sequence[Tuple[Path, str]]) -> List[Dict[str, str]]:
    """The full skipped list for a report or sidecar."""
    return [{"path": str(p), "reason": why} for p, why in skipped]


def _probe_all(paths: Sequence[Path], progress: StepProgress) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Decode-probe every file (one at a time, nothing kept) so the usable list is known before any batch."""
    good, skipped = [], []
    for i, p in enumerate(paths):
        why = skip_reason(p)
        if why:
            skipped.append((p, why))
        else:
            good.append(p)
        if progress:
            progress(i + 1, len(paths))
    return good, skipped


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
    # Probe every file (so the skipped list is the folder's, whatever the count), then a seeded sample of
    # the usable ones: deterministic, and exactly ``count`` images, decoded when a batch is read.
    usable, skipped = _probe_all(files, progress)
    if count is not None and count < len(usable):
        usable = sorted(random.Random(seed).sample(usable, count))
    _warn_skipped("calibration", folder, skipped)
    if not usable:
        raise BadInputError(
            f"The calibration folder '{folder}' has no readable images ({describe_skipped(skipped, folder)}). "
            f"Supported: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return LoadedImages(ImageList(usable, spec), usable, None, sorted(skipped), folder=folder)


def list_classes(folder: Union[str, Path]) -> List[str]:
    """Class names of an ImageFolder-layout folder (sorted subfolder names)."""
    folder = _require_folder(folder, "validation")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        hint = f" It holds {len(loose)} images directly (e.g. '{loose[0]}')." if loose else ""
        raise BadInputError(
            f"The validation folder '{folder}' is not in class-subfolder layout: it has no subfolders.{hint} "
            "Put each class's images in a subfolder named for the class's label (root/<label>/<image>): "
            "subfolders are matched to the model's labels by name (by sorted position for a model without labels)."
        )
    return classes


SHOWN_LABELS = 8  # how many folder names or labels an error names


def _names(values: Sequence[str]) -> str:
    shown = ", ".join(f"'{v}'" for v in values[:SHOWN_LABELS])
    return shown + (f" and {len(values) - SHOWN_LABELS} more" if len(values) > SHOWN_LABELS else "")


def class_indices(folders: Sequence[str], labels: Sequence[str], where: Union[str, Path], origin: str) -> Dict[str, int]:
    """folder name -> the index of the model's label of that name; a folder that is no label is a BadInputError
    naming it (and the labels it could have been)."""
    index: Dict[str, int] = {}
    for i, name in enumerate(labels):
        index.setdefault(str(name), i)
    foreign = [f for f in folders if f not in index]
    if foreign:
        raise BadInputError(
            f"The validation folder '{where}' has subfolder{'s' if len(foreign) > 1 else ''} {_names(foreign)} that "
            f"{'are' if len(foreign) > 1 else 'is'} not a label of the model. Its {len(labels)} labels (from {origin}) are "
            f"{_names([str(x) for x in labels])}. Name each subfolder after the label of the class it holds, or leave the "
            "others out: any subset of the model's classes is fine."
        )
    return {f: index[f] for f in folders}


def load_labeled(
    folder: Union[str, Path],
    spec: Preprocessing,
    limit: Optional[int] = None,
    progress: StepProgress = None,
    labels: Optional[Sequence[str]] = None,
    labels_from: str = "the model",
) -> LoadedImages:
    """An ImageFolder-layout folder (root/<class>/<image>). With ``labels`` (the model's, from ``labels_from``) each
    subfolder is the label of its name (:func:`class_indices`; a subset is fine, a stranger an error); without,
    the sorted subfolder indices (for data whose folders are the labels, e.g. the demo's training)."""
    folder = Path(folder)
    classes = list_classes(folder)
    index = class_indices(classes, labels, folder, labels_from) if labels is not None else {c: i for i, c in enumerate(classes)}
    files, targets = [], []
    for name in classes:
        for p in _files(folder / name):
            files.append(p)
            targets.append(index[name])
    # Probe every file (so the skipped list is the folder's, whatever the limit), then an even stride over the
    # usable ones (every class represented, deterministic); the images are decoded when a batch is read.
    usable, skipped = _probe_all(files, progress)
    position = {p: i for i, p in enumerate(files)}
    pairs = [(p, targets[position[p]]) for p in usable]
    if limit is not None and limit < len(pairs):
        pick = evenly_spaced(len(pairs), limit)
        pairs = [pairs[i] for i in pick]
    _warn_skipped("validation", folder, skipped)
    if not pairs:
        detail = f" ({describe_skipped(skipped, folder)})" if skipped else ""
        raise BadInputError(f"The validation folder '{folder}' has no readable images in its class subfolders{detail}.")
    kept = [p for p, _ in pairs]
    return LoadedImages(ImageList(kept, spec), kept, np.asarray([lab for _, lab in pairs]), sorted(skipped), classes, folder)
