"""The architecture check run before export: one forward pass, every add and conv watched, findings in one wording.

Layout: :mod:`.findings` (Finding, CheckReport, one wording per kind), :mod:`.engine` (CheckEngine: receives
``add(site, a_shape, b_shape)`` and ``conv(name, spec, in_shape)`` events, the static conv and NaN/Inf checks),
and one observer per framework: :mod:`.torch_eager` (hooks + TorchFunctionMode), :mod:`.torchscript`
(TorchDispatchMode) and :mod:`.keras` (Keras 3 on the torch backend). Adapters only observe; every finding's text
comes from :mod:`.findings`.

Entry points (each returns a :class:`CheckReport` and never raises for problems in the model):

- :func:`check_model` dispatches: a ``keras.Model`` to :func:`check_keras_model`, a ``torch.nn.Module`` (eager or
  TorchScript) to :func:`check_torch_module`;
- :func:`check_torch_module`, :func:`check_torchscript`, :func:`check_keras_model` for a known framework;
- :func:`check_or_raise`, :func:`check_keras_or_raise` raise ModelCheckError (exit 2) listing every finding.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .engine import CheckEngine, ConvSpec, StopForward
from .findings import CheckReport, Finding, Site, residual_add
from .run import (
    check_keras_model,
    check_keras_or_raise,
    check_model,
    check_or_raise,
    check_torch_module,
    check_torchscript,
)
from .torch_module import ADD_NAMES, nonfinite_tensors


def residual_finding(
    torch: Any, path: str, type_name: str, sa: Tuple[int, ...], sb: Tuple[int, ...], shortcut: Optional[int]
) -> Finding:
    """The finding for a residual add of NCHW shapes ``sa`` + ``sb`` in module ``path``; ``shortcut`` is the index
    (0 or 1) of the identity-shortcut operand when known (``torch`` is unused, kept for older callers)."""
    return residual_add(Site(path, type_name), tuple(sa), tuple(sb), shortcut)


__all__ = [
    "ADD_NAMES", "CheckEngine", "CheckReport", "ConvSpec", "Finding", "Site", "StopForward", "check_keras_model",
    "check_keras_or_raise", "check_model", "check_or_raise", "check_torch_module", "check_torchscript",
    "nonfinite_tensors", "residual_finding",
]
