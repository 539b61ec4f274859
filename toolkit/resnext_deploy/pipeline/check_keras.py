"""The architecture check for Keras models: one forward pass on the torch backend, every add and conv watched.

On the torch backend a Keras layer's ops are torch ops, so a ``TorchFunctionMode`` sees each addition and each
convolution before it runs, whatever built the model (functional, Sequential, subclassed). Keras's name-scope stack
says which layer is running: a finding names the innermost layer (``add_3``, or ``block1`` for ``x + shortcut``
inside a subclassed block) and its scope path. Keras's ``Add`` broadcasts size-1 dimensions, so a 1-channel
identity shortcut added to 256 channels builds, saves and runs: here it is a finding, like a mismatch.

Adds inside leaf layers (a conv's or a dense layer's bias, BatchNorm's shift) are not residual adds: an add counts
when the running layer is a merge ``Add`` or a layer made of other layers (a block, a model). Grouped convs are
checked statically (filters and input channels divisible by groups) and, in the forward, for the channels they
receive. Returns the same :class:`~resnext_deploy.pipeline.check.CheckReport` as the PyTorch check.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BadInputError, ModelCheckError
from ..optional import require, require_keras
from .check import ADD_NAMES, CheckReport, Finding

log = logging.getLogger(__name__)

_HINT = ("Give the block a projection shortcut (Conv2D(filters, 1, strides=strides, use_bias=False) + "
         "BatchNormalization on the shortcut: the seeds' conv_shortcut=True), or keep the channels equal.")
_CONV_NAMES = frozenset({"conv1d", "conv2d", "conv3d"})


class _Stop(BaseException):
    """Stops the forward at the first finding (BaseException: Keras's and user code's `except Exception` pass it on)."""


def _fmt(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _sublayers(layer: Any) -> List[Any]:
    try:
        return [sub for sub in layer._flatten_layers(include_self=False, recursive=False)]
    except Exception:  # a layer without Keras's tracking
        return []


def _scope() -> List[Any]:
    from keras.src.backend.common import global_state  # the name-scope stack Keras keeps while layers run

    return list(global_state.get_global_attribute("name_scope_stack") or [])


def _input_shape(model: Any, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 3 or any(s <= 0 for s in shape):
            raise BadInputError(f"Input shape {tuple(input_shape)} for the Keras check is not valid; give (1, H, W, C).")
        return shape
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1 and all(isinstance(s, int) for s in tuple(inputs[0].shape)[1:]):
        return (1,) + tuple(int(s) for s in tuple(inputs[0].shape)[1:])
    raise BadInputError(
        f"The Keras model '{getattr(model, 'name', '?')}' does not declare its input shape (a subclassed model): pass "
        "input_shape=(1, H, W, C) to check_keras_model."
    )


def _static_convs(model: Any, report: CheckReport) -> None:
    """Every conv layer: groups must divide filters and (when built) the input channels its kernel takes."""
    try:
        layers = list(model._flatten_layers(include_self=False, recursive=True))
    except Exception:
        layers = []
    for layer in layers:
        groups, filters = getattr(layer, "groups", None), getattr(layer, "filters", None)
        if not isinstance(groups, int) or not isinstance(filters, int):
            continue
        report.convs_checked += 1
        if groups > 1:
            report.grouped_convs += 1
            report.grouped_conv_names.append(layer.name)
        problems = []
        if groups <= 0 or filters % groups:
            problems.append(f"filters={filters} is not divisible by groups={groups}")
        kernel = getattr(layer, "kernel", None) if getattr(layer, "built", False) else None
        if problems:
            report.findings.append(Finding(
                kind="conv_groups", module=layer.name, module_type=type(layer).__name__,
                message=(f"Keras layer '{layer.name}' ({type(layer).__name__}) is inconsistent: " + "; ".join(problems)
                         + ". Use a groups value (cardinality, e.g. 32) that divides both the filters and the input channels."),
                shapes=[tuple(kernel.shape)] if kernel is not None else []))


def check_keras_model(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Check an in-memory ``keras.Model`` (functional, Sequential or subclassed) with one forward pass on a
    seeded random NHWC input of ``input_shape`` (default: the model's declared input, batch 1).

    Never raises for problems in the model: they are the report's findings (see :func:`check_keras_or_raise`).
    """
    keras = require_keras("check Keras models")
    torch = require("torch", "check Keras models")
    if not isinstance(model, keras.Model):
        raise BadInputError(f"check_keras_model needs a keras.Model, got a {type(model).__name__}.")
    shape = _input_shape(model, input_shape)
    report = CheckReport(input_shape=shape)
    _static_convs(model, report)
    if report.findings:
        report.dynamic_check = False
        return report
    merge_add = keras.layers.Add
    blocks: Dict[str, None] = {}
    last: Dict[str, Any] = {"path": "", "layer": model}
    Tensor = torch.Tensor

    def where() -> Tuple[str, Any]:
        stack = _scope()
        if not stack:
            return "", model
        return "/".join(s.name for s in stack), getattr(stack[-1], "caller", None)

    def describe(path: str, layer: Any) -> str:
        name = getattr(layer, "name", path.rsplit("/", 1)[-1])
        scope = f" (scope '{path}')" if path and path != name else ""
        return f"Keras layer '{name}' ({type(layer).__name__}){scope}"

    def _record(finding: Finding) -> None:
        # Keras may run a layer's call more than once while building it (the torch backend's output-spec probe)
        if all(f.message != finding.message for f in report.findings):
            report.findings.append(finding)

    def on_add(a: Any, b: Any) -> None:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 3 or b.dim() < 3:
            return
        path, layer = where()
        if layer is None or not (isinstance(layer, merge_add) or _sublayers(layer)):
            return  # a bias / BatchNorm shift inside a leaf layer
        report.residual_adds += 1
        blocks.setdefault(path, None)
        sa, sb = tuple(int(s) for s in a.shape), tuple(int(s) for s in b.shape)
        if sa == sb:
            return
        try:
            broadcast: Optional[Tuple[int, ...]] = tuple(torch.broadcast_shapes(sa, sb))
        except RuntimeError:
            broadcast = None
        if broadcast is not None:
            ones = [s for s in (sa, sb) if s != broadcast]
            what = (f"Keras broadcasts {_fmt(ones[0]) if ones else 'one operand'} to {_fmt(broadcast)} without an error "
                    "(a 1-channel shortcut added to every channel) and the model computes wrong features")
        else:
            what = "the add fails with a shape mismatch"
        chans = f" ({sa[-1]} vs {sb[-1]} channels)" if len(sa) == len(sb) == 4 and sa[-1] != sb[-1] else ""
        _record(Finding(
            kind="residual_add", module=getattr(layer, "name", path), module_type=type(layer).__name__,
            message=(f"Residual add in {describe(path, layer)} adds shapes {_fmt(sa)} and {_fmt(sb)}{chans}: an identity "
                     f"shortcut is used while the main path changes the shape; {what}. {_HINT}"),
            shapes=[sa, sb]))
        raise _Stop()

    def on_conv(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input")
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        if not (isinstance(x, Tensor) and isinstance(w, Tensor)) or x.dim() < 3:
            return
        got, expected = int(x.shape[1]), int(w.shape[1]) * int(groups)
        if got != expected:
            path, layer = where()
            _record(Finding(
                kind="conv_input_channels", module=getattr(layer, "name", path), module_type=type(layer).__name__,
                message=(f"{describe(path, layer)} expects {expected} input channels (kernel for groups={groups}) but "
                         f"receives {got}: the layer feeding it produces another width. Make them agree."),
                shapes=[tuple(x.shape), tuple(w.shape)]))
            raise _Stop()

    class _Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            name = getattr(func, "__name__", None)
            if name in ADD_NAMES and len(args) >= 2:
                on_add(args[0], args[1])
            elif name in _CONV_NAMES:
                on_conv(args, kwargs)
            stack = _scope()
            if stack:
                last["path"], last["layer"] = "/".join(s.name for s in stack), getattr(stack[-1], "caller", None)
            return func(*args, **kwargs)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    filtering = keras.config.is_traceback_filtering_enabled()
    keras.config.disable_traceback_filtering()  # keep the failing layer's frame on the traceback
    try:
        with torch.no_grad(), _Watch():
            model(x, training=False)
    except _Stop:
        pass
    except Exception as exc:  # the forward failed somewhere the watch did not foresee (Keras builds layers here)
        detail = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split())).rstrip(".")
        detail = detail[:300] + ("..." if len(detail) > 300 else "")
        path, layer = last["path"], _failing_layer(exc, keras) or last["layer"] or model
        if layer is not last["layer"]:
            path = getattr(layer, "name", path)
        kind = "conv_groups" if "groups" in detail else "forward_error"
        report.findings.append(Finding(
            kind=kind, module=getattr(layer, "name", last["path"]), module_type=type(layer).__name__,
            message=(f"The forward pass on an input of shape {_fmt(shape)} failed in {describe(path, layer)} "
                     f"with {type(exc).__name__}: {detail}. Check that the layers' channel counts, groups and strides agree.")))
    finally:
        if filtering:
            keras.config.enable_traceback_filtering()
    report.blocks = list(blocks)
    report.blocks_checked = len(report.blocks)
    log.info(report.summary())
    return report


def _failing_layer(exc: BaseException, keras: Any) -> Any:
    """The innermost Keras layer on the exception's traceback (a layer that failed to build has run no torch op)."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, keras.layers.Layer):
            found = obj
        tb = tb.tb_next
    return found


def check_keras_or_raise(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """:func:`check_keras_model`, raising ModelCheckError (exit 2) with every finding."""
    report = check_keras_model(model, input_shape)
    if not report.passed:
        body = " ".join(f"({i}) {f.message}" for i, f in enumerate(report.findings, 1)) if len(report.findings) > 1 \
            else report.findings[0].message
        raise ModelCheckError(f"The Keras model failed the architecture check before export (input shape "
                              f"{tuple(report.input_shape)}): {body}")
    return report
