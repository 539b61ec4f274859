"""Stage `evaluate`: accuracy, agreement with the float model, logit error, latency, throughput, size.

Every artifact sees the same preprocessed validation images; the float reference's logits are computed
once and every other artifact is compared with them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..backends.base import Runner
from ..host.load import snapshot as load_snapshot

log = logging.getLogger(__name__)



@dataclass
class TimingConfig:
    warmup: int = 5
    iterations: int = 50
    batch_size: int = 8

    @classmethod
    def from_recipe(cls, evaluation: Dict[str, Any]) -> "TimingConfig":
        return cls(int(evaluation["warmup"]), int(evaluation["iterations"]), int(evaluation["batch_size"]))


@dataclass
class Metrics:
    artifact: str
    backend: str
    precision: str
    images: int
    top1: float
    top5: float
    agreement: float  # top-1 agreement with the float reference
    agreement_confident: float  # the same on the images whose reference softmax margin >= CONFIDENT_MARGIN
    confident_images: int
    max_abs_logit_diff: float
    mean_cosine: float
    min_cosine: float
    latency_ms: Dict[str, float] = field(default_factory=dict)  # batch 1: p50/p90/p99/mean
    throughput_ips: float = 0.0
    throughput_batch: int = 0
    first_inference_ms: float = 0.0
    size_bytes: int = 0
    details: Dict[str, Any] = field(default_factory=dict)
    #: /proc/loadavg before and after timing (host.load.snapshot): was the machine busy?
    load: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def predict_all(runner: Runner, data: np.ndarray, batch_size: int, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    from ..preprocess import (
        batches,  # here, not at the top: on a device `compile --bundle` runs without Pillow
    )

    out = []
    for sl in batches(len(data), batch_size):
        out.append(runner.infer(data[sl]))
        if progress:
            progress(sl.stop, len(data))
    return np.concatenate(out).astype(np.float32)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


#: An image is "confident" when the reference's softmax puts at least this much more probability on its top-1
#: class than on the runner-up. Below it the float model itself is close to a coin flip between two classes, and
#: an INT8 flip there says little about the INT8 model (README: "Default gates").
CONFIDENT_MARGIN = 0.2


def softmax_margin(logits: np.ndarray) -> np.ndarray:
    """Per image: softmax probability of the top-1 class minus that of the second."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.concatenate([np.zeros_like(p), p], axis=1)
    return top2[:, 1] - top2[:, 0]


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> Dict[str, Any]:
    """Agreement of top-1 (on all images, and on those the reference is confident about) and the logit error."""
    same = np.argmax(logits, 1) == np.argmax(reference, 1)
    confident = softmax_margin(reference) >= CONFIDENT_MARGIN
    diff = np.abs(logits - reference)
    num = np.sum(logits * reference, axis=1)
    den = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    cos = num / np.maximum(den, 1e-12)
    return {
        "agreement": float(np.mean(same)),
        # no confident image: nothing disagrees there (the count says how much the number rests on)
        "agreement_confident": float(np.mean(same[confident])) if confident.any() else 1.0,
        "confident_images": int(confident.sum()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }


def measure_latency(runner: Runner, sample: np.ndarray, cfg: TimingConfig) -> Dict[str, Any]:
    """Batch-1 latency percentiles after warm-up, first-inference time, and throughput at cfg.batch_size."""
    first_batch = np.asarray(sample[: cfg.batch_size], dtype=np.float32)  # a lazy image list decodes only these
    one = np.ascontiguousarray(first_batch[:1])
    before = load_snapshot()
    t0 = time.perf_counter()
    runner.infer(one)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(cfg.warmup):
        runner.infer(one)
    times = []
    for _ in range(cfg.iterations):
        t0 = time.perf_counter()
        runner.infer(one)
        times.append((time.perf_counter() - t0) * 1e3)
    big = np.ascontiguousarray(np.resize(first_batch, (cfg.batch_size,) + first_batch.shape[1:]))
    runner.infer(big)  # warm-up at this shape
    n = max(3, cfg.iterations // 4)
    t0 = time.perf_counter()
    for _ in range(n):
        runner.infer(big)
    elapsed = time.perf_counter() - t0
    after = load_snapshot()
    arr = np.asarray(times)
    return {
        "latency_ms": {
            "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)),
            "mean": float(arr.mean()),
        },
        "first_inference_ms": first,
        "throughput_ips": n * cfg.batch_size / elapsed,
        "throughput_batch": cfg.batch_size,
        "load": {"before": before, "after": after},
    }


def evaluate_runner(
    name: str,
    runner: Runner,
    data: Any,  # an array, or a lazy image list (pipeline/datasets.ImageList) decoded a batch at a time
    labels: np.ndarray,
    reference: Optional[np.ndarray],
    cfg: TimingConfig,
    precision: str = "fp32",
    size_bytes: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    logits: Optional[np.ndarray] = None,
    provenance: Optional[Dict[str, Any]] = None,
) -> "tuple[Metrics, np.ndarray]":
    """All metrics of one loaded artifact; returns them and the logits (the reference's, when it is one).

    ``logits`` computed elsewhere (sharded, e.g. on Ray workers) are taken as they are; latency and throughput
    are always measured here, with ``runner``, in this process. ``provenance`` says where each number came
    from (``details["measured"]`` in the report).
    """
    if logits is None:
        logits = predict_all(runner, data, cfg.batch_size, progress)
    cmp = compare_logits(logits, logits if reference is None else reference)
    timing = measure_latency(runner, data, cfg)
    metrics = Metrics(
        artifact=name,
        backend=runner.backend,
        precision=precision,
        images=int(len(data)),
        top1=topk_accuracy(logits, labels, 1),
        top5=topk_accuracy(logits, labels, 5),
        size_bytes=int(size_bytes),
        details=dict(runner.details, **({"measured": provenance} if provenance else {})),
        **cmp,
        **timing,
    )
    log.info("evaluate %s: top1 %.4f agreement %.4f p50 %.2f ms", name, metrics.top1, metrics.agreement, metrics.latency_ms["p50"])
    return metrics, logits
