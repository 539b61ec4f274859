"""Make a model hostile to INT8 without changing what it computes (a test case for accuracy fallback).

In a bottleneck block ``conv1 -> bn1 -> ReLU -> conv2``, multiply output channel ``c`` of ``bn1`` (its
weight and bias) by ``factor`` and divide the weights conv2 applies to input channel ``c`` by ``factor``.
ReLU is positively homogeneous (``relu(k*x) = k*relu(x)`` for ``k > 0``), so conv2 receives the same
products and the float function is unchanged (exactly, when ``factor`` is a power of two: every scaling
is then exact in floating point). After export bn1 folds into conv1, so conv1's output channel ``c``
and the ReLU tensor between the two convolutions are ``factor`` times larger than the other channels.

INT8 quantizes that tensor per tensor: its scale follows the inflated channel and the other channels
fall into a few quantization steps (with ``factor = 256`` about 8 bits are gone). conv2's weights for
channel ``c`` shrink below half a per-output-channel step and round to zero. The damage sits in
exactly two layers per block, conv1 and conv2: they write and read the inflated tensor, and ONNX
Runtime keeps its Q/DQ pair while either of them is quantized. Leaving both in float repairs the model.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ...buildfolder.artifacts import atomic_file
from ...errors import BadInputError
from ...optional import require

log = logging.getLogger(__name__)

DEFAULT_BLOCKS = ("layer1.0", "layer2.0")
DEFAULT_FACTOR = 256.0


def onnx_node_name(module_path: str, op_type: str = "Conv") -> str:
    """The node name torch's ONNX exporter gives a module's op: 'layer1.0.conv1' -> '/layer1/layer1.0/conv1/Conv'.

    The exporter names a scope by the module's attribute name, and a numbered child of a Sequential by
    its parent's name, a dot and the index.
    """
    scopes: List[str] = []
    prev = ""
    for part in module_path.split("."):
        scopes.append(f"{prev}.{part}" if part.isdigit() and prev else part)
        prev = part
    return "/" + "/".join(scopes) + f"/{op_type}"


def make_quantization_hostile(
    module: Any, blocks: Sequence[str] = DEFAULT_BLOCKS, factor: float = DEFAULT_FACTOR, channel: int = 0
) -> List[Dict[str, Any]]:
    """Inflate ``channel`` between conv1 and conv2 of each bottleneck in ``blocks``, in place (see module doc).

    Returns one record per block: the block, channel, factor and the two layers (module paths and
    ONNX node names) that were made hostile.
    """
    torch = require("torch", "transform a PyTorch model")
    if not factor > 0:
        raise BadInputError(f"The hostile factor must be positive (ReLU commutes only with positive scales), got {factor}.")
    if not math.log2(factor).is_integer():
        log.warning("hostile factor %g is not a power of two: the float function changes by rounding", factor)
    records = []
    for name in blocks:
        try:
            block = module.get_submodule(name)
        except AttributeError as exc:
            raise BadInputError(f"The model has no block '{name}' ({exc}). Name a bottleneck block, e.g. layer1.0.") from exc
        for part in ("conv1", "bn1", "conv2"):
            if not hasattr(block, part):
                raise BadInputError(f"'{name}' is not a bottleneck block (no {part}); name one like layer1.0.")
        bn, conv2 = block.bn1, block.conv2
        if not 0 <= channel < bn.num_features:
            raise BadInputError(f"Channel {channel} is out of range for '{name}' ({bn.num_features} channels).")
        in_per_group = conv2.in_channels // conv2.groups
        out_per_group = conv2.out_channels // conv2.groups
        group = channel // in_per_group
        with torch.no_grad():
            bn.weight[channel] *= factor
            bn.bias[channel] *= factor
            # A grouped conv2 sees input channel c only in the output channels of c's group.
            conv2.weight[group * out_per_group : (group + 1) * out_per_group, channel % in_per_group] /= factor
        layers = [f"{name}.conv1", f"{name}.conv2"]
        records.append({
            "block": name, "channel": int(channel), "factor": float(factor),
            "layers": layers, "onnx_nodes": [onnx_node_name(p) for p in layers],
        })
    return records


def write_hostile_demo(
    out: Union[str, Path], blocks: Sequence[str] = DEFAULT_BLOCKS, factor: float = DEFAULT_FACTOR,
    channel: int = 0, source: Optional[Union[str, Path]] = None, allow_pickle: bool = False,
) -> Dict[str, Any]:
    """Write the demo checkpoint (or ``source``, a checkpoint dict) made hostile; returns what was changed.

    The checkpoint keeps the demo's arch, labels and preprocessing and records the change under
    ``hostile`` so a report can name the layers that should come back in float. ``allow_pickle``: a ``source``
    that needs full unpickling (see models/trust.py).
    """
    torch = require("torch", "write the hostile demo checkpoint")
    from .digits import DEMO_CHECKPOINT
    from ..loading import load_torch_model

    source = Path(source) if source else DEMO_CHECKPOINT
    loaded = load_torch_model(source, allow_pickle=allow_pickle)
    module = copy.deepcopy(loaded.module).eval()
    records = make_quantization_hostile(module, blocks, factor, channel)
    checkpoint = {
        "arch": loaded.arch,
        "num_classes": loaded.num_classes,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()},
        "labels": loaded.labels,
        "preprocessing": loaded.preprocessing,
        "hostile": records,
    }
    out = Path(out)
    with atomic_file(out) as tmp:
        torch.save(checkpoint, tmp)
    return {"checkpoint": str(out), "source": str(source), "hostile": records}
