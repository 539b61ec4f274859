"""--preprocessing has one parser (preprocess.preprocessing_option): the same rule and the same error wording for a
model's intake (a Keras file) and for a stage run on a file by path (model_meta)."""

from __future__ import annotations

import json

import pytest

from resnext_deploy.errors import BadInputError
from resnext_deploy.preprocess import PRESETS, preprocessing_option, sized_preprocessing
from resnext_deploy.recipes import load_recipe

NO_SPEC = "holds no preprocessing: expected a 'preprocessing' entry"


def _file(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_presets_files_and_refusals(tmp_path):
    caffe = preprocessing_option("keras-caffe")
    assert caffe["preset"] == "keras-caffe" and caffe["color"] == "BGR" and "crop" not in caffe
    assert sized_preprocessing(caffe, 48).crop == 48 and sized_preprocessing(caffe, 48).resize == 55
    manifest = _file(tmp_path, "manifest.json", {"preprocessing": {"resize": 40, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3}})
    spec = sized_preprocessing(preprocessing_option(str(manifest)), 224)
    assert (spec.resize, spec.crop, spec.mean, spec.std) == (40, 32, (0.5,) * 3, (0.25,) * 3)
    no_size = sized_preprocessing(preprocessing_option(str(_file(tmp_path, "n.json", {"mean": [0.5] * 3, "std": [0.5] * 3}))), 64)
    assert (no_size.crop, no_size.resize) == (64, 73)
    with pytest.raises(BadInputError, match=NO_SPEC):  # a crop alone leaves mean/std to a guess
        preprocessing_option(str(_file(tmp_path, "crop.json", {"crop": 32})))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadInputError, match="is not valid JSON"):
        preprocessing_option(str(tmp_path / "bad.json"))
    with pytest.raises(BadInputError, match=f"neither a preset \\({', '.join(PRESETS)}\\) nor an existing JSON file"):
        preprocessing_option("imagenett")


@pytest.fixture
def crop_only(tmp_path):
    return _file(tmp_path, "crop.json", {"preprocessing": {"crop": 32}})


def test_stage_by_path_uses_the_one_rule(tmp_path, crop_only):
    from resnext_deploy.pipeline.commands import model_meta

    recipe = load_recipe(target="x86-cpu")
    with pytest.raises(BadInputError, match=NO_SPEC):
        model_meta(tmp_path / "model.onnx", recipe, preprocessing=str(crop_only))
    full = _file(tmp_path, "full.json", {"crop": 32, "resize": 36, "mean": [0.5] * 3, "std": [0.5] * 3})
    meta = model_meta(tmp_path / "model.onnx", recipe, preprocessing=str(full))
    assert (meta.preprocessing.crop, meta.preprocessing.resize, meta.preprocessing.mean) == (32, 36, (0.5,) * 3)


def test_keras_intake_uses_the_one_rule(crop_only, tmp_path):
    from resnext_deploy.optional import require_keras

    require_keras("load the Keras demo")
    from resnext_deploy.models.demo.keras import KERAS_DEMO
    from resnext_deploy.pipeline.source import resolve_model

    with pytest.raises(BadInputError, match=NO_SPEC):
        resolve_model(KERAS_DEMO, preprocessing=str(crop_only))
    full = _file(tmp_path, "full.json", {"mean": [0.5] * 3, "std": [0.5] * 3})
    src = resolve_model(KERAS_DEMO, preprocessing=str(full))
    assert src.preprocessing.mean == (0.5,) * 3 and src.preprocessing.crop == 32
