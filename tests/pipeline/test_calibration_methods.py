"""Calibration methods do what they say: min-max, percentile and entropy give different activation scales.

ORT's entropy calibrator defaulted to 128 histogram bins and 128 quantized bins, so its threshold search had one
candidate and wrote the min-max model byte for byte. quantize.py runs it with TensorRT's 2048 / 128.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING
from resnext_deploy.data.datasets import load_calibration
from resnext_deploy.pipeline.quantize import ENTROPY_QUANTIZED_BINS, HISTOGRAM_BINS, qdq_from_onnx

METHODS = ("minmax", "percentile", "entropy")


def activation_scales(path) -> dict:
    """{tensor: scale} of every QuantizeLinear on an activation (weights are initializers, not Q inputs here)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(np.asarray(inits[n.input[1]]).reshape(-1)[0])
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.fixture(scope="module")
def method_models(demo_build, tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    fp32 = demo_build.out_dir / "onnx" / "model-fp32.onnx"
    cal = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 64, 0)
    # entropy through a cache file (ORT's threshold search is slow): test_entropy_ranges_through_a_cache reuses it
    return {m: qdq_from_onnx(fp32, d / f"{m}.onnx", cal.data, "uint8", calibration={"method": m},
                             calibration_cache=d / "entropy.json" if m == "entropy" else None) for m in METHODS}


def test_methods_give_different_scales(method_models):
    scales = {m: activation_scales(Path(a.path)) for m, a in method_models.items()}
    tensors = sorted(scales["minmax"])
    assert len(tensors) >= 20 and all(sorted(s) == tensors for s in scales.values())
    arr = {m: np.array([scales[m][t] for t in tensors]) for m in METHODS}
    for a, b in (("minmax", "percentile"), ("minmax", "entropy"), ("percentile", "entropy")):
        differ = np.abs(arr[a] - arr[b]) > 0.01 * np.maximum(arr[a], arr[b])
        assert differ.mean() >= 0.5, (a, b, differ.mean())
    # Both histogram methods clip the tail of what min-max keeps: never a wider range, mostly a narrower one.
    for m in ("percentile", "entropy"):
        assert np.all(arr[m] <= arr["minmax"] * (1 + 1e-5)), m
        assert np.mean(arr[m] < 0.95 * arr["minmax"]) >= 0.5, m
    assert len({Path(a.path).read_bytes() for a in method_models.values()}) == 3


def test_settings_record_the_histogram(method_models):
    ent, pct, mm = (method_models[m].settings for m in ("entropy", "percentile", "minmax"))
    assert ent["calibration_method"] == "entropy"
    assert ent["histogram_bins"] == HISTOGRAM_BINS == 2048 and ent["quantized_bins"] == ENTROPY_QUANTIZED_BINS == 128
    assert pct["histogram_bins"] == 2048 and pct["percentile"] == 99.999 and "quantized_bins" not in pct
    assert "histogram_bins" not in mm


def test_entropy_ranges_through_a_cache_are_the_same(demo_build, method_models, tmp_path):
    """The build's variants share one calibration through ORT's cache file: a later variant reads the ranges (here
    from one image: the cache, not the images, decides) and writes the same bytes; the percentile model, calibrated
    with no cache given, left no temporary ranges file behind."""
    fp32 = demo_build.out_dir / "onnx" / "model-fp32.onnx"
    first = Path(method_models["entropy"].path)
    cache = first.parent / "entropy.json"
    assert cache.is_file()
    cal = load_calibration(DEMO_CALIB, DEMO_PREPROCESSING, 1, 0)
    second = qdq_from_onnx(fp32, tmp_path / "b.onnx", cal.data, "uint8", calibration={"method": "entropy"}, calibration_cache=cache)
    assert first.read_bytes() == Path(second.path).read_bytes()
    assert not [p.name for p in first.parent.iterdir() if "ranges" in p.name or p.name.startswith(".")]
