"""An architecture name (and optional weights) -> a checkpoint, calibration images and a labeled
validation folder, all offline and deterministic, cached between runs.

Without weights the network is initialised from a seed and its BatchNorm statistics re-estimated on the
calibration images (weights.py). Without real labels, the validation crops are labeled with the float
model's own top-1, so "top-1" in the build's report is agreement with the float model; the bench says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Union

import numpy as np

from ..buildfolder.artifacts import atomic_dir, atomic_file, ensure_writable_dir, sha256_file
from ..errors import BadInputError
from ..preprocess import Preprocessing, preprocess_paths
from ..progress import Progress
from .images import GENERATOR_VERSION, cached_natural_images

log = logging.getLogger(__name__)



@dataclass
class ArchInputs:
    checkpoint: Path
    calibration: Path
    validation: Path
    arch: str
    num_classes: int
    notes: List[str] = field(default_factory=list)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resnext-deploy" / "bench"


def _predict(module: Any, data: np.ndarray, batch: int = 25) -> np.ndarray:
    from ..optional import require

    torch = require("torch", "label the validation images")
    out = []
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            out.append(module(torch.from_numpy(np.ascontiguousarray(data[i : i + batch]))).numpy())
    return np.concatenate(out)


def _is_class_folders(path: Path) -> bool:
    """A labelled cache folder: only numbered class folders of JPEG files (what label_by_model writes)."""
    return all(e.is_dir() and e.name.isdigit() and all(f.suffix == ".jpg" for f in e.iterdir()) for e in path.iterdir())


def label_by_model(module: Any, images: Path, out: Path, spec: Preprocessing, num_classes: int) -> Path:
    """Copy the images of the flat folder ``images`` into ImageFolder layout under ``out``, each in the
    folder of the class ``module`` predicts. Every class gets a folder (most stay empty) so the sorted
    folder index is the class index."""
    paths = sorted(p for p in Path(images).iterdir() if p.suffix == ".jpg")
    top1 = _predict(module, preprocess_paths(paths, spec)).argmax(1)
    width = len(str(num_classes - 1))
    with atomic_dir(out, ours=_is_class_folders) as tmp:
        for c in range(num_classes):
            (tmp / f"{c:0{width}d}").mkdir()
        for p, c in zip(paths, top1):
            shutil.copyfile(p, tmp / f"{int(c):0{width}d}" / p.name)
    log.info("labeled %d images with the float model's top-1 (%d classes used)", len(paths), len(set(top1.tolist())))
    return out


def arch_inputs(
    arch: str,
    weights: Union[str, Path, None] = None,
    cache: Union[str, Path, None] = None,
    calib_count: int = 300,
    val_count: int = 500,
    seed: int = 0,
    progress: Progress = None,
    target: str = "x86-cpu",
    *,
    allow_pickle: bool = False,
) -> ArchInputs:
    """Everything `build` needs for ``arch`` without a download (cached under ``cache``). ``allow_pickle``
    (--trust-pickle) lets ``weights`` need full unpickling (models/trust.py)."""
    from ..models.resnext import ARCHS

    if arch not in ARCHS:
        raise BadInputError(f"Unknown --arch '{arch}'. Known architectures: {', '.join(sorted(ARCHS))}.")
    if weights is not None and not Path(weights).is_file():
        raise BadInputError(f"The weights file '{weights}' does not exist. Pass a torchvision-format checkpoint, or no --weights.")
    from ..pipeline.source import preprocessing_for, resolve_model
    from ..recipes import load_recipe

    # The images are labeled exactly as the build will preprocess them: the checkpoint's own preprocessing
    # (if it records one) with the recipe's overrides, else the architecture's default.
    overrides = load_recipe(target=target).section("preprocess")
    src = resolve_model(weights, arch, None, overrides, allow_pickle=allow_pickle) if weights is not None else None
    spec = src.preprocessing if src is not None else preprocessing_for(None, ARCHS[arch].input_size, overrides)
    cache = ensure_writable_dir(Path(cache) if cache else default_cache())
    if progress:
        progress("generate natural images", 0, 2)
    calib = cached_natural_images(cache, calib_count, seed, spec.resize)
    val_flat = cached_natural_images(cache, val_count, seed + 1, spec.resize)  # held out: another seed, other crops
    if progress:
        progress("generate natural images", 2, 2)
    key = hashlib.sha256(f"{arch}|{seed}|{calib_count}|{GENERATOR_VERSION}|{spec.to_dict()}|".encode()
                         + (sha256_file(weights).encode() if weights else b"seeded")).hexdigest()[:12]
    model_dir = cache / f"{arch}-{key}"
    model_dir.mkdir(exist_ok=True)
    notes: List[str] = []
    if src is not None:
        checkpoint = Path(weights)  # type: ignore[arg-type]
        notes.append(f"Weights: the checkpoint '{checkpoint}' (sha256 {sha256_file(checkpoint)[:12]}).")
    else:
        checkpoint = model_dir / f"{arch}.pth"  # the build names the model after the file
        if not checkpoint.is_file():
            from ..optional import require
            from .weights import seeded_model

            torch = require("torch", "create the model")
            if progress:
                progress("initialise weights, re-estimate BatchNorm", 0, 1)
            images = preprocess_paths(sorted(calib.glob("*.jpg"))[:128], spec)
            module = seeded_model(arch, images, seed)
            with atomic_file(checkpoint) as tmp:
                torch.save({"state_dict": module.state_dict(), "arch": arch, "num_classes": ARCHS[arch].default_num_classes}, str(tmp))
            if progress:
                progress("initialise weights, re-estimate BatchNorm", 1, 1)
        src = resolve_model(checkpoint, arch, None, overrides, allow_pickle=allow_pickle)
        notes.append(
            f"Weights: no checkpoint was given, so {arch} was initialised from seed {seed} (each residual branch's last "
            "BatchNorm scaled to 0.2, as trained ResNets keep their branches small), its BatchNorm statistics "
            "re-estimated on 128 calibration images and its classifier head centred on their features: activation "
            "ranges look like a trained network's, so INT8 timing is representative. It is not a trained classifier."
        )
    num_classes = int(src.num_classes or ARCHS[arch].default_num_classes)
    val = model_dir / f"val-n{val_count}-s{seed + 1}"
    if not val.is_dir():
        if progress:
            progress("label validation images", 0, 1)
        label_by_model(src.module.eval(), val_flat, val, src.preprocessing, num_classes)
        if progress:
            progress("label validation images", 1, 1)
    notes.append(
        f"Images: {calib_count} calibration and {val_count} held-out validation images are seeded random crops (scale, "
        "aspect, flip, colour) of scikit-learn's two sample photos (china.jpg, flower.jpg), generated offline."
    )
    notes.append(
        "Labels: there are no real labels, so each validation image is labeled with the float PyTorch model's top-1; "
        "top-1 in the build report is therefore agreement with the float model (the float model scores 100% by construction)."
    )
    return ArchInputs(checkpoint, calib, val, arch, num_classes, notes)
