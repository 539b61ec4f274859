"""The seeds' bug, Keras edition: Add broadcasts a 1-channel shortcut; subclassed blocks fail only when called."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.errors import ModelCheckError
from resnext_deploy.models.demo.keras import keras_resnext
from resnext_deploy.optional import require_keras
from resnext_deploy.pipeline.check_keras import check_keras_model, check_keras_or_raise

keras = require_keras("test the Keras check")
layers = keras.layers

MAIN, SHORTCUT = "(1, 32, 32, 32)", "(1, 32, 32, 1)"


@pytest.fixture(scope="module")
def broadcasting(tmp_path_factory):
    """The seeds' block with conv_shortcut=False straight on a grayscale input: Keras builds, saves and runs it."""
    path = tmp_path_factory.mktemp("keras-bug") / "broadcast.keras"
    keras_resnext(input_shape=(32, 32, 1), broken_shortcut=True).save(str(path))
    return path


def test_the_broken_model_really_runs_in_keras(broadcasting):
    import numpy as np

    model = keras.models.load_model(str(broadcasting))
    assert np.asarray(model.predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0)).shape == (1, 10)


def test_python_check_names_the_add_layer_and_both_shapes(broadcasting):
    report = check_keras_model(keras.models.load_model(str(broadcasting)))
    assert not report.passed and len(report.findings) == 1
    f = report.findings[0]
    assert (f.kind, f.module, f.module_type) == ("residual_add", "stage1_block1_add", "Add")
    assert f.shapes == [(1, 32, 32, 32), (1, 32, 32, 1)]
    assert MAIN in f.message and SHORTCUT in f.message and "broadcasts" in f.message


@pytest.mark.parametrize("command", [["check"], ["build", "--preprocessing", "keras-tf", "--target", "x86-cpu"]])
def test_check_and_build_exit_2_naming_layer_and_shapes(broadcasting, command, tmp_path):
    args = ["-q", command[0], "--model", str(broadcasting), *command[1:]]
    if command[0] == "build":
        args += ["--out", str(tmp_path / "out"), "--calib", "calibration/digits/calib", "--val", "calibration/digits/val"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "stage1_block1_add" in res.output and MAIN in res.output and SHORTCUT in res.output
    assert not (tmp_path / "out").exists()


def test_the_sound_demo_architecture_passes():
    report = check_keras_or_raise(keras_resnext())
    assert report.passed and report.complete
    assert report.residual_adds == 4 and report.grouped_convs == 4 and report.blocks_checked == 4


class _Block(keras.layers.Layer):
    """A subclassed ResNeXt block whose identity shortcut is wrong when the input is not filters * 2 wide."""

    def __init__(self, filters, **kw):
        super().__init__(**kw)
        self.reduce = layers.Conv2D(filters, 1, use_bias=False)
        self.grouped = layers.Conv2D(filters, 3, padding="same", groups=8, use_bias=False)
        self.expand = layers.Conv2D(filters * 2, 1, use_bias=False)

    def call(self, x):
        return keras.ops.relu(self.expand(self.grouped(self.reduce(x))) + x)


class _Net(keras.Model):
    def __init__(self, stem=64, filters=64, groups_conv=None):
        super().__init__(name="subclassed_net")
        self.stem = layers.Conv2D(stem, 3, padding="same")
        self.block = _Block(filters, name="block1")
        self.extra = groups_conv
        self.head = layers.Dense(10)

    def call(self, x):
        x = self.block(self.stem(x))
        if self.extra is not None:
            x = self.extra(x)
        return self.head(keras.ops.mean(x, axis=(1, 2)))


def test_subclassed_channel_mismatch_is_caught_by_the_python_check():
    with pytest.raises(ModelCheckError) as err:
        check_keras_or_raise(_Net(), input_shape=(1, 16, 16, 3))
    msg = str(err.value)
    assert "'block1' (_Block)" in msg and "(1, 16, 16, 128)" in msg and "(1, 16, 16, 64)" in msg
    assert "128 vs 64 channels" in msg


def test_subclassed_model_without_input_shape_is_asked_for_it():
    from resnext_deploy.errors import BadInputError

    with pytest.raises(BadInputError, match=r"input_shape=\(1, H, W, C\)"):
        check_keras_model(_Net())


def test_groups_that_do_not_divide_the_input_channels_are_named():
    net = _Net(stem=64, filters=32, groups_conv=layers.Conv2D(48, 3, groups=24, name="odd_groups"))
    report = check_keras_model(net, input_shape=(1, 16, 16, 3))
    f = report.findings[0]
    assert f.kind == "conv_groups" and f.module == "odd_groups"
    assert "groups=24" in f.message and "64 channels" in f.message
