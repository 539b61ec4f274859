"""An ONNX model a user brings, checked like a PyTorch one before any stage uses it (issue 28).

External data must lie in the model's folder and within the size limits (archive_bounds); float initializers must
be finite (a NaN scale otherwise surfaces as "AssertionError: scale issue" or a NaN OpenVINO IR); a model that is
already quantized (Q/DQ or QLinear/Integer operators) is not a float source for `build`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator, List, Union

import numpy as np

from ..errors import BadInputError
from ..names import shown
from ..optional import require
from .archive_bounds import check_sizes

PathLike = Union[str, "os.PathLike[str]"]

#: operators only a quantized model holds
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                           "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm"})


def _graph(path: Path) -> Any:
    onnx = require("onnx", "read ONNX models")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types
        raise BadInputError(f"'{shown(str(path))}' is not a readable ONNX model ({exc}). Re-export it.") from exc


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, Constant values and those of subgraphs (If, Loop, Scan)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _external_tensors(proto: Any) -> List[Any]:
    from onnx.external_data_helper import uses_external_data

    return [t for t in _tensors(proto.graph) if uses_external_data(t)]


def external_files(path: PathLike, proto: Any = None) -> List[Path]:
    """The external-data files of the model at ``path``, each checked to be a regular file inside the model's
    folder and to hold what the graph says; their sizes against archive_bounds. BadInputError otherwise."""
    p = Path(path)
    proto = proto if proto is not None else _graph(p)
    folder = Path(os.path.realpath(p.parent))
    files: List[Path] = []
    entries = []
    for t in _external_tensors(proto):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if "\x00" in loc:  # no file system has such a name; os.path would raise ValueError (found by the fuzz test)
            raise BadInputError(f"The ONNX model '{shown(str(p))}' keeps tensor '{shown(t.name)}' in "
                                f"'{shown(loc)}', a location holding a NUL byte: not a file name. Re-save the model.")
        real = Path(os.path.realpath(folder / loc))
        if not loc or os.path.isabs(loc) or folder not in real.parents:
            raise BadInputError(
                f"The ONNX model '{shown(str(p))}' keeps tensor '{shown(t.name)}' in '{shown(loc)}', outside the model's "
                f"folder '{shown(str(folder))}': refused (a model may only read data beside it). Move the data file "
                "beside the model and re-save it with that relative location."
            )
        if not real.is_file():
            raise BadInputError(f"The ONNX model '{shown(str(p))}' needs its external data file '{shown(loc)}' "
                                f"beside it (tensor '{shown(t.name)}'); it is missing or not a regular file.")
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
        if offset < 0 or length < 0 or offset + length > real.stat().st_size:
            raise BadInputError(f"The ONNX model '{shown(str(p))}' reads tensor '{shown(t.name)}' past the end of "
                                f"'{shown(loc)}' (offset {offset}, length {length}): the data file is truncated.")
        entries.append((t.name, length or real.stat().st_size, -1))
        if real not in files:
            files.append(real)
    check_sizes(p, entries)
    return files


def _non_finite(proto: Any) -> List[str]:
    from onnx import numpy_helper

    bad = []
    for t in _tensors(proto.graph):
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            bad.append(t.name)
    return bad


def scan_onnx(path: PathLike, quantized_ok: bool = True) -> None:
    """Refuse (BadInputError, exit 2) an ONNX model whose external data is outside its folder or too large, whose
    float initializers hold NaN or Inf (naming the first tensors), or (``quantized_ok`` False: a float source for
    `build`) that is already quantized."""
    p = Path(path)
    proto = _graph(p)
    external_files(p, proto)
    if not quantized_ok:
        ops = sorted({n.op_type for n in proto.graph.node if n.op_type in QUANTIZED_OPS})
        if ops:
            raise BadInputError(
                f"The ONNX model '{shown(str(p))}' is already quantized (it has {', '.join(ops)} nodes): `build` "
                "needs the float model. Pass the FP32 ONNX (or the PyTorch / Keras model) it was made from; "
                "`compile` and `evaluate` take a quantized ONNX as it is."
            )
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(proto, str(p.parent))
    bad = _non_finite(proto)
    if bad:
        shown_names = ", ".join(f"'{shown(n)}'" for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise BadInputError(
            f"The ONNX model '{shown(str(p))}' has NaN or Inf in {len(bad)} initializer(s): {shown_names}. "
            "Its outputs would be NaN; re-export it from a model whose weights are finite."
        )


def copy_onnx(src: PathLike, dst: PathLike) -> List[Path]:
    """Copy an ONNX model and its external data (if any) to ``dst``; the files written, ``dst`` first.

    A model with external data is re-saved with its data in one file beside ``dst`` (``<dst name>.data``)."""
    src, dst = Path(src), Path(dst)
    proto = _graph(src)
    if not _external_tensors(proto):
        shutil.copyfile(src, dst)
        return [dst]
    onnx = require("onnx", "write ONNX models")
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(proto, str(src.parent))
    data = dst.with_name(dst.name + ".data")
    onnx.save_model(proto, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [dst, data]
