"""The offline demo: scikit-learn's bundled digits as 32x32 images, and a small ResNeXt trained on them.

Everything here works without a network connection: ``sklearn.datasets.load_digits()`` ships inside
scikit-learn (1797 8x8 images, values 0..16, classes 0..9).

* :func:`write_digits_dataset` makes a fixed, seeded, stratified split (500 labeled validation images,
  1297 training images, of which 256 are also the calibration set), renders each image to a 32x32
  8-bit grayscale PNG with :func:`render_digit` and writes the calibration and validation splits in
  ImageFolder layout, plus ``split.json``.
* :func:`train_demo` trains ``resnext_demo`` on the training images (rendered by the same
  :func:`render_digit`, preprocessed by the same :func:`~resnext_deploy.preprocess.preprocess_image`
  with :data:`DEMO_PREPROCESSING`), evaluates on the validation PNGs and writes the checkpoint and
  ``demo.json``.

The shipped result lives in :data:`DEMO_DIR` (the repo's ``calibration/digits``; the wheel carries no data:
installed from one, ``$RESNEXT_DEPLOY_DATA/digits`` or ``~/.cache/resnext-deploy/data/digits``, see resources.py). torch and scikit-learn are imported only inside the functions
that need them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ...buildfolder.artifacts import sha256_file
from ...errors import BadInputError
from ...optional import require
from ...preprocess import Preprocessing, preprocess_image
from ...data.resources import data_dir as shipped_data_dir

log = logging.getLogger(__name__)

DEMO_ARCH = "resnext_demo"
DEMO_LABELS: List[str] = [str(i) for i in range(10)]
DEMO_NUM_CLASSES = len(DEMO_LABELS)
DEMO_SIZE = 32
VAL_COUNT = 500
CALIB_COUNT = 256
# One resampling filter for every rendered image (PNG files and training images alike).
RENDER_FILTER = Image.BICUBIC

# Mean and std of the 1297 training images of the seed-0 split (rendered by render_digit, scaled to
# [0, 1], over all pixels; grayscale -> RGB so the three channels are equal), rounded to 4 decimals.
# Recompute with compute_demo_mean_std(seed=0): mean 0.309202..., std 0.348689...
DEMO_MEAN = 0.3092
DEMO_STD = 0.3487
DEMO_PREPROCESSING = Preprocessing(
    resize=DEMO_SIZE,
    crop=DEMO_SIZE,
    mean=(DEMO_MEAN, DEMO_MEAN, DEMO_MEAN),
    std=(DEMO_STD, DEMO_STD, DEMO_STD),
)

DEFAULT_EPOCHS = 20


DEMO_DIR: Path = shipped_data_dir() / "digits"
DEMO_CHECKPOINT: Path = DEMO_DIR / "resnext_demo.pt"
DEMO_CALIB: Path = DEMO_DIR / "calib"
DEMO_VAL: Path = DEMO_DIR / "val"
DEMO_INFO: Path = DEMO_DIR / "demo.json"

_ID_PNG = re.compile(r"^\d{4}\.png$")


# ---------------------------------------------------------------------------------------------- data


def _load_digits():
    datasets = require("sklearn.datasets", "load scikit-learn's bundled digits")
    return datasets.load_digits()


def render_digit(image8: np.ndarray) -> Image.Image:
    """One 8x8 digits image (values 0..16) -> 32x32 8-bit grayscale Pillow image.

    Values are scaled to 0..255 (rounded), then upscaled with a bicubic filter. The PNG files and
    the training images both come from here, so their pixels are identical.
    """
    arr = np.asarray(image8, dtype=np.float64)
    if arr.shape != (8, 8):
        raise BadInputError(f"A digits image is 8x8, got shape {arr.shape}.")
    u8 = np.clip(np.rint(arr * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(u8, mode="L").resize((DEMO_SIZE, DEMO_SIZE), RENDER_FILTER)


def image_name(index: int) -> str:
    """File name of the digits image at ``index`` into load_digits(): e.g. 0042.png."""
    return f"{index:04d}.png"


def make_split(seed: int = 0) -> Dict[str, Any]:
    """The fixed stratified split: {"seed", "val", "calib", "train"}, sorted indices into load_digits().

    val: 500 held-out labeled images; train: the other 1297; calib: 256 of train (stratified).
    """
    model_selection = require("sklearn.model_selection", "split the digits")
    y = _load_digits().target
    idx = np.arange(len(y))
    train, val = model_selection.train_test_split(idx, test_size=VAL_COUNT, stratify=y, random_state=seed)
    _, calib = model_selection.train_test_split(
        train, test_size=CALIB_COUNT, stratify=y[train], random_state=seed
    )
    return {
        "seed": int(seed),
        "val": sorted(int(i) for i in val),
        "calib": sorted(int(i) for i in calib),
        "train": sorted(int(i) for i in train),
    }


def _write_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_split_folder(folder: Path, indices: Sequence[int], images: np.ndarray, target: np.ndarray) -> Dict[str, int]:
    """Write ImageFolder layout folder/<class>/<id>.png; remove stale <id>.png files of an older split."""
    wanted: Dict[str, set] = {label: set() for label in DEMO_LABELS}
    for i in indices:
        wanted[str(int(target[i]))].add(image_name(i))
    for label, names in wanted.items():
        class_dir = folder / label
        class_dir.mkdir(parents=True, exist_ok=True)
        for old in class_dir.iterdir():
            if old.is_file() and _ID_PNG.match(old.name) and old.name not in names:
                old.unlink()
    for i in indices:
        _write_png(render_digit(images[i]), folder / str(int(target[i])) / image_name(i))
    return {label: len(names) for label, names in wanted.items()}


def write_digits_dataset(out_dir: Path, seed: int = 0) -> Dict[str, Any]:
    """Write the demo's calibration and validation splits as 32x32 grayscale PNGs, and split.json.

    Layout: ``out_dir/calib/<class>/<id>.png``, ``out_dir/val/<class>/<id>.png`` (id = index into
    load_digits(), 4 digits), ``out_dir/split.json``. Training images are not written: train_demo
    renders them from scikit-learn with the same function. Deterministic: same bytes every run.
    Returns the counts per split and per class.
    """
    out_dir = Path(out_dir)
    digits = _load_digits()
    split = make_split(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = {
        name: _write_split_folder(out_dir / name, split[name], digits.images, digits.target)
        for name in ("calib", "val")
    }
    tmp = out_dir / "split.json.tmp"
    # One line per key: readable, diffable, and byte-identical for the same seed.
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in split.items()) + "\n}\n"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_dir / "split.json")
    counts = {name: len(split[name]) for name in ("train", "val", "calib")}
    log.info("demo data: wrote %d calibration and %d validation images to %s (seed %d, %d training images)",
             counts["calib"], counts["val"], out_dir, seed, counts["train"])
    return {"out_dir": str(out_dir), "seed": int(seed), "counts": counts, "per_class": per_class}


def read_split(data_dir: Path) -> Dict[str, Any]:
    """The split.json written by write_digits_dataset."""
    path = Path(data_dir) / "split.json"
    if not path.is_file():
        raise BadInputError(
            f"'{path}' does not exist. Write the demo data first (resnext-deploy demo train, or "
            "resnext_deploy.models.demo.digits.write_digits_dataset(folder))."
        )
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        return {"seed": int(split["seed"]), **{k: [int(i) for i in split[k]] for k in ("val", "calib", "train")}}
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"'{path}' is not a valid demo split file ({exc}). Write the demo data again.") from exc


def render_training_images(seed: int = 0, indices: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Training images rendered and preprocessed exactly as for deployment: {"x": NCHW float32, "y": int64}."""
    digits = _load_digits()
    if indices is None:
        indices = make_split(seed)["train"]
    x = np.stack([preprocess_image(render_digit(digits.images[i]), DEMO_PREPROCESSING) for i in indices])
    y = np.asarray([int(digits.target[i]) for i in indices], dtype=np.int64)
    return {"x": x, "y": y}


def compute_demo_mean_std(seed: int = 0) -> Dict[str, float]:
    """Mean and std over all pixels of the training images in [0, 1] (what DEMO_MEAN/DEMO_STD hold)."""
    digits = _load_digits()
    arr = np.stack(
        [np.asarray(render_digit(digits.images[i]), dtype=np.float64) / 255.0 for i in make_split(seed)["train"]]
    )
    return {"mean": float(arr.mean()), "std": float(arr.std())}


# -------------------------------------------------------------------------------------------- training




def train_demo(
    data_dir: Path,
    out_path: Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Train resnext_demo on the digits training split and save the checkpoint and demo.json.

    ``data_dir`` is a folder written by :func:`write_digits_dataset` (its split.json names the
    training images; its val/ folder is the validation set). Training images are rendered with
    :func:`render_digit` and preprocessed with :data:`DEMO_PREPROCESSING`; augmentation is a random
    shift of up to 2 pixels (filled with background). The checkpoint is written atomically to
    ``out_path``; ``demo.json`` (metadata and the checkpoint's sha256) next to it. ``limit`` trains on
    the first ``limit`` training images only (for smoke tests). Returns the metrics.
    """
    torch = require("torch", "train the demo model")
    from ..resnext import create
    from ..runner import eval_top1, save_checkpoint
    from ...data import datasets

    data_dir, out_path = Path(data_dir), Path(out_path)
    if epochs < 1:
        raise BadInputError(f"epochs must be at least 1, got {epochs}.")
    split = read_split(data_dir)
    started = time.perf_counter()

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(seed)

    train_idx = split["train"][:limit] if limit else split["train"]
    train = render_training_images(split["seed"], train_idx)
    x_train, y_train = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    val = datasets.load_labeled(data_dir / "val", DEMO_PREPROCESSING)
    classes = datasets.list_classes(data_dir / "val")
    if classes != DEMO_LABELS:
        raise BadInputError(f"The demo validation folder '{data_dir / 'val'}' must have classes 0..9, has {classes}.")
    log.info("demo training: %d training images, %d validation images, %d epochs, seed %d",
             len(x_train), len(val.data), epochs, seed)

    model = create(DEMO_ARCH, DEMO_NUM_CLASSES)
    batch_size = 64
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    # Background (pixel value 0) after normalization: what a shifted-in border holds.
    background = float((0.0 - DEMO_MEAN) / DEMO_STD)
    shift, size = 2, DEMO_SIZE
    padded = torch.nn.functional.pad(x_train, (shift, shift, shift, shift), value=background)

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
            xb = padded[idx, :, dy : dy + size, dx : dx + size]
            loss = loss_fn(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        log.info("demo training: epoch %d/%d loss %.4f", epoch + 1, epochs, total / seen)

    model.eval()
    val_top1 = eval_top1(model, val.data, val.labels, 250)
    train_top1 = eval_top1(model, train["x"], train["y"], 250)
    seconds = time.perf_counter() - started
    log.info("demo training: val top-1 %.4f, train top-1 %.4f, %.1f s", val_top1, train_top1, seconds)

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    checkpoint = {
        "arch": DEMO_ARCH,
        "num_classes": DEMO_NUM_CLASSES,
        "state_dict": state,
        "labels": list(DEMO_LABELS),
        "preprocessing": DEMO_PREPROCESSING.to_dict(),
        "val_top1": val_top1,
        "seed": seed,
        "epochs": epochs,
    }
    sha = save_checkpoint(checkpoint, out_path, "demo.json", train_images=len(x_train), val_images=int(len(val.data)))["sha256"]

    return {
        "val_top1": val_top1,
        "train_top1": train_top1,
        "epochs": epochs,
        "seed": seed,
        "seconds": seconds,
        "train_images": len(x_train),
        "val_images": int(len(val.data)),
        "checkpoint": str(out_path),
        "checkpoint_bytes": out_path.stat().st_size,
        "sha256": sha,
    }


def demo_model_info(demo_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Metadata of the demo model (arch, num_classes, labels, preprocessing, val_top1, seed, epochs, sha256).

    Reads ``demo.json`` (no torch needed); if only the checkpoint is there, reads it with torch.
    """
    demo_dir = Path(demo_dir) if demo_dir is not None else DEMO_DIR
    info_path, ckpt_path = demo_dir / "demo.json", demo_dir / "resnext_demo.pt"
    if info_path.is_file():
        try:
            return json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BadInputError(f"'{info_path}' is not valid JSON ({exc}). Retrain the demo: resnext-deploy demo train.") from exc
    if ckpt_path.is_file():
        from ..trust import torch_load

        ckpt = torch_load(ckpt_path)
        info = {k: v for k, v in ckpt.items() if k != "state_dict"}
        info.update({"checkpoint": ckpt_path.name, "sha256": sha256_file(ckpt_path)})
        return info
    raise BadInputError(
        f"The demo model is not in '{demo_dir}' (no demo.json or resnext_demo.pt). "
        "Make it with: resnext-deploy demo train."
    )
