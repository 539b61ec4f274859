"""Intake: what the user brought (any registered model format, or nothing = the demo) and its data folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BadInputError
from ..models import formats
from ..models.formats import LoadRequest, ModelSource, preprocessing_for
from ..recipes import Recipe

__all__ = ["ModelSource", "data_folders", "preprocessing_for", "resolve_model"]


def resolve_model(
    model: Union[str, Path, None],
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    preprocess_overrides: Optional[Dict[str, Any]] = None,
    preprocessing: Optional[str] = None,
    allow_pickle: bool = False,
    need_preprocessing: bool = True,
) -> ModelSource:
    """Turn --model/--arch/--num-classes into a ModelSource (None = the shipped demo), through the format registry.

    ``preprocessing`` (--preprocessing: a preset name or a JSON file) and ``allow_pickle`` (--trust-pickle) are
    used by formats that carry no preprocessing of their own (Keras; a sidecar <file>.json may give it).
    """
    request = LoadRequest(arch, num_classes, dict(preprocess_overrides or {}), preprocessing, allow_pickle, need_preprocessing)
    return formats.resolve(model, request)


_FOLDER_OPTIONS = {
    "calib": ("--calib", "calibration.folder", "a folder of calibration images"),
    "val": ("--val", "evaluation.folder", "an ImageFolder folder of labeled validation images"),
}


def data_folders(
    src: Union[ModelSource, bool],
    recipe: Recipe,
    calib: Optional[Path] = None,
    val: Optional[Path] = None,
    *,
    need: Sequence[str] = ("calib", "val"),
    recorded: Optional[Mapping[str, Optional[str]]] = None,
    purpose: str = "Building your own model",
) -> Tuple[Optional[Path], Optional[Path]]:
    """The one place data folders default: --calib/--val, else the recipe's folders, else ``recorded`` (the folders
    the build that made an artifact used, for a stage run on it by path), else the demo's (only for the demo
    model, ``src`` being its ModelSource or True). A folder in ``need`` that none of these gives is a BadInputError
    naming the options that supply it; one not needed may come back None.
    """
    is_demo = src.is_demo if isinstance(src, ModelSource) else bool(src)
    recorded = recorded or {}
    sections = {"calib": recipe.section("calibration")["folder"], "val": recipe.section("evaluation")["folder"]}
    given = {"calib": calib, "val": val}
    found: Dict[str, Optional[Path]] = {}
    for key in ("calib", "val"):
        folder = given[key] or sections[key] or recorded.get(key)
        if folder is None and is_demo:
            from ..models.demo.digits import DEMO_CALIB, DEMO_VAL

            folder = DEMO_CALIB if key == "calib" else DEMO_VAL
        found[key] = Path(folder) if folder else None
    missing = [key for key in need if found[key] is None]
    if missing:
        opts = " and ".join(_FOLDER_OPTIONS[k][0] for k in missing)
        what = " and ".join(_FOLDER_OPTIONS[k][2] for k in missing)
        keys = " and ".join(_FOLDER_OPTIONS[k][1] for k in missing)
        raise BadInputError(
            f"{purpose} needs {opts}: {what} (see calibration/README.md), or set {keys} in the recipe. "
            "The demo's images are the default only for the demo model."
        )
    return found["calib"], found["val"]
