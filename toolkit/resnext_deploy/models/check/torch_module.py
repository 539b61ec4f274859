"""What the eager and the TorchScript adapters share about a ``torch.nn.Module``: its input, its weights' NaN/Inf,
its convs' static facts, and leaving its train/eval flags as they were."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ...errors import BadInputError
from ...optional import require
from .engine import CheckEngine, ConvSpec
from .findings import Site

#: Names of the tensor functions that perform an addition (torch.add, Tensor.add/add_, the + operators).
ADD_NAMES = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})

_CONV_DIMS = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}
_GRAPH_GROUPS_ARG = {"aten::_convolution": 8, "aten::conv1d": 6, "aten::conv2d": 6, "aten::conv3d": 6}


def resolve_input_shape(model: Any, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """``input_shape`` checked, or ``(1, 3, S, S)`` with S the model's ``spec.input_size`` (else 224)."""
    if input_shape is None:
        size = getattr(getattr(model, "spec", None), "input_size", None)
        size = size if isinstance(size, int) and size > 0 else 224
        return (1, 3, size, size)
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise BadInputError(
            f"Input shape {input_shape!r} for the architecture check is not valid; give positive sizes such as "
            "(1, 3, 224, 224) (batch, channels, height, width)."
        )
    return shape


def type_name(module: Any) -> str:
    """The module's class name (ScriptModules remember the Python class they came from)."""
    return getattr(module, "original_name", None) or type(module).__name__


def conv_dims(torch: Any, module: Any) -> Optional[int]:
    """Spatial dims of a (non-transposed) conv, for both eager and TorchScript modules; None otherwise."""
    nn = torch.nn
    for cls, nd in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
        if isinstance(module, cls):
            return nd
    if isinstance(module, torch.jit.ScriptModule):
        return _CONV_DIMS.get(getattr(module, "original_name", ""))
    return None


def int_attr(module: Any, name: str) -> Optional[int]:
    try:
        value = getattr(module, name)
    except Exception:  # a ScriptModule raises if the attribute was not kept
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def graph_conv_groups(module: Any) -> Optional[int]:
    """``groups`` from the convolution call in a TorchScript conv's graph, if it is a constant."""
    try:
        for node in module.graph.nodes():
            i = _GRAPH_GROUPS_ARG.get(node.kind())
            if i is None:
                continue
            inputs = list(node.inputs())
            if len(inputs) > i and inputs[i].node().kind() == "prim::Constant":
                value = inputs[i].toIValue()
                return value if isinstance(value, int) else None
    except Exception:
        return None
    return None


def conv_spec(torch: Any, module: Any, nd: Optional[int] = None) -> ConvSpec:
    """A torch conv module's facts (attributes, weight; a traced conv's groups from its graph)."""
    weight = getattr(module, "weight", None)
    wshape = tuple(int(s) for s in weight.shape) if isinstance(weight, torch.Tensor) else None
    groups = int_attr(module, "groups")
    if groups is None and isinstance(module, torch.jit.ScriptModule):
        groups = graph_conv_groups(module)
    return ConvSpec(
        in_channels=int_attr(module, "in_channels"), out_channels=int_attr(module, "out_channels"), groups=groups,
        weight_shape=wshape, weight_in=wshape[1] if wshape and len(wshape) > 1 else None,
        weight_out=wshape[0] if wshape else None, spatial_dims=nd,
    )


def check_convs(torch: Any, model: Any, engine: CheckEngine) -> Set[int]:
    """Every conv's static facts through the engine; returns the ids of the inconsistent ones (not to be run)."""
    flagged = set()
    for name, m in model.named_modules():
        nd = conv_dims(torch, m)
        if nd is not None and not engine.conv_layer(name, type_name(m), conv_spec(torch, m, nd)):
            flagged.add(id(m))
    return flagged


def nonfinite_tensors(model: Any) -> List[Tuple[str, str, int, int]]:
    """Floating-point parameters and buffers holding NaN or Inf, in ``named_parameters`` then ``named_buffers``
    order: (name, "parameter" | "buffer", count of NaN/Inf values, numel)."""
    torch = require("torch", "check the model's weights")
    found = []
    for what, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                bad = int((~torch.isfinite(t.detach())).sum())
                if bad:
                    found.append((name, what, bad, int(t.numel())))
    return found


def check_weights(torch: Any, model: Any, engine: CheckEngine) -> None:
    """A NaN/Inf weight makes every output NaN: name the first one (export would only say the outputs differ)."""
    found = nonfinite_tensors(model)
    if not found:
        return
    name, what = found[0][:2]
    t = dict(model.named_parameters() if what == "parameter" else model.named_buffers())[name].detach()
    kinds = " and ".join(k for k, n in (("NaN", int(torch.isnan(t).sum())), ("Inf", int(torch.isinf(t).sum()))) if n)
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    engine.weights(Site(owner, type_name(dict(model.named_modules()).get(owner, model))), found, kinds)


def make_input(torch: Any, model: Any, shape: Tuple[int, ...]) -> Any:
    """A seeded random input of ``shape`` on the model's device, in its floating dtype."""
    dtype, device = torch.float32, torch.device("cpu")
    for t in list(model.parameters()) + list(model.buffers()):
        device = t.device
        if t.is_floating_point():
            dtype = t.dtype
            break
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


class KeepModes:
    """Context manager: run the model in eval mode and restore every module's train/eval flag afterwards."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> "KeepModes":
        self.model.eval()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, training in self.modes:
            m.training = training


_MODE_CLASSES: Dict[str, Any] = {}


def function_mode(torch: Any, observer: Any) -> Any:
    """A ``torch.overrides.TorchFunctionMode`` that shows every torch function call to ``observer`` before it runs
    (``on_function(func, args, kwargs)``) and its result after (``on_result(out)``). The class is made on first use:
    torch is imported lazily."""
    cls = _MODE_CLASSES.get("function")
    if cls is None:

        class ObservedFunctions(torch.overrides.TorchFunctionMode):
            def __init__(self, observer: Any) -> None:
                super().__init__()
                self.observer = observer

            def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                self.observer.on_function(func, args, kwargs)
                out = func(*args, **kwargs)
                self.observer.on_result(out)
                return out

        cls = _MODE_CLASSES["function"] = ObservedFunctions
    return cls(observer)
