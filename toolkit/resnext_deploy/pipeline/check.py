"""Architecture lint run before export: catch broken residual adds and grouped convs with a clear message.

:func:`check_model` runs one forward pass on a seeded random input under a
``torch.overrides.TorchFunctionMode`` that inspects every addition *before* it executes: a residual add
of two feature maps must add tensors of identical shape (PyTorch either fails with a cryptic size error
or, worse, silently broadcasts). Forward hooks keep a stack of the running module paths, so a finding
names the innermost module that did the add (e.g. ``layer2.0``, a Bottleneck). Every conv is also checked
statically (channels divisible by groups, weight shape consistent) and, during the forward, for the
number of input channels it actually receives.

TorchScript runs in its own interpreter, out of reach of hooks and TorchFunctionMode, but its ops still pass
the dispatcher: a ``TorchDispatchMode`` sees every aten op (with its real tensors) before it runs. A conv's
weight tensor names the conv (by its storage, against ``named_parameters()``), every output is tagged with the
module that produced it, and an add is attributed to the deepest module whose own scripted graph holds an add
(found by walking each submodule's graph), so findings name the same block (``layer2.1``) as in eager mode.

Adds where one operand is a parameter or buffer (a bias, an embedding) or a scalar are not residual adds
and are ignored. The model is left as it was: hooks are removed and train/eval flags restored.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BadInputError, ModelCheckError
from ..optional import require

logger = logging.getLogger(__name__)

#: Names of the tensor functions that perform an addition (torch.add, Tensor.add/add_, the + operators).
ADD_NAMES = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})

_SHORTCUT_HINT = (
    "Give the block a projection shortcut (1x1 conv with the block's stride + BatchNorm, `downsample` in "
    "torchvision naming) or keep channels equal."
)


@dataclass
class Finding:
    """One problem found in the model; ``message`` is the full explanation for the user."""

    kind: str  # "non_finite" | "residual_add" | "conv_groups" | "conv_input_channels" | "forward_error"
    module: str  # module path as in named_modules() ("" is the top-level module)
    module_type: str
    message: str
    shapes: List[Tuple[int, ...]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


@dataclass
class CheckReport:
    """What :func:`check_model` looked at and found."""

    input_shape: Tuple[int, ...]
    findings: List[Finding] = field(default_factory=list)
    blocks_checked: int = 0  # distinct modules that performed at least one residual add
    residual_adds: int = 0  # feature-map + feature-map additions verified during the forward
    grouped_convs: int = 0  # convs with groups > 1
    convs_checked: int = 0
    dynamic_check: bool = True  # False when no forward-pass check ran
    uncovered: List[str] = field(default_factory=list)  # what the check could not look at (a warning each)
    blocks: List[str] = field(default_factory=list)
    grouped_conv_names: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def complete(self) -> bool:
        """True when every part of the model was checked (nothing in ``uncovered``)."""
        return self.dynamic_check and not self.uncovered

    def summary(self) -> str:
        status = "passed" if self.passed else f"FAILED ({len(self.findings)} problem(s))"
        if self.passed and not self.complete:
            status = "INCOMPLETE (nothing wrong found in what it could check)"
        dyn = (
            f"{self.residual_adds} residual add(s) in {self.blocks_checked} block(s)"
            if self.dynamic_check
            else "no forward-pass check"
        )
        text = (
            f"Architecture check {status}: input {tuple(self.input_shape)}, {dyn}, "
            f"{self.convs_checked} conv(s) of which {self.grouped_convs} grouped."
        )
        return text + "".join(f"\nnot checked: {u}" for u in self.uncovered)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["passed"] = self.passed
        d["complete"] = self.complete
        return d


class _StopForward(BaseException):
    """Raised inside the checked forward after the first fatal finding (BaseException so a user's
    ``except Exception`` in their forward cannot swallow it)."""


# --------------------------------------------------------------------------------------------------
# public API


def check_model(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Lint ``model`` (any ``torch.nn.Module``) with one forward pass on an input of ``input_shape``.

    ``input_shape`` defaults to ``(1, 3, S, S)`` with S the model's ``spec.input_size`` if it has one,
    else 224. Returns a :class:`CheckReport`; it never raises for problems in the model itself.
    """
    torch = require("torch", "check the model architecture")
    nn = torch.nn
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"The architecture check needs a torch.nn.Module, got a {type(model).__name__}. Load the model "
            "first (resnext_deploy.models.loading.load_torch_model)."
        )
    shape = _resolve_input_shape(model, input_shape)
    report = CheckReport(input_shape=shape)

    _finite_check(torch, model, report)
    flagged_convs = _static_conv_checks(torch, model, report)

    if isinstance(model, torch.jit.ScriptModule):
        _script_check(torch, model, shape, report, flagged_convs)
    else:
        _dynamic_check(torch, model, shape, report, flagged_convs)
    for u in report.uncovered:
        logger.warning("architecture check: not checked: %s", u)

    logger.info(report.summary())
    for f in report.findings:
        logger.debug("check finding [%s] %s", f.kind, f.message)
    return report


def check_or_raise(model: Any, input_shape: Optional[Sequence[int]] = None) -> CheckReport:
    """Run :func:`check_model`; raise ModelCheckError listing every finding, or return the clean report."""
    report = check_model(model, input_shape)
    if not report.passed:
        n = len(report.findings)
        if n == 1:
            body = report.findings[0].message
        else:
            body = " ".join(f"({i}) {f.message}" for i, f in enumerate(report.findings, 1))
        raise ModelCheckError(
            f"The model failed the architecture check before export (input shape {tuple(report.input_shape)}, "
            f"{n} problem{'s' if n > 1 else ''}): {body}"
        )
    return report


# --------------------------------------------------------------------------------------------------
# helpers


def _resolve_input_shape(model: Any, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
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


def _fmt(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _where(path: str, type_name: str, noun: str = "block") -> str:
    return f"{noun} '{path}' ({type_name})" if path else f"the top-level module ({type_name})"


def _type_name(module: Any) -> str:
    # ScriptModules remember the Python class they came from.
    return getattr(module, "original_name", None) or type(module).__name__


_CONV_DIMS = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}


def _conv_dims(torch: Any, module: Any) -> Optional[int]:
    """Spatial dims of a (non-transposed) conv, for both eager and TorchScript modules; None otherwise."""
    nn = torch.nn
    for cls, nd in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
        if isinstance(module, cls):
            return nd
    if isinstance(module, torch.jit.ScriptModule):
        return _CONV_DIMS.get(getattr(module, "original_name", ""))
    return None


def _int_attr(module: Any, name: str) -> Optional[int]:
    try:
        value = getattr(module, name)
    except Exception:  # a ScriptModule raises if the attribute was not kept
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


def _finite_check(torch: Any, model: Any, report: CheckReport) -> None:
    """A NaN/Inf weight makes every output NaN: name the first one (export would only say the outputs differ)."""
    found = nonfinite_tensors(model)
    if not found:
        return
    name, what, bad, numel = found[0]
    t = dict(model.named_parameters() if what == "parameter" else model.named_buffers())[name].detach()
    kinds = " and ".join(k for k, n in (("NaN", int(torch.isnan(t).sum())), ("Inf", int(torch.isinf(t).sum()))) if n)
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    more = ""
    if len(found) > 1:
        names = ", ".join(f"'{n}'" for n, *_ in found[1:6])
        more = f" {len(found) - 1} more tensor(s) hold NaN/Inf too: {names}{' ...' if len(found) > 6 else ''}."
    report.findings.append(Finding(
        kind="non_finite",
        module=owner,
        module_type=_type_name(dict(model.named_modules()).get(owner, model)),
        message=(
            f"The {what} '{name}' holds {kinds} ({bad} of {numel} values), so the model's outputs would be NaN or Inf. "
            f"The weights are broken (a diverged training run, or a damaged or wrongly converted checkpoint): use a "
            f"checkpoint from before the divergence, or re-save the weights.{more}"
        ),
    ))


def _static_conv_checks(torch: Any, model: Any, report: CheckReport) -> set:
    """Check every conv's groups against its channel counts and weight shape; returns ids of flagged convs."""
    flagged = set()
    untyped = 0
    for name, m in model.named_modules():
        nd = _conv_dims(torch, m)
        if nd is None:
            continue
        report.convs_checked += 1
        in_ch, out_ch, groups = _int_attr(m, "in_channels"), _int_attr(m, "out_channels"), _int_attr(m, "groups")
        weight = getattr(m, "weight", None)
        wshape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        if groups is None and isinstance(m, torch.jit.ScriptModule):
            groups = _graph_conv_groups(m)  # traced convs keep groups only as a constant in their graph
        if groups is None:
            untyped += 1
            continue
        if groups > 1:
            report.grouped_convs += 1
            report.grouped_conv_names.append(name)
        problems: List[str] = []
        if groups <= 0:
            problems.append(f"groups={groups} is not a positive integer")
        else:
            if in_ch is not None and in_ch % groups:
                problems.append(f"in_channels={in_ch} is not divisible by groups={groups}")
            if out_ch is not None and out_ch % groups:
                problems.append(f"out_channels={out_ch} is not divisible by groups={groups}")
            if wshape is not None:
                if len(wshape) != nd + 2:
                    problems.append(f"its weight has shape {_fmt(wshape)}, expected {nd + 2} dimensions")
                else:
                    if in_ch is not None and wshape[1] * groups != in_ch:
                        problems.append(
                            f"its weight of shape {_fmt(wshape)} takes weight.shape[1] * groups = "
                            f"{wshape[1]} * {groups} = {wshape[1] * groups} input channels, not in_channels={in_ch}"
                        )
                    if wshape[0] % groups:
                        problems.append(
                            f"its weight of shape {_fmt(wshape)} has {wshape[0]} output channels, not divisible by "
                            f"groups={groups}"
                        )
                    if out_ch is not None and wshape[0] != out_ch:
                        problems.append(
                            f"its weight of shape {_fmt(wshape)} has {wshape[0]} output channels, not "
                            f"out_channels={out_ch}"
                        )
        if problems:
            flagged.add(id(m))
            report.findings.append(
                Finding(
                    kind="conv_groups",
                    module=name,
                    module_type=_type_name(m),
                    message=(
                        f"Conv '{name or '<top level>'}' ({_type_name(m)}) is inconsistent: "
                        + "; ".join(problems)
                        + ". PyTorch would fail (or compute garbage) at this layer. Use a groups value that divides "
                        "both in_channels and out_channels (in ResNeXt, groups = cardinality, e.g. 32) and a weight "
                        "of shape (out_channels, in_channels // groups, *kernel_size); rebuild the layer rather than "
                        "editing its attributes."
                    ),
                    shapes=[wshape] if wshape else [],
                )
            )
    if untyped:
        note = (f"{untyped} conv(s) expose no groups value (neither as an attribute nor as a constant in their "
                "TorchScript graph): their groups were checked only when the forward pass ran them")
        report.notes.append(note)
    return flagged


def _graph_conv_groups(module: Any) -> Optional[int]:
    """Read ``groups`` from the convolution call in a TorchScript conv's graph, if it is a constant."""
    index = {"aten::_convolution": 8, "aten::conv1d": 6, "aten::conv2d": 6, "aten::conv3d": 6}
    try:
        for node in module.graph.nodes():
            i = index.get(node.kind())
            if i is None:
                continue
            inputs = list(node.inputs())
            if len(inputs) > i and inputs[i].node().kind() == "prim::Constant":
                value = inputs[i].toIValue()
                return value if isinstance(value, int) else None
    except Exception:
        return None
    return None


class _Frame:
    __slots__ = ("path", "module", "inputs")

    def __init__(self, path: str, module: Any, inputs: Tuple[Any, ...]) -> None:
        self.path, self.module, self.inputs = path, module, inputs


def _make_mode(torch: Any, on_add: Any) -> Any:
    """A TorchFunctionMode that calls ``on_add(args, kwargs)`` before every addition."""
    add_funcs = {torch.add, torch.Tensor.add, torch.Tensor.add_}
    for name in ("__add__", "__radd__", "__iadd__"):
        fn = getattr(torch.Tensor, name, None)
        if fn is not None:
            add_funcs.add(fn)

    class _AddWatch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            try:
                is_add = func in add_funcs or getattr(func, "__name__", None) in ADD_NAMES
            except TypeError:  # unhashable callable
                is_add = getattr(func, "__name__", None) in ADD_NAMES
            if is_add:
                on_add(args, kwargs)
            return func(*args, **kwargs)

    return _AddWatch()


def _dynamic_check(torch: Any, model: Any, shape: Tuple[int, ...], report: CheckReport, flagged_convs: set) -> None:
    nn = torch.nn
    Tensor = torch.Tensor
    stack: List[_Frame] = []
    weight_ids = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    blocks: Dict[str, None] = {}
    root_type = _type_name(model)

    def current() -> _Frame:
        return stack[-1] if stack else _Frame("", model, ())

    def fatal(finding: Finding) -> None:
        report.findings.append(finding)
        raise _StopForward()

    # ---- hooks -----------------------------------------------------------------------------------
    def pre_hook(module: Any, args: Tuple[Any, ...]) -> None:
        path = paths.get(id(module), "?")
        stack.append(_Frame(path, module, tuple(a for a in args if isinstance(a, Tensor))))
        nd = conv_dims.get(id(module))
        if nd is not None:
            _check_conv_input(module, path, nd, args)

    def post_hook(module: Any, args: Tuple[Any, ...], output: Any) -> None:
        # Pop up to and including this module's frame (frames left by an exception the user's code caught).
        while stack:
            if stack.pop().module is module:
                break

    def _check_conv_input(module: Any, path: str, nd: int, args: Tuple[Any, ...]) -> None:
        if id(module) in flagged_convs:
            raise _StopForward()  # already reported statically; running it would only crash
        x = args[0] if args else None
        expected = _int_attr(module, "in_channels")
        if not isinstance(x, Tensor) or expected is None or x.dim() not in (nd + 1, nd + 2):
            return
        got = int(x.shape[-(nd + 1)])
        if got != expected:
            fatal(
                Finding(
                    kind="conv_input_channels",
                    module=path,
                    module_type=_type_name(module),
                    message=(
                        f"Conv '{path}' ({_type_name(module)}) expects {expected} input channels (in_channels) but "
                        f"receives a tensor of shape {_fmt(x.shape)} with {got} channels: the layer feeding it "
                        f"produces a different width. Make the previous layer output {expected} channels, or build "
                        f"this conv with in_channels={got}."
                    ),
                    shapes=[tuple(x.shape)],
                )
            )

    # ---- additions -------------------------------------------------------------------------------
    def on_add(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return  # tensor + Python scalar
        if a.dim() < 3 and b.dim() < 3:
            return  # not feature maps (scalars, vectors, logits)
        if a.dim() == 0 or b.dim() == 0:
            return  # feature map + scalar tensor
        if isinstance(a, nn.Parameter) or isinstance(b, nn.Parameter) or id(a) in weight_ids or id(b) in weight_ids:
            return  # a bias / embedding add, not a residual one
        frame = current()
        report.residual_adds += 1
        blocks.setdefault(frame.path, None)
        if tuple(a.shape) == tuple(b.shape):
            return
        fatal(_add_finding(torch, frame, a, b, root_type))

    # ---- run -------------------------------------------------------------------------------------
    paths: Dict[int, str] = {}
    conv_dims: Dict[int, int] = {}
    handles = []
    modes = [(m, m.training) for m in model.modules()]
    skipped_script = 0
    try:
        for name, m in model.named_modules():
            if isinstance(m, torch.jit.ScriptModule):
                skipped_script += 1
                continue
            paths.setdefault(id(m), name)
            nd = _conv_dims(torch, m)
            if nd is not None:
                conv_dims[id(m)] = nd
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        if skipped_script:
            report.uncovered.append(
                f"{skipped_script} TorchScript submodule(s) inside an eager model: the adds inside them (check the "
                "whole model scripted, or the submodules eager)"
            )
        x = _make_input(torch, model, shape)
        model.eval()
        try:
            with torch.no_grad(), _make_mode(torch, on_add):
                model(x)
        except _StopForward:
            pass
        except Exception as exc:  # the forward failed somewhere our checks did not foresee
            frame = current()
            detail = " ".join(str(exc).split())
            if len(detail) > 300:
                detail = detail[:300] + "..."
            report.findings.append(
                Finding(
                    kind="forward_error",
                    module=frame.path,
                    module_type=_type_name(frame.module),
                    message=(
                        f"The forward pass on an input of shape {_fmt(shape)} failed in "
                        f"{_where(frame.path, _type_name(frame.module), noun='module')} with {type(exc).__name__}: "
                        f"{detail}. Check that the model accepts this input shape (pass the right input shape) and "
                        "that its layers' channel counts and strides agree."
                    ),
                )
            )
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        stack.clear()
    report.blocks = list(blocks)
    report.blocks_checked = len(report.blocks)


def _make_input(torch: Any, model: Any, shape: Tuple[int, ...]) -> Any:
    dtype, device = torch.float32, torch.device("cpu")
    for t in list(model.parameters()) + list(model.buffers()):
        device = t.device
        if t.is_floating_point():
            dtype = t.dtype
            break
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def _add_finding(torch: Any, frame: _Frame, a: Any, b: Any, root_type: str) -> Finding:
    sa, sb = tuple(int(s) for s in a.shape), tuple(int(s) for s in b.shape)
    type_name = _type_name(frame.module) if frame.path else root_type
    # Which operand is the identity shortcut? The one that *is* the block's input (or has its shape).
    shortcut: Optional[int] = None
    ins = frame.inputs
    if any(a is t for t in ins) and not any(b is t for t in ins):
        shortcut = 0
    elif any(b is t for t in ins) and not any(a is t for t in ins):
        shortcut = 1
    elif ins:
        s0 = tuple(ins[0].shape)
        if sa == s0 and sb != s0:
            shortcut = 0
        elif sb == s0 and sa != s0:
            shortcut = 1
    return residual_finding(torch, frame.path, type_name, sa, sb, shortcut)


def residual_finding(
    torch: Any, path: str, type_name: str, sa: Tuple[int, ...], sb: Tuple[int, ...], shortcut: Optional[int]
) -> Finding:
    """The finding for a residual add of shapes ``sa`` + ``sb`` in module ``path``; ``shortcut`` is the index
    (0 or 1) of the identity-shortcut operand when known."""
    where = _where(path, type_name)
    try:
        broadcast: Optional[Tuple[int, ...]] = tuple(torch.broadcast_shapes(sa, sb))
    except RuntimeError:
        broadcast = None
    consequence = (
        f"PyTorch would silently broadcast this to {_fmt(broadcast)} and produce wrong features"
        if broadcast is not None
        else "PyTorch would fail here with a size-mismatch error"
    )
    if shortcut is not None:
        ss, sm = (sa, sb) if shortcut == 0 else (sb, sa)
        changes = []
        if len(sm) == len(ss) and len(sm) >= 3:
            if sm[1] != ss[1]:
                changes.append(f"channels ({ss[1]} -> {sm[1]})")
            if sm[2:] != ss[2:]:
                changes.append(f"spatial size ({'x'.join(map(str, ss[2:]))} -> {'x'.join(map(str, sm[2:]))})")
        what = " and ".join(changes) if changes else "shape"
        message = (
            f"Residual add in {where} adds a main path of shape {_fmt(sm)} to a shortcut of shape {_fmt(ss)}: "
            f"the identity shortcut is used while the main path changes {what}; {consequence}. {_SHORTCUT_HINT}"
        )
        shapes = [sm, ss]
    else:
        message = (
            f"Residual add in {where} adds tensors of shapes {_fmt(sa)} and {_fmt(sb)}: a residual add needs both "
            f"operands of identical shape, and {consequence}. Make the shortcut produce the main path's shape: "
            f"{_SHORTCUT_HINT[0].lower()}{_SHORTCUT_HINT[1:]}"
        )
        shapes = [sa, sb]
    return Finding(kind="residual_add", module=path, module_type=type_name, message=message, shapes=shapes)


# --------------------------------------------------------------------------------------------------
# TorchScript: every aten op seen through a TorchDispatchMode


_ADD_KINDS = frozenset({"aten::add", "aten::add_"})


def _graph_has_add(module: Any) -> bool:
    """True when this scripted module's *own* forward graph (not its submodules') performs an add."""
    try:
        graph = module.graph
    except Exception:  # a submodule without a forward (e.g. a container that is never called)
        return False

    def walk(nodes: Any) -> bool:
        for node in nodes:
            if node.kind() in _ADD_KINDS:
                return True
            if any(walk(b.nodes()) for b in node.blocks()):
                return True
        return False

    return walk(graph.nodes())


def _key(t: Any) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def _owner_path(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def _script_check(torch: Any, model: Any, shape: Tuple[int, ...], report: CheckReport, flagged_convs: set) -> None:
    """The forward-pass check for TorchScript (see the module docstring)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    Tensor = torch.Tensor
    modules = dict(model.named_modules())
    owner = {t.data_ptr(): _owner_path(n) for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if t.numel()}
    adders = [path for path, m in modules.items() if _graph_has_add(m)]
    flagged_paths = {path for path, m in modules.items() if id(m) in flagged_convs}
    tags: Dict[Tuple[int, Tuple[int, ...], Tuple[int, ...]], str] = {}
    blocks: Dict[str, None] = {}
    last = {"module": ""}  # the module of the last op that ran, for failures we did not foresee
    add_ops = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
    conv_ops = {torch.ops.aten.convolution.default}
    root_type = _type_name(model)

    def inside(path: str, block: str) -> bool:
        return block == "" or path == block or path.startswith(block + ".")

    def block_of(paths: Sequence[str]) -> str:
        # The deepest module whose own graph adds and that holds the layer producing an operand.
        best = ""
        for path in paths:
            for cand in adders:
                if inside(path, cand) and path != cand and len(cand) > len(best):
                    best = cand
        return best

    def fatal(finding: Finding) -> None:
        report.findings.append(finding)
        raise _StopForward()

    class _Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
            param = next((owner[t.data_ptr()] for t in tensors if t.data_ptr() in owner), None)
            if param is not None:
                last["module"] = param
            tag: Optional[str] = param
            if func in conv_ops:
                _check_script_conv(param or "", args)
            elif func in add_ops and len(args) >= 2 and all(isinstance(t, Tensor) for t in args[:2]):
                tag = _check_script_add(args[0], args[1])
            out = func(*args, **kwargs)
            if tag is None:  # no weights of its own: the output comes from where its input came from
                tag = next((tags[_key(t)] for t in tensors if t.data_ptr() and _key(t) in tags), None)
            if tag is not None:
                for t in tree_flatten(out)[0]:
                    if isinstance(t, Tensor) and t.data_ptr():
                        tags[_key(t)] = tag
            return out

    def _check_script_conv(path: str, args: Tuple[Any, ...]) -> None:
        if path in flagged_paths:
            raise _StopForward()  # already reported statically; running it would only crash
        x, w = args[0], args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        if x.dim() < 3 or w.dim() < 3:
            return
        got, expected = int(x.shape[1]), int(w.shape[1]) * groups
        if got != expected:
            m = modules.get(path)
            t = _type_name(m) if m is not None else "Conv"
            fatal(Finding(
                kind="conv_input_channels", module=path, module_type=t,
                message=(
                    f"Conv '{path}' ({t}) expects {expected} input channels (weight {_fmt(w.shape)}, groups={groups}) "
                    f"but receives a tensor of shape {_fmt(x.shape)} with {got} channels: the layer feeding it "
                    f"produces a different width. Make the previous layer output {expected} channels, or build "
                    f"this conv with in_channels={got}."
                ),
                shapes=[tuple(x.shape), tuple(w.shape)],
            ))
        if groups > 1 and int(w.shape[0]) % groups:
            m = modules.get(path)
            t = _type_name(m) if m is not None else "Conv"
            fatal(Finding(
                kind="conv_groups", module=path, module_type=t,
                message=(f"Conv '{path}' ({t}) has {int(w.shape[0])} filters (weight {_fmt(w.shape)}), not divisible "
                         f"by groups={groups}. Use a groups value that divides both channel counts."),
                shapes=[tuple(w.shape)],
            ))

    def _check_script_add(a: Any, b: Any) -> Optional[str]:
        if a.dim() < 3 or b.dim() < 3 or a.data_ptr() in owner or b.data_ptr() in owner:
            return None  # not two feature maps (a bias, a scalar, logits)
        ta, tb = tags.get(_key(a), "<input>"), tags.get(_key(b), "<input>")
        block = block_of([ta, tb])
        report.residual_adds += 1
        blocks.setdefault(block, None)
        if tuple(a.shape) != tuple(b.shape):
            ina, inb = inside(ta, block) and ta != block, inside(tb, block) and tb != block
            shortcut = 0 if (inb and not ina) else 1 if (ina and not inb) else None
            m = modules.get(block)
            fatal(residual_finding(torch, block, _type_name(m) if m is not None and block else root_type,
                                   tuple(int(s) for s in a.shape), tuple(int(s) for s in b.shape), shortcut))
        return block

    modes = [(m, m.training) for m in model.modules()]
    x = _make_input(torch, model, shape)
    tags[_key(x)] = "<input>"
    try:
        model.eval()
        with torch.no_grad(), _Watch():
            model(x)
    except _StopForward:
        pass
    except Exception as exc:  # noqa: BLE001 - the interpreter wraps our _StopForward, and fails in many ways
        if report.findings:
            pass  # our finding stopped the forward; TorchScript re-raised it as a RuntimeError
        else:
            path = last["module"]
            m = modules.get(path)
            report.findings.append(Finding(
                kind="forward_error", module=path, module_type=_type_name(m) if m is not None else root_type,
                message=(
                    f"The forward pass on an input of shape {_fmt(shape)} failed after "
                    f"{_where(path, _type_name(m) if m is not None else root_type, noun='module')} with "
                    f"{type(exc).__name__}: {_last_line(str(exc))}. Check that the model accepts this input shape "
                    "and that its layers' channel counts and strides agree."
                ),
            ))
    finally:
        for m, training in modes:
            m.training = training
    report.blocks = [b for b in blocks]
    report.blocks_checked = len(report.blocks)


def _last_line(text: str) -> str:
    """The interpreter's own message without its serialized-code traceback (short, never IR)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else text
    return line if len(line) <= 300 else line[:300] + "..."
