"""The check engine: receives framework-neutral events (an add of two shapes, a conv's spec or its input) and turns
them into findings. Adapters (torch_eager, torchscript, keras) only observe a forward pass and call it.

The engine keeps the counts of the :class:`~.findings.CheckReport` and stops the forward at the first fatal
finding by raising :class:`StopForward` (a BaseException, so a user's ``except Exception`` cannot swallow it).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

from . import findings
from .findings import CheckReport, ConvSpec, Finding, Shape, Site, conv_problems, fmt

logger = logging.getLogger(__name__)


class StopForward(BaseException):
    """Raised inside the checked forward after the first fatal finding."""


def conv_site(name: str, type_name: str, spec: ConvSpec) -> Site:
    """How a conv finding names its layer: name, type and the weight's shape when known."""
    detail = f"weight {fmt(spec.weight_shape)}" if spec.weight_shape is not None else ""
    return Site(name, type_name, noun="conv", detail=detail)


class CheckEngine:
    """Collects one model's findings and counts; every adapter feeds one of these."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.report = CheckReport(input_shape=tuple(int(s) for s in input_shape))
        self._blocks: Dict[str, None] = {}
        self._untyped_convs = 0

    # ---- static facts ------------------------------------------------------------------------------
    def weights(self, site: Site, tensors: Sequence[Tuple[str, str, int, int]], kinds: str) -> None:
        """NaN/Inf weights (see :func:`findings.non_finite`); not fatal: the forward still shows the structure."""
        if tensors:
            self.record(findings.non_finite(site, tensors, kinds))

    def conv_layer(self, name: str, type_name: str, spec: ConvSpec) -> bool:
        """A conv layer seen before the forward; True when it is consistent (or cannot be judged)."""
        self.report.convs_checked += 1
        if spec.groups is None:
            self._untyped_convs += 1
            return True
        if spec.groups > 1:
            self.report.grouped_convs += 1
            self.report.grouped_conv_names.append(name)
        return self.conv_consistent(name, type_name, spec)

    def conv_consistent(self, name: str, type_name: str, spec: ConvSpec) -> bool:
        """Record a conv_groups finding when ``spec`` is inconsistent (not counted: for a conv counted before,
        whose input channels became known later, e.g. when Keras builds it)."""
        problems = conv_problems(spec)
        if problems:
            self.record(findings.conv_groups(conv_site(name, type_name, spec), problems, spec.weight_shape))
        return not problems

    # ---- forward events ----------------------------------------------------------------------------
    def conv(self, name: str, type_name: str, spec: ConvSpec, in_shape: Shape, channel_axis: int = 1) -> None:
        """A conv about to run on ``in_shape``; ``spec`` as known at run time (groups and weight at least)."""
        problems = conv_problems(ConvSpec(groups=spec.groups, weight_shape=spec.weight_shape, weight_out=spec.weight_out))
        if problems:
            self.fatal(findings.conv_groups(conv_site(name, type_name, spec), problems, spec.weight_shape))
        expected = spec.in_channels
        if expected is None and spec.weight_in is not None and spec.groups:
            expected = spec.weight_in * spec.groups
        if expected is None or len(in_shape) < 3:
            return
        got = int(in_shape[channel_axis])
        if got != expected:
            site = conv_site(name, type_name, spec)
            self.fatal(findings.conv_input_channels(site, expected, spec.groups or 1, tuple(in_shape), got))

    def add(self, site: Site, sa: Shape, sb: Shape, shortcut: Optional[int] = None, channel_axis: int = 1) -> None:
        """A feature-map + feature-map add in ``site`` (the block it counts for); fatal when the shapes differ."""
        self.report.residual_adds += 1
        self._blocks.setdefault(site.name, None)
        sa, sb = tuple(int(s) for s in sa), tuple(int(s) for s in sb)
        if sa != sb:
            self.fatal(findings.residual_add(site, sa, sb, shortcut, channel_axis))

    def forward_failed(self, site: Site, exc: BaseException, detail: str) -> None:
        """The forward raised something no event explained (``detail``: the framework's message)."""
        detail = " ".join(detail.split()).rstrip(".")
        detail = detail[:300] + ("..." if len(detail) > 300 else "")
        self.record(findings.forward_error(site, self.report.input_shape, exc, detail))

    def not_covered(self, what: str) -> None:
        self.report.uncovered.append(what)

    # ---- outcome -----------------------------------------------------------------------------------
    def record(self, finding: Finding) -> None:
        # A framework may run a layer twice (Keras's output-spec probe on the meta device swallows our stop and
        # runs it again on real tensors): one finding per kind, layer and shapes; the first is kept.
        key = (finding.kind, finding.module, frozenset(finding.shapes), finding.message if not finding.shapes else "")
        if all(key != (f.kind, f.module, frozenset(f.shapes), f.message if not f.shapes else "")
               for f in self.report.findings):
            self.report.findings.append(finding)

    def fatal(self, finding: Finding) -> None:
        self.record(finding)
        raise StopForward()

    def finish(self) -> CheckReport:
        report = self.report
        report.blocks = list(self._blocks)
        report.blocks_checked = len(report.blocks)
        if self._untyped_convs:
            report.notes.append(
                f"{self._untyped_convs} conv(s) expose no groups value (neither as an attribute nor as a constant in "
                "their TorchScript graph): their groups were checked only when the forward pass ran them")
        for u in report.uncovered:
            logger.warning("architecture check: not checked: %s", u)
        logger.info(report.summary())
        for f in report.findings:
            logger.debug("check finding [%s] %s", f.kind, f.message)
        return report
