"""The model format contract, for every registered format: detect from bytes (also under a wrong name), scan refuses
what would run code, load, check, export with its comparison, and the format's own runner agrees with the ONNX.

Each format gets a small real model of its kind (a tiny ResNeXt from models/resnext.py in every PyTorch form, the
Keras demo of calibration/digits/, an ONNX exported from the tiny ResNeXt, the shipped demo). A format registered
with ``formats.register`` must add its sample to ``SAMPLES``: the first test fails until it does. A format this
machine cannot run (SavedModel without TensorFlow) is skipped with its reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resnext_deploy.errors import BadInputError  # noqa: E402
from resnext_deploy.models import formats  # noqa: E402
from resnext_deploy.models.formats import ExportSettings, LoadRequest  # noqa: E402

ARCH, CLASSES = "resnext_demo", 10


def _tiny(tmp: Path) -> "torch.nn.Module":
    from resnext_deploy.models.resnext import create

    torch.manual_seed(0)
    return create(ARCH, CLASSES).eval()


def _checkpoint(tmp: Path) -> Path:
    path = tmp / "tiny.pt"
    torch.save({"state_dict": _tiny(tmp).state_dict(), "arch": ARCH, "num_classes": CLASSES}, path)
    return path


def _safetensors(tmp: Path) -> Path:
    from safetensors.torch import save_file

    path = tmp / "tiny.safetensors"
    sd = {k: v.contiguous() for k, v in _tiny(tmp).state_dict().items()}
    save_file(sd, str(path), metadata={"arch": ARCH, "num_classes": str(CLASSES)})
    return path


def _torchscript(tmp: Path) -> Path:
    path = tmp / "tiny.ts"
    traced = torch.jit.trace(_tiny(tmp), torch.zeros(1, 3, 32, 32))
    torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps({"arch": ARCH, "num_classes": CLASSES})})
    return path


def _onnx(tmp: Path) -> Path:
    from resnext_deploy.models.export.torch_onnx import onnx_from_torch

    path = tmp / "tiny.onnx"
    sample = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    onnx_from_torch(_tiny(tmp), path, sample, log_path=tmp / "export.log")
    return path


def _keras(tmp: Path) -> Path:
    from resnext_deploy.models.demo.keras import KERAS_DEMO

    return KERAS_DEMO


def _saved_model(tmp: Path) -> Path:
    """A conv + pooling + dense tf.Module saved with its serving signature, in plain TensorFlow ops. Keras is imported
    on torch first (the keras format's backend): importing TensorFlow imports Keras, which would otherwise take
    TensorFlow's backend for the whole process."""
    from resnext_deploy.optional import require_keras

    require_keras("keep Keras on the torch backend in this process")
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = tf.Variable(rng.standard_normal((3, 3, 3, 8)).astype(np.float32) * 0.3)
            self.bias = tf.Variable(rng.standard_normal(8).astype(np.float32) * 0.1)
            self.dense = tf.Variable(rng.standard_normal((8, CLASSES)).astype(np.float32) * 0.3)

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, image):
            x = tf.nn.relu(tf.nn.conv2d(image, self.conv, 1, "SAME") + self.bias)
            return {"logits": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.dense)}

    path = tmp / "tiny_saved_model"
    module = Tiny()
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    return path


def _unsafe_checkpoint(tmp: Path) -> Path:
    """A checkpoint that asks for os.system when unpickled (never called here: scan reads the pickle statically)."""
    path = tmp / "unsafe.pt"
    torch.save({"state_dict": _tiny(tmp).state_dict(), "hook": os.system}, path)
    return path


def _unsafe_keras(tmp: Path) -> Path:
    """A Keras file with a Lambda layer (its bytecode would run at load)."""
    from resnext_deploy.optional import require_keras

    keras = require_keras("make the test's Lambda model")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="times_two")(inputs))
    path = tmp / "lambda.keras"
    model.save(str(path))
    return path


class Sample:
    """A format's small real model: how to make it, a name it should not be recognised by, and an unsafe file."""

    def __init__(self, make: Optional[Callable[[Path], Path]], misnamed: str = "model.bin",
                 unsafe: Optional[Callable[[Path], Path]] = None) -> None:
        self.make, self.misnamed, self.unsafe = make, misnamed, unsafe


SAMPLES: Dict[str, Sample] = {
    "torch": Sample(_checkpoint, "model.onnx", _unsafe_checkpoint),
    "safetensors": Sample(_safetensors, "model.pt"),
    "torchscript": Sample(_torchscript, "model.onnx"),
    "keras": Sample(_keras, "model.bin", _unsafe_keras),
    "onnx": Sample(_onnx, "model.pt"),
    "saved_model": Sample(_saved_model, ""),  # a folder: no name to get wrong
    "demo": Sample(None),  # no --model: never detected from a file
}


def _runnable(name: str) -> None:
    fmt = formats.get(name)
    missing = [m for m in fmt.packages if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"format {name} cannot run here: {', '.join(missing)} not installed (the CI job with its extra runs it)")


@pytest.mark.parametrize("name", formats.names())
def test_every_format_declares_what_the_toolkit_needs(name):
    fmt = formats.get(name)
    assert name in SAMPLES, f"format {name} has no sample in SAMPLES: add a small real model of its kind"
    assert fmt.name == name and fmt.kind and fmt.help and fmt.packages
    assert fmt.help in formats.help_text()


@pytest.mark.parametrize("name", [n for n in formats.names() if SAMPLES.get(n) and SAMPLES[n].make])
def test_detect_from_bytes_even_under_another_name(name, tmp_path):
    _runnable(name)
    path = SAMPLES[name].make(tmp_path)
    assert formats.detect(path).name == name
    if SAMPLES[name].misnamed:
        other = tmp_path / "misnamed" / SAMPLES[name].misnamed
        other.parent.mkdir()
        shutil.copyfile(path, other)
        assert formats.detect(other).name == name, f"{name} renamed to {other.name}"


@pytest.mark.parametrize("name", [n for n in formats.names() if SAMPLES.get(n) and SAMPLES[n].unsafe])
def test_scan_refuses_a_file_that_would_run_code(name, tmp_path):
    _runnable(name)
    fmt = formats.get(name)
    bad = SAMPLES[name].unsafe(tmp_path)
    assert formats.detect(bad) is fmt
    with pytest.raises(BadInputError, match="--trust-pickle"):
        fmt.scan(bad, allow_pickle=False)
    with pytest.raises(BadInputError, match="--trust-pickle"):
        formats.resolve(bad, LoadRequest(preprocessing="imagenet"))
    fmt.scan(bad, allow_pickle=True)  # the opt-in: scan lets it through (the loader warns when it loads)
    fmt.scan(SAMPLES[name].make(tmp_path), allow_pickle=False)  # its safe sample passes


@pytest.mark.parametrize("name", [n for n in formats.names() if n in SAMPLES])
def test_load_check_export_and_the_runner_agrees(name, tmp_path):
    """load, the architecture check, export with its comparison, and the format's runner against the ONNX."""
    from resnext_deploy.models.demo.digits import DEMO_CALIB
    from resnext_deploy.models.export.torch_onnx import run_onnx
    from resnext_deploy.data.datasets import load_calibration

    _runnable(name)
    make = SAMPLES[name].make
    src = formats.resolve(make(tmp_path) if make else None, LoadRequest(preprocessing="imagenet"))
    assert src.format is formats.get(name) and src.num_classes == CLASSES
    checked = src.format.check(src)
    assert checked.record["passed"] and checked.summary
    sample = np.asarray(load_calibration(DEMO_CALIB, src.preprocessing, 4, 0).data)
    out = tmp_path / "out" / "model-fp32.onnx"
    out.parent.mkdir()
    exported = src.format.export(src, out, sample, ExportSettings(log_path=tmp_path / "export.log"))
    assert exported.artifact.precision == "fp32" and out.is_file()
    onnx_logits = run_onnx(out, sample)
    assert onnx_logits.shape == (len(sample), CLASSES) and np.isfinite(onnx_logits).all()
    if src.format.compared_with:  # the export compared the ONNX with the framework, and says by how much
        diff = exported.artifact.settings[f"max_abs_diff_vs_{src.format.compared_with}"]
        assert 0 <= diff <= ExportSettings().tolerance
    runner = src.format.runner(src)
    if runner is None:
        assert not src.format.runner_row
        return
    with runner:
        own = runner.infer(sample)
    assert src.format.runner_row
    np.testing.assert_allclose(own, onnx_logits, atol=1e-3, rtol=0)
