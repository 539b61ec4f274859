"""Check a model: the static facts, then one forward pass through the adapter for its framework."""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from ...errors import BadInputError, ModelCheckError
from ...optional import require, require_keras
from .engine import CheckEngine
from .findings import CheckReport
from .keras import (
    KerasWatch,
    check_keras_weights,
    conv_spec,
    is_conv,
    keras_input_shape,
    sublayers,
)
from .torch_eager import EagerWatch
from .torch_module import check_convs, check_weights, resolve_input_shape
from .torchscript import ScriptWatch


def check_torch_module(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Check a ``torch.nn.Module`` (eager, or TorchScript: a ``ScriptModule`` is watched op by op) with one forward
    pass on a seeded input of ``input_shape`` (default ``(1, 3, S, S)``, S the model's ``spec.input_size`` or 224).
    Never raises for problems in the model: they are the report's findings."""
    torch = require("torch", "check the model architecture")
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(
            f"The architecture check needs a torch.nn.Module, got a {type(model).__name__}. Load the model "
            "first (resnext_deploy.models.loading.load_torch_model)."
        )
    engine = CheckEngine(resolve_input_shape(model, input_shape))
    check_weights(torch, model, engine)
    flagged = check_convs(torch, model, engine)
    watch_cls = ScriptWatch if isinstance(model, torch.jit.ScriptModule) else EagerWatch
    watch_cls(torch, model, engine, flagged).run(engine.report.input_shape)
    return engine.finish()


def check_torchscript(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Check a TorchScript module (scripted or traced); see :func:`check_torch_module`."""
    torch = require("torch", "check the model architecture")
    if not isinstance(model, torch.jit.ScriptModule):
        raise BadInputError(f"check_torchscript needs a torch.jit.ScriptModule, got a {type(model).__name__}.")
    return check_torch_module(model, input_shape)


def check_keras_model(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Check an in-memory ``keras.Model`` (functional, Sequential or subclassed) on the torch backend with one
    forward pass on a seeded NHWC input of ``input_shape`` (default: the model's declared input, batch 1).
    Never raises for problems in the model: they are the report's findings."""
    keras = require_keras("check Keras models")
    torch = require("torch", "check Keras models")
    if not isinstance(model, keras.Model):
        raise BadInputError(f"check_keras_model needs a keras.Model, got a {type(model).__name__}.")
    engine = CheckEngine(keras_input_shape(model, input_shape))
    for layer in sublayers(model, recursive=True):
        if is_conv(layer):
            engine.conv_layer(layer.name, type(layer).__name__, conv_spec(layer))
    if engine.report.findings:  # Keras would refuse to build or run it: the static finding says why
        engine.report.dynamic_check = False
        return engine.finish()
    check_keras_weights(torch, model, engine)
    KerasWatch(torch, keras, model, engine).run(engine.report.input_shape)
    return engine.finish()


def check_model(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Check any supported model: a ``keras.Model`` through :func:`check_keras_model`, anything else through
    :func:`check_torch_module` (which refuses what is not a ``torch.nn.Module``)."""
    keras = sys.modules.get("keras")  # a Keras model exists only if keras was imported
    if keras is not None and isinstance(model, getattr(keras, "Model", ())):
        return check_keras_model(model, input_shape)
    return check_torch_module(model, input_shape)


def check_or_raise(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """:func:`check_model`; raise ModelCheckError (exit 2) listing every finding, or return the clean report."""
    report = check_model(model, input_shape)
    if not report.passed:
        raise ModelCheckError(report.error_text())
    return report


def check_keras_or_raise(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """:func:`check_keras_model`, raising ModelCheckError (exit 2) with every finding."""
    report = check_keras_model(model, input_shape)
    if not report.passed:
        raise ModelCheckError(report.error_text("The Keras model"))
    return report
