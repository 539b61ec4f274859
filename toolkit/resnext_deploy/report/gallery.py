"""The images INT8 gets wrong: per artifact, the validation images whose top-1 differs from the float reference.

Computed during evaluation from the per-image logits (the reference's are computed once, pipeline/steps.py);
the thumbnails (the preprocessed crop, de-normalised, as a small PNG) are made once per image at the end of
the build and stored in report.json, so the HTML can be rebuilt from report.json alone.

Order: the most confident flips first, i.e. by the float reference's softmax margin (top-1 probability minus
the runner-up's), then by the artifact's own margin: an image the float model was sure about and the artifact
moved to another class says most about the artifact.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..evaluation.evaluate import softmax_margin

#: the recipe's evaluation.gallery when a report predates it
DEFAULT_CAP = 24
#: thumbnails larger than this (pixels, longer side) are scaled down
THUMBNAIL_SIDE = 96
ORDER = "most confident flips first: by the float reference's softmax margin, then the artifact's"


def disagreements(reference: np.ndarray, logits: np.ndarray, cap: int) -> Dict[str, Any]:
    """{"count", "cap", "images": [{"index", "reference": {"class", "margin"}, "artifact": {...}}]} (at most cap)."""
    ref_top, top = np.argmax(reference, 1), np.argmax(logits, 1)
    ref_margin, margin = softmax_margin(reference), softmax_margin(logits)
    idx = np.flatnonzero(ref_top != top)
    order = idx[np.lexsort((-margin[idx], -ref_margin[idx]))]  # last key is the primary one
    images = [{"index": int(i),
               "reference": {"class": int(ref_top[i]), "margin": float(ref_margin[i])},
               "artifact": {"class": int(top[i]), "margin": float(margin[i])}} for i in order[:max(0, cap)]]
    return {"count": int(len(idx)), "cap": int(cap), "images": images}


def per_class_top1(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Dict[str, List[Any]]:
    """Top-1 per class of the reference and of the artifact: {"images", "reference", "artifact"} (None: no image)."""
    n = int(max(reference.shape[1], int(labels.max()) + 1 if len(labels) else 0))
    count = np.bincount(labels, minlength=n)
    hits_ref = np.bincount(labels[np.argmax(reference, 1) == labels], minlength=n)
    hits = np.bincount(labels[np.argmax(logits, 1) == labels], minlength=n)
    share = lambda h: [float(h[c] / count[c]) if count[c] else None for c in range(n)]  # noqa: E731
    return {"images": [int(c) for c in count], "reference": share(hits_ref), "artifact": share(hits)}


def compare_images(reference: np.ndarray, logits: np.ndarray, labels: Optional[np.ndarray], cap: int) -> Dict[str, Any]:
    """What a result row carries for the report: its disagreements and (with labels) the per-class top-1."""
    out: Dict[str, Any] = {"disagreements": disagreements(reference, logits, cap)}
    if labels is not None and len(labels):
        out["per_class_top1"] = per_class_top1(reference, logits, np.asarray(labels, dtype=np.int64))
    return out


def thumbnail_png(chw: np.ndarray, mean: Sequence[float], std: Sequence[float], side: int = THUMBNAIL_SIDE) -> str:
    """A preprocessed image (CHW, normalised) as the crop the model saw: de-normalised, base64 PNG."""
    from PIL import Image

    rgb = np.clip(chw.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0.0, 1.0)
    img = Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
    if max(img.size) > side:
        img.thumbnail((side, side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_section(results: List[Dict[str, Any]], data: Any, paths: Sequence[Path], mean: Sequence[float],
                    std: Sequence[float], class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """report.json's ``gallery``: one thumbnail per image any artifact's gallery shows, keyed by path; each
    result row's ``disagreements`` images get their file path and class names (in place)."""
    thumbs: Dict[str, str] = {}
    name = lambda c: class_names[c] if class_names and 0 <= c < len(class_names) else str(c)  # noqa: E731
    for r in results:
        for img in (r.get("disagreements") or {}).get("images", []):
            path = str(paths[img["index"]])
            img["path"] = path
            for side in ("reference", "artifact"):
                img[side]["label"] = name(img[side]["class"])
            if path not in thumbs:
                thumbs[path] = thumbnail_png(np.asarray(data[img["index"]:img["index"] + 1], np.float32)[0], mean, std)
    return {"order": ORDER, "thumbnail_side": THUMBNAIL_SIDE, "thumbnails": thumbs}
