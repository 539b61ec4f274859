"""The sidecar ``<artifact>.json`` a stage run alone writes beside its output: the artifact record, the
preprocessing and the labels, so the next stage run alone knows how the model sees images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import BadInputError
from ..preprocess import Preprocessing
from .artifacts import Artifact, atomic_file

PathLike = Union[str, Path]


def sidecar_path(path: PathLike) -> Path:
    return Path(str(path) + ".json")


def write_sidecar(path: PathLike, artifact: Artifact, preprocessing: Preprocessing, labels: Optional[List[str]], **extra: Any) -> Path:
    meta = {"artifact": artifact.to_dict(), "preprocessing": preprocessing.to_dict(), "labels": labels}
    meta.update(extra)
    with atomic_file(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return sidecar_path(path)


def read_sidecar(path: PathLike) -> Dict[str, Any]:
    """The sidecar of an artifact, or {} if it has none (an ONNX from elsewhere)."""
    p = sidecar_path(path)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"The sidecar '{p}' is not valid JSON ({exc}); delete it or re-run the stage that wrote it.") from exc
