"""The Keras trust scan walks nested and wrapped layers (TimeDistributed, Bidirectional, nested Functional and
Sequential models) in .keras and legacy .h5 files, names each layer with where it sits, and --trust-pickle loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.errors import BadInputError
from resnext_deploy.optional import require_keras

keras = require_keras("test the Keras trust scan")
layers = keras.layers


def _wrapped(tmp_path: Path, name: str) -> Path:
    """An image model whose only Lambda sits inside TimeDistributed (over the rows of the feature map)."""
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = layers.TimeDistributed(layers.Lambda(lambda t: t * 2.0, name="double"), name="td")(x)
    out = layers.Dense(5, name="logits")(layers.GlobalAveragePooling2D()(x))
    path = tmp_path / name
    keras.Model(inp, out).save(str(path))
    return path


def _nested(tmp_path: Path, name: str) -> Path:
    """A Lambda inside a Sequential inside a Functional sub-model, and a clean Bidirectional LSTM beside it."""
    inner_in = keras.Input((16, 16, 3))
    seq = keras.Sequential([layers.Conv2D(4, 1, name="c1"), layers.Lambda(lambda t: t - 1.0, name="minus")], name="seq")
    inner = keras.Model(inner_in, seq(inner_in), name="inner")
    inp = keras.Input((16, 16, 3))
    x = layers.Reshape((16, 64))(inner(inp))
    x = layers.Bidirectional(layers.LSTM(3), name="bi")(x)
    path = tmp_path / name
    keras.Model(inp, layers.Dense(5, name="logits")(x)).save(str(path))
    return path


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_wrapped_lambda_is_named_and_refused_then_loads_with_the_opt_in(tmp_path, suffix):
    from resnext_deploy.models.keras import load_keras_model

    path = _wrapped(tmp_path, "wrapped" + suffix)
    with pytest.raises(BadInputError) as err:
        load_keras_model(path)
    assert err.value.exit_code == 2
    assert "Lambda layer 'double' (in TimeDistributed 'td')" in str(err.value) and "--trust-pickle" in str(err.value)
    loaded = load_keras_model(path, allow_pickle=True)
    assert loaded.unsafe == ["Lambda layer 'double' (in TimeDistributed 'td')"]
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    conv, dense = loaded.model.get_layer("conv"), loaded.model.get_layer("logits")
    gap = keras.ops.convert_to_numpy(conv(x)).mean(axis=(1, 2))  # the Lambda really ran: logits = Dense(2 * mean(conv))
    expected = keras.ops.convert_to_numpy(dense(2.0 * gap))
    assert np.allclose(np.asarray(loaded.model.predict(x, verbose=0)), expected, atol=1e-5)


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambdas_in_nested_models_are_named_with_their_path(tmp_path, suffix):
    from resnext_deploy.models.keras import load_keras_model

    path = _nested(tmp_path, "nested" + suffix)
    with pytest.raises(BadInputError) as err:
        load_keras_model(path)
    assert "Lambda layer 'minus' (in Functional 'inner' > Sequential 'seq')" in str(err.value)
    assert "Bidirectional" not in str(err.value)  # a Keras LSTM in a wrapper is not code from the file
    loaded = load_keras_model(path, allow_pickle=True)
    assert loaded.unsafe == ["Lambda layer 'minus' (in Functional 'inner' > Sequential 'seq')"]
    assert loaded.num_classes == 5


def test_cli_check_of_a_wrapped_lambda_h5_exits_2_and_passes_with_trust(tmp_path):
    path = _wrapped(tmp_path, "wrapped.h5")
    res = CliRunner().invoke(cli, ["-q", "check", "--model", str(path)])
    assert res.exit_code == 2, res.output
    assert "Lambda layer 'double' (in TimeDistributed 'td')" in res.output and "--trust-pickle" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["-q", "check", "--model", str(path), "--trust-pickle"])
    assert res.exit_code == 0, res.output


def _legacy_config(wrapper_cfg: dict) -> dict:
    """A legacy (TF-Keras 2) HDF5 model config: classes named without their module."""
    return {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}},
        wrapper_cfg,
        {"class_name": "Dense", "config": {"name": "logits"}},
    ]}}


def test_legacy_custom_layers_inside_wrappers_are_named():
    from resnext_deploy.models.keras import legacy_layer_known, unsafe_objects

    bi = {"class_name": "Bidirectional", "config": {
        "name": "bi", "layer": {"class_name": "LSTM", "config": {"name": "fwd"}},
        "backward_layer": {"class_name": "MyBackwardRNN", "config": {"name": "bwd"}}}}
    td = {"class_name": "TimeDistributed", "config": {"name": "td", "layer": {
        "class_name": "Sequential", "config": {"name": "s", "layers": [{"class_name": "FancyBlock", "config": {"name": "f"}}]}}}}
    known = legacy_layer_known(keras)
    assert unsafe_objects(_legacy_config(bi), known) == ["custom object MyBackwardRNN ('bwd') (in Bidirectional 'bi')"]
    assert unsafe_objects(_legacy_config(td), known) == [
        "custom object FancyBlock ('f') (in TimeDistributed 'td' > Sequential 's')"]
    # initializers, regularizers and dtype policies are not layers: no false alarm for their class names
    dense = {"class_name": "Dense", "config": {"name": "d", "kernel_initializer": {"class_name": "GlorotUniform", "config": {}}}}
    assert unsafe_objects(_legacy_config(dense), known) == []
