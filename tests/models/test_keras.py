"""Keras intake: .keras/.h5 through Keras 3 on the torch backend, the trust opt-in, SavedModels, preprocessing presets."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnext_deploy.cli import cli
from resnext_deploy.errors import BadInputError, MissingDependencyError, ModelCheckError
from resnext_deploy.optional import require_keras
from resnext_deploy.preprocess import PRESETS, preprocess_image, preset

keras = require_keras("test the Keras intake")
layers = keras.layers


def _small(tmp_path: Path, name: str = "small.keras", lambda_layer: bool = False) -> Path:
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    if lambda_layer:
        x = layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = layers.Conv2D(16, 3, padding="same", groups=4, name="grouped")(x)
    out = layers.Dense(5, name="logits")(layers.GlobalAveragePooling2D()(x))
    path = tmp_path / name
    keras.Model(inp, out).save(str(path))
    return path


def test_keras_runs_on_the_torch_backend():
    import torch

    assert keras.backend.backend() == "torch"
    inp = keras.Input((4,))
    assert isinstance(keras.Model(inp, layers.Dense(2)(inp)), torch.nn.Module)
    assert int(keras.__version__.split(".")[0]) >= 3


def test_keras_file_loads_with_its_input_and_classes(tmp_path):
    from resnext_deploy.models.keras import load_keras_model

    loaded = load_keras_model(_small(tmp_path))
    assert loaded.input_shape == (16, 16, 3) and loaded.num_classes == 5 and loaded.source == "keras"
    assert loaded.preprocessing is None and loaded.unsafe == []


def test_legacy_h5_loads_too(tmp_path):
    from resnext_deploy.models.keras import load_keras_model

    path = tmp_path / "small.h5"
    keras.models.load_model(str(_small(tmp_path))).save(str(path))
    loaded = load_keras_model(path)
    assert loaded.source == "h5" and loaded.num_classes == 5


def test_lambda_layer_is_refused_without_the_opt_in_and_loads_with_it(tmp_path):
    from resnext_deploy.models.keras import load_keras_model

    path = _small(tmp_path, "lam.keras", lambda_layer=True)
    with pytest.raises(BadInputError) as err:
        load_keras_model(path)
    msg = str(err.value)
    assert "Lambda layer 'double'" in msg and "safe_mode=False" in msg
    assert "pass --trust-pickle (allow_pickle=True in Python)" in msg
    loaded = load_keras_model(path, allow_pickle=True)
    assert loaded.unsafe == ["Lambda layer 'double'"]
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    assert np.asarray(loaded.model.predict(x, verbose=0)).shape == (2, 5)


def test_cli_check_refuses_a_lambda_model_with_exit_2_and_passes_with_trust(tmp_path):
    path = _small(tmp_path, "lam.keras", lambda_layer=True)
    res = CliRunner().invoke(cli, ["-q", "check", "--model", str(path)])
    assert res.exit_code == 2, res.output
    assert "Lambda layer 'double'" in res.output and "--trust-pickle" in res.output
    res = CliRunner().invoke(cli, ["-q", "check", "--model", str(path), "--trust-pickle"])
    assert res.exit_code == 0, res.output
    assert "Architecture check passed" in res.output


def test_custom_object_is_named(tmp_path):
    from resnext_deploy.models.keras import unsafe_objects

    config = {"module": "keras", "class_name": "Functional", "config": {"layers": [
        {"module": "keras.layers", "class_name": "Conv2D", "config": {"name": "c"}},
        {"module": "my_company.layers", "class_name": "FancyBlock", "config": {"name": "fancy_1"}},
    ]}}
    assert unsafe_objects(config) == ["custom object FancyBlock from module 'my_company.layers' ('fancy_1')"]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here")
def test_saved_model_without_tensorflow_says_what_to_install(tmp_path):
    from resnext_deploy.models.keras import load_keras_model

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    (folder / "variables").mkdir()
    with pytest.raises(MissingDependencyError) as err:
        load_keras_model(folder)
    assert err.value.exit_code == 5 and "pip install tensorflow tf2onnx" in str(err.value)
    for cmd in (["check", "--model", str(folder)], ["build", "--model", str(folder), "--preprocessing", "keras-tf"]):
        res = CliRunner().invoke(cli, ["-q", *cmd])
        assert res.exit_code == 5, res.output
        assert "TensorFlow SavedModel" in res.output and "pip install tensorflow tf2onnx" in res.output


def test_groups_that_do_not_divide_are_named_before_keras_builds(tmp_path):
    """A config Keras cannot build (edited by hand or by another tool): the layer and the numbers are named."""
    from resnext_deploy.models.keras import load_keras_model

    src = _small(tmp_path)
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "config.json":
                cfg = json.loads(data)
                for layer in cfg["config"]["layers"]:
                    if layer["config"].get("name") == "grouped":
                        layer["config"]["groups"] = 3
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(ModelCheckError) as err:
        load_keras_model(bad)
    msg = str(err.value)
    assert "'grouped'" in msg and "filters=16 is not divisible by groups=3" in msg
    assert "16 input channels" in msg and "groups=3" in msg


def test_a_keras_model_without_a_hint_needs_preprocessing(tmp_path):
    from resnext_deploy.pipeline.source import resolve_model

    path = _small(tmp_path)
    with pytest.raises(BadInputError, match="--preprocessing") as err:
        resolve_model(path)
    assert "keras-caffe" in str(err.value)
    src = resolve_model(path, preprocessing="keras-caffe")
    assert src.kind == "keras" and src.preprocessing.crop == 16 and src.preprocessing.preset == "keras-caffe"
    assert src.preprocessing.color == "BGR"


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_presets_equal_keras_applications_preprocess_input(mode):
    """Our preset on an image == keras.applications' preprocess_input(mode=...) on the same pixels."""
    from keras.src.applications.imagenet_utils import preprocess_input

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB")
    spec = preset(f"keras-{mode}", crop=24, resize=24)
    ours = preprocess_image(img, spec).transpose(1, 2, 0)
    theirs = np.asarray(preprocess_input(np.asarray(img, dtype=np.float32)[None], mode=mode))[0]
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, float(np.abs(theirs).max()))
    assert spec.to_dict()["preset"] == f"keras-{mode}" and set(PRESETS) >= {"keras-caffe", "keras-tf", "keras-torch"}


def test_a_preset_sizes_itself_from_an_onnx_input(tmp_path):
    """`quantize/evaluate --preprocessing keras-caffe` on an ONNX by path: the preset's normalization, the ONNX's size."""
    import onnx
    from onnx import TensorProto, helper

    from resnext_deploy.pipeline.commands import model_meta
    from resnext_deploy.recipes import load_recipe

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 20, 20])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 20, 20])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    meta = model_meta(path, load_recipe(target="x86-cpu"), preprocessing="keras-caffe")
    spec = meta.preprocessing
    assert (spec.crop, spec.color, spec.preset) == (20, "BGR", "keras-caffe")
    assert spec.mean == PRESETS["keras-caffe"][0] and spec.std == PRESETS["keras-caffe"][1]
