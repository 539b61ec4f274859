"""Which class a validation folder holds: the model's labels matched by folder name, and the float model's sanity check.

A validation set is ``root/<label>/<image>``. Each subfolder is the class whose label it is named for: the model's
own labels (from the checkpoint, or what its build recorded in the manifest or a sidecar), matched by name, so a
subset of the classes gives the right top-1. A model that carries no labels (a bare state_dict with
--num-classes, an ONNX from elsewhere) gets the sorted folder names as its labels, and the build records them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BadInputError
from ..data.datasets import SHOWN_LABELS, list_classes

log = logging.getLogger(__name__)

#: what ``labels_from`` says when the labels are the validation folders' sorted names
FROM_FOLDERS = "the validation folders (sorted names; the model carries no labels)"


@dataclass
class ValidationLabels:
    """The labels the logits' columns mean (index -> name) and where they came from."""

    labels: List[str]
    origin: str  # "the model", "build manifest <path>", "sidecar <path>", FROM_FOLDERS

    @property
    def from_folders(self) -> bool:
        return self.origin == FROM_FOLDERS


def validation_labels(
    folder: Union[str, Path],
    model_labels: Optional[Sequence[str]],
    model_origin: str = "the model",
    recorded: Optional[Tuple[Sequence[str], str]] = None,
) -> ValidationLabels:
    """The labels a validation folder is matched against: the model's own, else ``recorded`` (labels, where: what a
    build of this model recorded), else the sorted folder names, said in one warning (the build records them)."""
    if model_labels:
        return ValidationLabels([str(x) for x in model_labels], model_origin)
    if recorded and recorded[0]:
        return ValidationLabels([str(x) for x in recorded[0]], recorded[1])
    folders = list_classes(folder)
    shown = ", ".join(f"{i}={name}" for i, name in enumerate(folders[:SHOWN_LABELS])) + (", ..." if len(folders) > SHOWN_LABELS else "")
    log.warning(
        "The model carries no labels: its classes are taken from the sorted names of the %d validation folders in %s "
        "(%s), as class 0, 1, ... of its outputs. They are recorded, and later stages and builds of this model are "
        "checked against them.", len(folders), folder, shown,
    )
    return ValidationLabels(folders, FROM_FOLDERS)


def labels_in_manifest(manifest: Dict[str, Any]) -> Optional[List[str]]:
    """The labels a build recorded (its model's own, or the folder names it took for a model without any)."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    labels = manifest.get("labels") or (model or {}).get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) and labels else None


def previous_build_labels(out_dir: Union[str, Path], model_sha256: str) -> Optional[Tuple[List[str], str]]:
    """(labels, where) recorded by an earlier build of the same model file (same sha256) in ``out_dir`` or a sibling
    of it (build/<model>/<target>/ holds one build per target), or None."""
    from ..buildfolder.manifest import read_manifest

    out_dir = Path(out_dir)
    try:
        siblings = sorted(p for p in out_dir.parent.iterdir() if p.is_dir() and p != out_dir) if out_dir.parent.is_dir() else []
    except OSError:  # an unreadable parent: nothing recorded that we can see
        siblings = []
    for d in [out_dir] + siblings:
        try:
            if not (d / "manifest.json").is_file():
                continue
        except OSError:  # a sibling we may not look into is not a build of ours
            continue
        try:
            manifest = read_manifest(d)
        except BadInputError:  # not a build of ours (or another schema version): nothing recorded there
            continue
        inputs = manifest.get("inputs") or {}
        if (inputs.get("model") or {}).get("sha256") != model_sha256:
            continue
        labels = labels_in_manifest(manifest)
        if labels:
            return labels, f"the earlier build of this model, {d / 'manifest.json'}"
    return None


def chance_top1(classes_present: int, outputs: int) -> float:
    """The top-1 of a guess: 1 / the number of classes in the validation set; with one class present, 1 / the
    number of model outputs (a uniform guess among them), since any top-1 is at most 1 / 1."""
    if classes_present > 1:
        return 1.0 / classes_present
    return 1.0 / max(outputs, 1)


def require_above_chance(top1: float, labels: np.ndarray, outputs: int, folder: Union[str, Path], origin: str) -> None:
    """BadInputError when the float reference's top-1 is at or below :func:`chance_top1`: then the validation labels
    do not match the model, and every accuracy number and gate after it would be meaningless."""
    present = int(np.unique(np.asarray(labels)).size)
    chance = chance_top1(present, outputs)
    if top1 <= chance + 1e-12:
        raise BadInputError(
            f"The validation labels do not match the model: the float model's top-1 on '{folder}' is {top1 * 100:.2f} %, "
            f"at or below chance ({chance * 100:.2f} % = 1/{present if present > 1 else outputs}, with {present} "
            f"class{'es' if present != 1 else ''} in the folder). The subfolders were matched by name to the labels from "
            f"{origin}. Check that each subfolder holds the images of the class it is named for, and that this is the "
            "model's validation data; no accuracy or gate is reported on it."
        )
