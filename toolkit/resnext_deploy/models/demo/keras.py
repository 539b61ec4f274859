"""The Keras demo: a small ResNeXt written the way the seeds write it (Keras functional API, NHWC, Conv2D +
BatchNormalization(epsilon=1.001e-5) + ReLU, grouped 3x3 conv, Add), trained in seconds on the shipped digits.

The same data and preprocessing as the PyTorch demo (demo.py): the training split rendered by
:func:`~resnext_deploy.models.demo.digits.render_training_images`, validated on ``calibration/digits/val``. The result ships as
``calibration/digits/resnext_keras_demo.keras`` with its sidecar ``resnext_keras_demo.keras.json`` (preprocessing,
labels, accuracy), so ``resnext-deploy build --model calibration/digits/resnext_keras_demo.keras`` needs nothing else.
Remake it with ``resnext-deploy demo keras`` (seeded).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ...buildfolder.artifacts import sha256_file
from .digits import DEMO_DIR, DEMO_LABELS, DEMO_PREPROCESSING, DEMO_SIZE, read_split, render_training_images
from ...errors import BadInputError
from ...optional import require_keras

log = logging.getLogger(__name__)

KERAS_DEMO: Path = DEMO_DIR / "resnext_keras_demo.keras"
DEFAULT_EPOCHS = 7
# Keras's default 0.99 leaves the moving statistics mostly at their initial values after the few hundred steps the
# demo trains (measured: chance accuracy in inference mode); 0.9 is PyTorch's default (momentum 0.1 there).
BN_MOMENTUM = 0.9
#: the two stages' bottleneck widths (block output = 2x): small, so the demo trains in a minute on a CPU
WIDTHS = (16, 32)


def block(x: Any, filters: int, strides: int = 1, groups: int = 8, conv_shortcut: bool = True, name: str = "block") -> Any:
    """The seeds' ResNeXt block (filters -> grouped 3x3 -> filters * 2), with its projection shortcut when asked."""
    keras = require_keras("build the Keras demo")
    layers = keras.layers
    if conv_shortcut:
        shortcut = layers.Conv2D(filters * 2, 1, strides=strides, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=1.001e-5, momentum=BN_MOMENTUM, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x  # the identity: right only when x already has filters * 2 channels (the seeds' question)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, momentum=BN_MOMENTUM, name=f"{name}_1_bn")(x)
    x = layers.ReLU(name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", groups=groups, use_bias=False, name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, momentum=BN_MOMENTUM, name=f"{name}_2_bn")(x)
    x = layers.ReLU(name=f"{name}_2_relu")(x)
    x = layers.Conv2D(filters * 2, 1, use_bias=False, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, momentum=BN_MOMENTUM, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def keras_resnext(input_shape: tuple = (DEMO_SIZE, DEMO_SIZE, 3), classes: int = 10, broken_shortcut: bool = False) -> Any:
    """The demo's architecture: stem, two stages of two blocks (groups 8), global pooling, dense logits.

    ``broken_shortcut`` reproduces the seeds' bug on purpose (an identity shortcut straight from the input into a
    block that widens the channels): Keras builds it when the input has 1 channel, because Add broadcasts it.
    """
    keras = require_keras("build the Keras demo")
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    if broken_shortcut:
        x = block(inputs, WIDTHS[0], conv_shortcut=False, name="stage1_block1")
    else:
        x = layers.Conv2D(WIDTHS[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = layers.BatchNormalization(epsilon=1.001e-5, momentum=BN_MOMENTUM, name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = block(x, WIDTHS[0], conv_shortcut=True, name="stage1_block1")
    x = block(x, WIDTHS[0], conv_shortcut=False, name="stage1_block2")
    x = block(x, WIDTHS[1], strides=2, conv_shortcut=True, name="stage2_block1")
    x = block(x, WIDTHS[1], conv_shortcut=False, name="stage2_block2")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnext_keras_demo")


def train_keras_demo(out_path: Optional[Path] = None, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                     data_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Train the Keras demo on the digits' training split; write the .keras file and its sidecar (temp + rename)."""
    keras = require_keras("train the Keras demo")
    from ...data import datasets

    if epochs < 1:
        raise BadInputError(f"epochs must be at least 1, got {epochs}.")
    data_dir = Path(data_dir) if data_dir else DEMO_DIR
    out_path = Path(out_path) if out_path else KERAS_DEMO
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    split = read_split(data_dir)
    train = render_training_images(split["seed"], split["train"])
    x_train, y_train = train["x"].transpose(0, 2, 3, 1).copy(), train["y"]
    val = datasets.load_labeled(data_dir / "val", DEMO_PREPROCESSING)
    x_val = np.asarray(val.data).transpose(0, 2, 3, 1).copy()
    model = keras_resnext()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    val_top1 = float((np.asarray(model.predict(x_val, batch_size=250, verbose=0)).argmax(1) == val.labels).mean())
    seconds = time.perf_counter() - started
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".tmp.keras")
    shipped = keras_resnext()  # the same weights without the optimizer's state (half the file)
    shipped.set_weights(model.get_weights())
    shipped.save(str(tmp))
    os.replace(tmp, out_path)
    info = {"preprocessing": DEMO_PREPROCESSING.to_dict(), "labels": list(DEMO_LABELS), "val_top1": val_top1,
            "seed": seed, "epochs": epochs, "train_images": len(x_train), "keras_version": keras.__version__,
            "keras_backend": "torch", "file": out_path.name, "sha256": sha256_file(out_path)}
    side = Path(str(out_path) + ".json")
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(side_tmp, side)
    log.info("keras demo: val top-1 %.4f after %d epochs, %.1f s", val_top1, epochs, seconds)
    return {**info, "seconds": seconds, "bytes": out_path.stat().st_size, "path": str(out_path)}
