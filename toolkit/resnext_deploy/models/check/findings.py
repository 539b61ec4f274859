"""What the architecture check finds, as values, each kind worded once for every framework.

A :class:`Finding` carries the layer it names, the shapes involved and the advice; its ``message`` is rendered
here from those facts only, so a broken block reads the same whether it came from PyTorch, TorchScript or Keras
(only the layer's name, its type and the tensor layout differ).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

Shape = Tuple[int, ...]

#: The kinds of finding, one wording each (see the functions below).
KINDS = ("non_finite", "residual_add", "conv_groups", "conv_input_channels", "forward_error")

SHORTCUT_ADVICE = (
    "Give the block a projection shortcut (a 1x1 conv with the block's stride + batch norm on the shortcut: "
    "`downsample` in torchvision naming, conv_shortcut=True in the Keras ResNeXt blocks) or keep the channels equal."
)
GROUPS_ADVICE = (
    "Use a groups value that divides both the input and the output channels (in ResNeXt, groups = cardinality, "
    "e.g. 32) and a weight with in_channels // groups input channels per filter; rebuild the layer rather than "
    "editing its attributes."
)
INPUT_CHANNELS_ADVICE = "Make the layer feeding it output {expected} channels, or build this conv for {got} input channels."
FORWARD_ADVICE = "Check that the model accepts this input shape and that its layers' channel counts, groups and strides agree."
WEIGHTS_ADVICE = (
    "The weights are broken (a diverged training run, or a damaged or wrongly converted checkpoint): use a "
    "checkpoint from before the divergence, or re-save the weights."
)


def fmt(shape: Sequence[int]) -> str:
    """A shape as the user reads it: ``(1, 64, 32, 32)``."""
    return str(tuple(int(s) for s in shape))


def broadcast_shapes(a: Sequence[int], b: Sequence[int]) -> Optional[Shape]:
    """The shape NumPy/PyTorch/Keras broadcasting gives ``a`` + ``b``, or None when they do not broadcast."""
    out: List[int] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = int(a[-i]) if i <= len(a) else 1
        y = int(b[-i]) if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y) if 1 in (x, y) else x)
    return tuple(reversed(out))


@dataclass(frozen=True)
class Site:
    """Where a finding is: the layer's name (module path or Keras layer name), its type, and how to call it."""

    name: str
    type_name: str
    noun: str = "block"  # "block", "layer", "conv", "module"
    scope: str = ""  # Keras's name-scope path, when it says more than the name
    detail: str = ""  # e.g. "weight (64, 8, 3, 3)" for a conv

    def describe(self) -> str:
        inner = f"{self.type_name}, {self.detail}" if self.detail else self.type_name
        text = f"{self.noun} '{self.name}' ({inner})" if self.name else f"the top-level module ({inner})"
        if self.scope and self.scope != self.name:
            text += f" in scope '{self.scope}'"
        return text


@dataclass
class Finding:
    """One problem found in the model; ``message`` is the full explanation for the user (ends with ``advice``)."""

    kind: str  # one of KINDS
    module: str  # the layer: module path as in named_modules() ("" is the top level), or the Keras layer name
    module_type: str
    message: str
    shapes: List[Shape] = field(default_factory=list)
    advice: str = ""

    @property
    def layer(self) -> str:
        return self.module

    def __str__(self) -> str:
        return self.message


def _finding(kind: str, site: Site, problem: str, advice: str, shapes: Sequence[Shape]) -> Finding:
    return Finding(kind=kind, module=site.name, module_type=site.type_name, message=f"{problem} {advice}",
                   shapes=[tuple(s) for s in shapes], advice=advice)


def residual_add(site: Site, sa: Shape, sb: Shape, shortcut: Optional[int], channel_axis: int = 1) -> Finding:
    """A feature-map add of unequal shapes; ``shortcut`` is 0 or 1 when that operand is known to be the block's
    identity shortcut, ``channel_axis`` where the channels are (1 for NCHW, -1 for NHWC)."""
    broadcast = broadcast_shapes(sa, sb)
    if broadcast is not None:
        small = next((s for s in (sa, sb) if s != broadcast), sb)
        consequence = (f"the add silently broadcasts {fmt(small)} to {fmt(broadcast)} without an error and the "
                       "model computes wrong features")
    else:
        consequence = "the add fails with a size-mismatch error"
    where = site.describe()
    if shortcut is None:
        ca, cb = _channels(sa, sb, channel_axis)
        chans = f" ({ca} vs {cb} channels)" if ca != cb else ""
        problem = (f"Residual add in {where} adds tensors of shapes {fmt(sa)} and {fmt(sb)}{chans}: a residual add "
                   f"needs both operands of identical shape, and {consequence}.")
        return _finding("residual_add", site, problem, SHORTCUT_ADVICE, [sa, sb])
    ss, sm = (sa, sb) if shortcut == 0 else (sb, sa)
    cs, cm = _channels(ss, sm, channel_axis)
    changes = []
    if len(sm) == len(ss) and len(sm) >= 3:
        if cs != cm:
            changes.append(f"channels ({cs} -> {cm})")
        spatial_s, spatial_m = _spatial(ss, channel_axis), _spatial(sm, channel_axis)
        if spatial_s != spatial_m:
            changes.append(f"spatial size ({'x'.join(map(str, spatial_s))} -> {'x'.join(map(str, spatial_m))})")
    what = " and ".join(changes) if changes else "shape"
    problem = (f"Residual add in {where} adds a main path of shape {fmt(sm)} to a shortcut of shape {fmt(ss)}"
               f"{f' ({cm} vs {cs} channels)' if cs != cm else ''}: the identity shortcut is used while the main path "
               f"changes {what}; {consequence}.")
    return _finding("residual_add", site, problem, SHORTCUT_ADVICE, [sm, ss])


def _channels(a: Shape, b: Shape, axis: int) -> Tuple[Any, Any]:
    def at(s: Shape) -> Any:
        try:
            return s[axis]
        except IndexError:
            return "?"

    return at(a), at(b)


def _spatial(s: Shape, channel_axis: int) -> Shape:
    return tuple(s[2:]) if channel_axis == 1 else tuple(s[1:-1])


@dataclass(frozen=True)
class ConvSpec:
    """What a conv layer says about itself; None where the framework does not tell."""

    in_channels: Optional[int] = None
    out_channels: Optional[int] = None
    groups: Optional[int] = None
    weight_shape: Optional[Shape] = None  # in the framework's own layout, shown to the user as is
    weight_in: Optional[int] = None  # input channels per group the weight takes
    weight_out: Optional[int] = None  # filters in the weight
    spatial_dims: Optional[int] = None


def conv_problems(spec: ConvSpec) -> List[str]:
    """One clause per inconsistency between groups, channel counts and weight. The weight is compared only when the
    channel counts divide by groups (otherwise no weight can fit, and the first clause says why)."""
    g = spec.groups
    if g is None:
        return []
    if g <= 0:
        return [f"groups={g} is not a positive integer"]
    problems = []
    if spec.in_channels is not None and spec.in_channels % g:
        problems.append(f"in_channels={spec.in_channels} is not divisible by groups={g} ({spec.in_channels} channels "
                        f"cannot be split into {g} equal groups)")
    if spec.out_channels is not None and spec.out_channels % g:
        problems.append(f"out_channels={spec.out_channels} is not divisible by groups={g}")
    if problems or spec.weight_shape is None:
        return problems
    w = fmt(spec.weight_shape)
    if spec.spatial_dims is not None and len(spec.weight_shape) != spec.spatial_dims + 2:
        return [f"its weight has shape {w}, expected {spec.spatial_dims + 2} dimensions"]
    if spec.in_channels is not None and spec.weight_in is not None and spec.weight_in * g != spec.in_channels:
        problems.append(f"its weight of shape {w} takes weight.shape[1] * groups = {spec.weight_in} * {g} = "
                        f"{spec.weight_in * g} input channels, not in_channels={spec.in_channels}")
    if spec.weight_out is not None and spec.weight_out % g:
        problems.append(f"its weight of shape {w} has {spec.weight_out} output channels, not divisible by groups={g}")
    if spec.weight_out is not None and spec.out_channels is not None and spec.weight_out != spec.out_channels:
        problems.append(f"its weight of shape {w} has {spec.weight_out} output channels, not "
                        f"out_channels={spec.out_channels}")
    return problems


def conv_groups(site: Site, problems: Sequence[str], weight_shape: Optional[Shape] = None) -> Finding:
    """A conv whose groups do not fit its channel counts or its weight (``problems``: one clause each)."""
    problem = (f"{_cap(site.describe())} is inconsistent: {'; '.join(problems)}. The layer cannot run like this (or "
               "computes garbage).")
    return _finding("conv_groups", site, problem, GROUPS_ADVICE, [weight_shape] if weight_shape else [])


def conv_input_channels(site: Site, expected: int, groups: int, in_shape: Shape, got: int) -> Finding:
    """A conv receiving another number of channels than its weight takes."""
    problem = (f"{_cap(site.describe())} expects {expected} input channels (groups={groups}) but receives a tensor "
               f"of shape {fmt(in_shape)} with {got} channels: the layer feeding it produces a different width.")
    return _finding("conv_input_channels", site, problem, INPUT_CHANNELS_ADVICE.format(expected=expected, got=got),
                    [in_shape])


def non_finite(site: Site, tensors: Sequence[Tuple[str, str, int, int]], kinds: str) -> Finding:
    """Weights holding NaN/Inf; ``tensors`` as (name, "parameter" | "buffer" | "weight", bad, numel), first named."""
    name, what, bad, numel = tensors[0]
    more = ""
    if len(tensors) > 1:
        names = ", ".join(f"'{n}'" for n, *_ in tensors[1:6])
        more = f" {len(tensors) - 1} more tensor(s) hold NaN/Inf too: {names}{' ...' if len(tensors) > 6 else ''}."
    problem = (f"The {what} '{name}' holds {kinds} ({bad} of {numel} values), so the model's outputs would be NaN "
               f"or Inf.{more}")
    return _finding("non_finite", site, problem, WEIGHTS_ADVICE, [])


def forward_error(site: Site, input_shape: Shape, exc: BaseException, detail: str) -> Finding:
    """The forward pass failed in a way no other finding explains; ``detail`` is the framework's message, cut."""
    problem = (f"The forward pass on an input of shape {fmt(input_shape)} failed in {site.describe()} with "
               f"{type(exc).__name__}: {detail}.")
    return _finding("forward_error", site, problem, FORWARD_ADVICE, [])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class CheckReport:
    """What the check looked at and found."""

    input_shape: Tuple[int, ...]
    findings: List[Finding] = field(default_factory=list)
    blocks_checked: int = 0  # distinct blocks that performed at least one residual add
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

    def error_text(self, what: str = "The model") -> str:
        """The ModelCheckError message listing every finding."""
        n = len(self.findings)
        body = self.findings[0].message if n == 1 else " ".join(f"({i}) {f.message}" for i, f in enumerate(self.findings, 1))
        return (f"{what} failed the architecture check before export (input shape {tuple(self.input_shape)}, "
                f"{n} problem{'s' if n > 1 else ''}): {body}")
