"""The forward-pass check for Keras 3 models on the torch backend (functional, Sequential or subclassed).

On the torch backend a Keras layer's ops are torch ops, so a ``TorchFunctionMode`` sees each addition and each
convolution before it runs. Keras's name-scope stack says which layer is running: a finding names the innermost
layer (``add_3``, or ``block1`` for ``x + shortcut`` inside a subclassed block). Every op's output is remembered
with the scope that made it, so inside a block an operand made by the block is its main path and one that came
from outside is its identity shortcut. Keras's ``Add`` broadcasts size-1 dimensions, so a 1-channel shortcut
added to 256 channels builds, saves and runs: here it is a finding, like a mismatch.

Adds inside leaf layers (a conv's or a dense layer's bias, BatchNorm's shift) are not residual adds: an add counts
when the running layer is a merge ``Add`` or a layer made of other layers (a block, a model). Grouped convs are
checked statically (filters divisible by groups, kernel consistent), when Keras builds them (the input channels)
and in the forward (the channels they receive).
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import BadInputError
from .engine import CheckEngine, ConvSpec, StopForward
from .findings import Site
from .torch_module import ADD_NAMES, function_mode

_CONV_NAMES = frozenset({"conv1d", "conv2d", "conv3d"})


def keras_input_shape(model: Any, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """``input_shape`` checked, or the model's declared input with batch 1."""
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


def sublayers(layer: Any, recursive: bool = False) -> List[Any]:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=recursive))
    except Exception:  # a layer without Keras's tracking
        return []


def is_conv(layer: Any) -> bool:
    return isinstance(getattr(layer, "groups", None), int) and isinstance(getattr(layer, "filters", None), int)


def channels_last(layer: Any = None) -> bool:
    fmt = getattr(layer, "data_format", None)
    if fmt is None:
        from keras import config

        fmt = config.image_data_format()
    return fmt == "channels_last"


def conv_spec(layer: Any, in_channels: Optional[int] = None) -> ConvSpec:
    """A Keras conv layer's facts; its kernel is (*kernel_size, in_channels // groups, filters) once built."""
    kernel = getattr(layer, "kernel", None) if getattr(layer, "built", False) else None
    kshape = tuple(int(s) for s in kernel.shape) if kernel is not None else None
    if in_channels is None and kshape:
        in_channels = kshape[-2] * layer.groups
    return ConvSpec(in_channels=in_channels, out_channels=layer.filters, groups=layer.groups, weight_shape=kshape,
                    weight_in=kshape[-2] if kshape else None, weight_out=kshape[-1] if kshape else None)


def check_keras_weights(torch: Any, model: Any, engine: CheckEngine) -> None:
    """NaN/Inf in the model's weights (named by their Keras path; on the torch backend each holds a torch tensor)."""
    found, kinds = [], ""
    for v in getattr(model, "weights", []):
        t = getattr(v, "value", None)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        t = t.detach()
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            if not found:
                kinds = " and ".join(k for k, n in (("NaN", int(torch.isnan(t).sum())), ("Inf", int(torch.isinf(t).sum())))
                                     if n)
            found.append((getattr(v, "path", v.name), "weight", bad, int(t.numel())))
    if found:
        owner = found[0][0].rsplit("/", 1)[0] if "/" in found[0][0] else ""
        engine.weights(Site(owner, "Layer", noun="layer"), found, kinds)


class KerasWatch:
    """Observes one forward of a Keras model and reports its adds and convs to the engine."""

    def __init__(self, torch: Any, keras: Any, model: Any, engine: CheckEngine) -> None:
        self.torch, self.keras, self.model, self.engine = torch, keras, model, engine
        self.made_in: Dict[int, Tuple[Any, str]] = {}  # id(tensor) -> (weakref, scope path that made it)
        self.last: Tuple[str, Any] = ("", model)

    def where(self) -> Tuple[str, Any]:
        from keras.src.backend.common import (
            global_state,  # the name-scope stack Keras keeps while layers run
        )

        stack = list(global_state.get_global_attribute("name_scope_stack") or [])
        if not stack:
            return "", self.model
        return "/".join(s.name for s in stack), getattr(stack[-1], "caller", None)

    def origin(self, t: Any) -> Optional[str]:
        entry = self.made_in.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def site(self, path: str, layer: Any) -> Site:
        name = getattr(layer, "name", path.rsplit("/", 1)[-1])
        noun = "block" if sublayers(layer) else "layer"
        return Site(name, type(layer).__name__, noun=noun, scope=path)

    def on_function(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        name = getattr(func, "__name__", None)
        self.last = self.where()
        if name in ADD_NAMES and len(args) >= 2:
            self.on_add(args[0], args[1])
        elif name in _CONV_NAMES:
            self.on_conv(args, kwargs)

    def on_result(self, out: Any) -> None:
        if isinstance(out, self.torch.Tensor):
            self.made_in[id(out)] = (weakref.ref(out), self.last[0])

    def on_add(self, a: Any, b: Any) -> None:
        Tensor = self.torch.Tensor
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 3 or b.dim() < 3:
            return
        path, layer = self.last
        if layer is None or not (isinstance(layer, self.keras.layers.Add) or sublayers(layer)):
            return  # a bias / BatchNorm shift inside a leaf layer
        inner = [o is not None and o.startswith(path + "/") for o in (self.origin(a), self.origin(b))]
        shortcut = None if inner[0] == inner[1] else (1 if inner[0] else 0)
        axis = -1 if channels_last() else 1
        self.engine.add(self.site(path, layer), tuple(a.shape), tuple(b.shape), shortcut, channel_axis=axis)

    def on_conv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input")
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        if not (isinstance(x, self.torch.Tensor) and isinstance(w, self.torch.Tensor)) or x.dim() < 3:
            return
        path, layer = self.last
        shape = tuple(int(s) for s in x.shape)  # channels first, as the torch backend runs it
        spec = conv_spec(layer) if is_conv(layer) else ConvSpec()
        spec = ConvSpec(groups=int(groups), weight_shape=spec.weight_shape or tuple(int(s) for s in w.shape),
                        weight_in=int(w.shape[1]), weight_out=int(w.shape[0]))
        if channels_last(layer):
            shape, axis = (shape[0],) + shape[2:] + (shape[1],), -1
        else:
            axis = 1
        self.engine.conv(getattr(layer, "name", path), type(layer).__name__, spec, shape, channel_axis=axis)

    def run(self, shape: Tuple[int, ...]) -> None:
        """One forward on a seeded NHWC input; Keras builds unbuilt layers here, so a failed build is looked at too."""
        keras, torch = self.keras, self.torch
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        filtering = keras.config.is_traceback_filtering_enabled()
        keras.config.disable_traceback_filtering()  # keep the failing layer's frame on the traceback
        try:
            with torch.no_grad(), function_mode(torch, self):
                self.model(x, training=False)
        except StopForward:
            pass
        except Exception as exc:  # the forward failed somewhere the watch did not foresee
            self.failed(exc)
        finally:
            if filtering:
                keras.config.enable_traceback_filtering()

    def failed(self, exc: BaseException) -> None:
        """A conv that could not be built for its input is a conv finding; anything else a forward_error."""
        layer, in_shape = self.failing_layer(exc)
        if layer is not None and is_conv(layer) and in_shape is not None:
            in_channels = int(in_shape[-1] if channels_last(layer) else in_shape[1])
            if not self.engine.conv_consistent(layer.name, type(layer).__name__, conv_spec(layer, in_channels)):
                return
        path, last = self.last
        if layer is None or layer is last:
            layer = last if last is not None else self.model
        else:
            path = getattr(layer, "name", path)
        detail = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        self.engine.forward_failed(Site(getattr(layer, "name", path), type(layer).__name__, noun="layer", scope=path),
                                   exc, detail)

    def failing_layer(self, exc: BaseException) -> Tuple[Any, Optional[Sequence[int]]]:
        """The innermost Keras layer on the traceback (a layer that failed to build has run no torch op), and the
        input shape its ``build`` received when that is where it failed."""
        found, built_for, tb = None, None, exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            obj = frame.f_locals.get("self")
            if isinstance(obj, self.keras.layers.Layer):
                found = obj
                shape = frame.f_locals.get("input_shape") if frame.f_code.co_name == "build" else None
                built_for = tuple(shape) if isinstance(shape, (tuple, list)) else None
            tb = tb.tb_next
        return found, built_for
