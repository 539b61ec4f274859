"""TensorFlow SavedModels for real: the Keras demo exported by Keras 3 (``model.export(format="tf_saved_model")``,
endpoint ``serve``) and by ``tf.saved_model.save`` (``serving_default``), converted by tf2onnx, compared with
TensorFlow on real images, and built for x86-cpu with the float top-1 of the Keras model.

These run where the ``[tensorflow]`` extra is installed (CI's TensorFlow job: ``pytest -m tensorflow`` in its own
venv, requirements/tensorflow.lock); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.models.demo.digits import DEMO_CALIB, DEMO_PREPROCESSING, DEMO_VAL
from resnext_deploy.models.demo.keras import KERAS_DEMO

HAVE_TF = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2onnx"))
pytestmark = [pytest.mark.tensorflow,
              pytest.mark.skipif(not HAVE_TF, reason="needs TensorFlow and tf2onnx: pip install 'resnext-deploy[tensorflow]' "
                                 "(CI's TensorFlow job runs these: pytest -m tensorflow)")]

#: run by a separate Python with Keras on the TensorFlow backend, as a TensorFlow user exports
EXPORT = """
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import keras, tensorflow as tf
model = keras.saving.load_model(sys.argv[1], compile=False)
model.export(sys.argv[2], format="tf_saved_model")
tf.saved_model.save(model, sys.argv[3])
print(keras.__version__, tf.__version__)
"""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """(Keras-exported folder, tf.saved_model.save folder, versions): the Keras demo, each with its sidecar."""
    root = tmp_path_factory.mktemp("savedmodel")
    keras_dir, classic_dir = root / "keras_export", root / "classic"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(KERAS_DEMO), str(keras_dir), str(classic_dir)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in (keras_dir, classic_dir):
        shutil.copyfile(str(KERAS_DEMO) + ".json", str(folder) + ".json")
    return keras_dir, classic_dir, done.stdout.split()[-2:]


@pytest.fixture(scope="module")
def val_batch():
    from resnext_deploy.data.datasets import load_labeled

    data = load_labeled(DEMO_VAL, DEMO_PREPROCESSING)
    return np.asarray(data.data), np.asarray(data.labels)


@pytest.fixture(scope="module")
def keras_logits(val_batch):
    from resnext_deploy.models.keras import keras_predict, load_keras_model

    return keras_predict(load_keras_model(KERAS_DEMO).model, val_batch[0])


@pytest.mark.parametrize("which, signature, input_name", [(0, "serve", "image"), (1, "serving_default", "inputs")])
def test_the_serving_signature_and_the_sidecar_are_read(saved_models, which, signature, input_name):
    from resnext_deploy.models.savedmodel import load_saved_model

    loaded = load_saved_model(saved_models[which])
    assert loaded.signature.name == signature and loaded.signature.input_name == input_name
    assert loaded.signature.input_hwc == (32, 32, 3) and loaded.signature.num_classes == 10
    assert loaded.labels == [str(i) for i in range(10)] and loaded.preprocessing == DEMO_PREPROCESSING.to_dict()


@pytest.mark.parametrize("which", [0, 1])
def test_onnx_matches_tensorflow_and_keras_on_real_images(saved_models, val_batch, keras_logits, tmp_path, which):
    import onnx

    from resnext_deploy.models.savedmodel import load_saved_model, tensorflow_predict
    from resnext_deploy.models.export.torch_onnx import run_onnx
    from resnext_deploy.models.export.savedmodel_onnx import onnx_from_savedmodel

    loaded = load_saved_model(saved_models[which])
    batch = val_batch[0]
    res = onnx_from_savedmodel(loaded, tmp_path / "m.onnx", batch[:8], tolerance=1e-3)
    assert res.max_abs_diff <= 1e-3 and res.artifact.settings["source"] == "saved_model"
    tf_logits, onnx_logits = tensorflow_predict(loaded, batch), run_onnx(tmp_path / "m.onnx", batch)
    assert np.abs(tf_logits - onnx_logits).max() <= 1e-3
    # TensorFlow computes what Keras on torch computes, so all three agree on every validation image
    assert np.abs(tf_logits - keras_logits).max() <= 1e-3
    assert (onnx_logits.argmax(1) == keras_logits.argmax(1)).all()
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    # the 15 convs (grouped ones with group=8), BatchNorm folded, no layout transposes left, NCHW input
    assert ops.count("Conv") == 15 and "Transpose" not in ops and "Mul" not in ops
    groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert groups.count(8) == 4
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    assert res.nodes_after <= res.nodes_before
    # converting again names the nodes the same (the fallback re-exports and excludes nodes by name)
    onnx_from_savedmodel(loaded, tmp_path / "again.onnx", batch[:8], tolerance=1e-3)
    assert [n.name for n in onnx.load(str(tmp_path / "again.onnx")).graph.node] == [n.name for n in proto.graph.node]


def test_cli_check_converts_both_kinds(saved_models):
    for folder in saved_models[:2]:
        res = CliRunner().invoke(cli, ["-q", "check", "--model", str(folder), "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output[res.output.index("{"):])
        assert out["passed"] and out["export"]["max_abs_diff"] <= 1e-3
        assert out["signature"]["signature"] in ("serve", "serving_default")


def test_a_signature_that_is_not_one_image_in_is_refused_with_exit_2(tmp_path):
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None, 8], tf.float32)])
        def __call__(self, a, b):
            return {"out": a + b}

    module = Two()
    tf.saved_model.save(module, str(tmp_path / "two"), signatures=module.__call__)
    res = CliRunner().invoke(cli, ["-q", "check", "--model", str(tmp_path / "two")])
    assert res.exit_code == 2, res.output
    assert "signature 'serving_default' takes ['a', 'b']" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_keras_exported_savedmodel_builds_for_x86_with_the_keras_top1(saved_models, val_batch, keras_logits, tmp_path):
    from resnext_deploy.pipeline.build import build

    result = build(model=saved_models[0], target="x86-cpu", out=tmp_path / "x86", calib=DEMO_CALIB, val=DEMO_VAL)
    assert result.passed, result.gate.summary()
    rows = {r["artifact"]: r for r in result.report["results"]}
    keras_top1 = float((keras_logits.argmax(1) == val_batch[1]).mean())
    assert rows["onnx-fp32"]["top1"] == pytest.approx(keras_top1, abs=1e-9)
    assert rows["tensorflow-fp32"]["top1"] == pytest.approx(keras_top1, abs=1e-9)
    assert rows["tensorflow-fp32"]["agreement"] == 1.0
    exp = result.report["export"]
    assert exp["source"] == "saved_model" and exp["compared_with"] == "tensorflow" and exp["signature"] == "serve"
    assert exp["max_abs_diff"] <= exp["tolerance"]
    model = result.report["model"]
    assert model["format"] == "saved_model" and model["kind"] == "tensorflow" and model["labels"] == [str(i) for i in range(10)]
    assert len(model["source_sha256"]) == 64


def test_cli_export_of_a_folder_without_sidecar_takes_preprocessing(saved_models, tmp_path):
    """A classic tf.saved_model.save folder with no sidecar: refused without preprocessing (exit 2), exported with
    --preprocessing (the Keras demo's sidecar as the JSON file)."""
    folder = tmp_path / "bare"
    shutil.copytree(saved_models[1], folder)
    res = CliRunner().invoke(cli, ["-q", "export", "--model", str(folder), "--calib", str(DEMO_CALIB), "--out",
                                   str(tmp_path / "bare.onnx")])
    assert res.exit_code == 2 and "--preprocessing" in res.output, res.output
    assert not (tmp_path / "bare.onnx").exists()
    res = CliRunner().invoke(cli, ["-q", "export", "--model", str(folder), "--calib", str(DEMO_CALIB), "--out",
                                   str(tmp_path / "bare.onnx"), "--preprocessing", str(KERAS_DEMO) + ".json"])
    assert res.exit_code == 0, res.output
    assert "max |onnx - tensorflow|" in res.output and (tmp_path / "bare.onnx").is_file()
