"""May this model file run code? The one place that decides, and the only code that opens model files for it.

Model files are data. By default the toolkit reads them only in ways that cannot run code from the file:

- PyTorch checkpoints (``torch.save``): ``torch.load(weights_only=True)``, torch's restricted unpickler, with the
  globals in :data:`SAFE_GLOBALS` added for this one call;
- safetensors: a JSON header and raw tensor bytes (``safetensors.torch.load_file``);
- TorchScript (``torch.jit.save``): ``torch.jit.load``, whose program runs in PyTorch's TorchScript interpreter,
  which can call torch operators but not Python;
- ONNX: protobuf, read by onnx / ONNX Runtime / OpenVINO.

A file that needs full unpickling (a whole pickled ``nn.Module``, a checkpoint carrying other Python objects) or a
Keras file that needs ``safe_mode=False`` (Lambda layers, custom objects) runs code from the file while it loads.
Such a file is refused with a :class:`BadInputError` (exit 2) naming what it asks for, unless the user opted in
(``--trust-pickle`` on the CLI, ``allow_pickle=True`` in Python): :func:`refuse_code_execution` is that switch.
The opt-in is logged as a warning before anything from the file runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import BadInputError
from ..optional import require
from .archive_bounds import check_archive

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: The CLI flag and the Python argument that let a file run code while it loads.
TRUST_FLAG = "--trust-pickle"
PYTHON_OPT_IN = "allow_pickle=True"

#: Globals a real checkpoint carries that torch's own allow-list (OrderedDict, Counter, torch.Size, Parameter,
#: Tensor, dtypes, devices, set, complex, bytearray) lacks, allowed for our ``torch.load`` call only (never
#: process-wide, so a user's own ``torch.load`` in the same process is not loosened).
#: - ``argparse.Namespace``: torchvision's reference training script (the usual way ResNeXt is trained) and timm
#:   save the run's ``args`` in every checkpoint. It is an attribute bag: unpickling calls ``Namespace()`` and sets
#:   attributes whose values go through the same restricted unpickler; no method of it runs code.
#: Not allowed: numpy scalars/arrays (``numpy._core.multiarray.scalar`` / ``_reconstruct`` hand back objects of any
#: dtype, including ``object``, and need numpy's per-dtype classes): such a checkpoint needs the opt-in, or re-saving
#: the number as a Python float.
SAFE_GLOBALS: Tuple[str, ...] = ("argparse.Namespace",)

#: File name endings read as Keras files (models/keras.py loads them; it calls refuse_code_execution).
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

_GLOBAL_IN_REFUSAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def refuse_code_execution(path: PathLike, why: str, allow_pickle: bool) -> None:
    """The opt-in gate: raise BadInputError unless ``allow_pickle``; with it, log a warning and return.

    ``why`` completes the sentence "Model file '<path>' ..." and says what in the file would run code, e.g.
    "needs full unpickling: it asks for the Python global 'posix.system'" or "has a Lambda layer". Call this
    BEFORE loading anything that runs code: with the opt-in, the warning is then logged before the file's code runs.
    """
    if allow_pickle:
        logger.warning(
            "Model file '%s' %s. Loading it anyway because of %s / %s: this runs code from the file with your "
            "permissions.", path, why, TRUST_FLAG, PYTHON_OPT_IN,
        )
        return
    raise BadInputError(
        f"Model file '{path}' {why}. Loading it would run code from the file, so it is refused. If you made the "
        f"file or trust where it came from, pass {TRUST_FLAG} ({PYTHON_OPT_IN} in Python): the file can then do "
        "anything your user account can. Better, re-save only the weights: torch.save(model.state_dict(), path) or "
        "safetensors.torch.save_file(model.state_dict(), path), or export TorchScript or ONNX."
    )


# --------------------------------------------------------------------------------------------------
# which format


def model_format(path: PathLike) -> str:
    """``"onnx"``, ``"safetensors"``, ``"keras"``, ``"torchscript"`` or ``"torch"`` (a torch.save file), from the
    name and the first bytes; reads no more of the file than its header (and a zip's directory). An archive that
    would unpack past the limits of archive_bounds is refused here, before any loader."""
    p = Path(path)
    check_archive(p)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix == ".safetensors" or _looks_like_safetensors(p):
        return "safetensors"
    if is_torchscript_archive(p):
        return "torchscript"
    return "torch"


def _looks_like_safetensors(p: Path) -> bool:
    """safetensors has no magic number: an 8-byte little-endian header length, then a JSON object."""
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def is_torchscript_archive(p: Path) -> bool:
    """True for a TorchScript zip (it has ``constants.pkl`` and ``code/`` entries; torch.save files do not)."""
    with p.open("rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        return False
    if not zipfile.is_zipfile(p):
        # A torch.save/jit.save file is a zip: one without an end record was cut short.
        raise unreadable(p, "zip archive without a central directory", truncated=True)
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise unreadable(p, str(exc), truncated=True) from None
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" or "/code/" in n for n in names)


def unreadable(p: Path, detail: str, truncated: bool = False) -> BadInputError:
    """The error for a model file that is damaged or not what its name says."""
    what = (
        "is truncated (its zip archive has no end record: an interrupted save, copy or download)"
        if truncated
        else "is truncated, corrupt or not a PyTorch file"
    )
    detail = " ".join(detail.split())
    if len(detail) > 200:
        detail = detail[:200] + "..."
    return BadInputError(
        f"Model file '{p}' ({p.stat().st_size} bytes) could not be read: it {what}. "
        "Re-save it with torch.save(model.state_dict(), path) (or torch.jit.save for TorchScript) or download "
        f"it again, and check that the file is complete. (Detail: {detail})"
    )


# --------------------------------------------------------------------------------------------------
# loaders


def torch_load(path: PathLike, allow_pickle: bool = False) -> Any:
    """``torch.load`` a torch.save file: the safe loader, and full unpickling only after the opt-in.

    The safe loader (``weights_only=True``) runs nothing from the file. When it refuses the file, the refusal
    names the first global the file asks for; without ``allow_pickle`` that is a BadInputError, with it a warning
    and then ``weights_only=False``.
    """
    torch = require("torch", "load PyTorch checkpoints")
    p = Path(path)
    try:
        with _allowing_safe_globals(torch):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise unreadable(p, f"{type(exc).__name__}: {exc}") from None
        refusal = str(exc)
    except Exception as exc:  # RuntimeError (zip reader), EOFError, KeyError, ... from a damaged file
        raise unreadable(p, f"{type(exc).__name__}: {exc}") from None

    first = first_unsafe_global(p, refusal)
    if first is not None:
        refuse_code_execution(p, _needs_unpickling(first), allow_pickle)
    elif not allow_pickle:
        # No global named: the safe loader met pickle it does not read (random bytes, another format, or a
        # pickle protocol above torch.save's default 2). Nothing was unpickled.
        raise BadInputError(
            f"Model file '{p}' ({p.stat().st_size} bytes) could not be read by the safe loader (torch.load with "
            f"weights_only=True: {_refusal_reason(refusal)}): it is not a PyTorch checkpoint, is damaged, or was "
            "written with a pickle protocol the safe loader does not read. Re-save it with "
            f"torch.save(model.state_dict(), path), or save it as safetensors. Only for a file you made yourself: "
            f"{TRUST_FLAG} ({PYTHON_OPT_IN}) reads it with full unpickling, which runs code from the file."
        )
    else:
        refuse_code_execution(p, "cannot be read by the safe loader (torch.load with weights_only=True)", True)
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise BadInputError(
            f"Model file '{p}' is a pickled Python object whose class cannot be imported here ({exc}). "
            "A whole module saved with torch.save(model) can only be loaded where the code that defined its "
            "class is importable. Re-save it as weights (torch.save(model.state_dict(), path)) and pass --arch, "
            "or export it with torch.jit.save, or put the defining module on PYTHONPATH."
        ) from None
    except Exception as exc:
        raise unreadable(p, f"{type(exc).__name__}: {exc}") from None


def refuse_early(path: PathLike, allow_pickle: bool) -> None:
    """Refuse now a torch.save file that will need the opt-in, from a static scan of its pickle (nothing unpickled,
    no tensor read): for a loader that runs later or in another process (a bench worker). Other formats, files the
    scan cannot read, and ``allow_pickle`` pass; the loader itself still decides."""
    p = Path(path)
    if allow_pickle or not p.is_file() or model_format(p) != "torch":
        return
    first = first_unsafe_global(p)
    if first is not None:
        refuse_code_execution(p, _needs_unpickling(first), False)


def _needs_unpickling(first: str) -> str:
    return (
        f"needs full unpickling: it asks for the Python global '{first}', which the safe loader (torch.load with "
        "weights_only=True) does not allow (a whole pickled module, or Python objects beside the weights)"
    )


def _allowing_safe_globals(torch: Any) -> Any:
    """SAFE_GLOBALS allowed inside the block only (torch >= 2.5; before, the file needs the opt-in)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped(_safe_globals()) if scoped is not None else contextlib.nullcontext()


def _safe_globals() -> List[Any]:
    import argparse

    objects = {"argparse.Namespace": argparse.Namespace}
    return [objects[name] for name in SAFE_GLOBALS]


def _refusal_reason(refusal: str) -> str:
    """The line of torch's refusal that says what it met (e.g. 'Unsupported operand 31'), not its advice."""
    lines = [ln.strip() for ln in refusal.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith(("unsupported", "trying to load", "can only build")):
            return ln
    return lines[-1] if lines else refusal


def first_unsafe_global(path: PathLike, refusal: str = "") -> Optional[str]:
    """The first global the file asks for that the safe loader refuses; None when none is named.

    torch's refusal names the global at which its restricted unpickler stopped (the first, in file order); when
    it does not, torch's static scan of the pickle (no unpickling) lists the refused ones.
    """
    m = _GLOBAL_IN_REFUSAL.search(refusal)
    if m:
        return m.group(1)
    torch = require("torch", "inspect PyTorch checkpoints")
    try:
        with _allowing_safe_globals(torch):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint, or opcodes the scan does not know: no name to give
        return None
    return sorted(names)[0] if names else None


def torchscript_load(path: PathLike, extra_files: Dict[str, Any]) -> Any:
    """``torch.jit.load`` on the CPU (TorchScript runs torch operators only, so it needs no opt-in)."""
    torch = require("torch", "load TorchScript models")
    p = Path(path)
    try:
        return torch.jit.load(str(p), map_location="cpu", _extra_files=extra_files)
    except Exception as exc:
        raise unreadable(p, f"{type(exc).__name__}: {exc}") from None


def safetensors_load(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The tensors of a safetensors file (on the CPU) and its metadata.

    The header's ``__metadata__`` holds strings only; ``arch`` and ``num_classes`` are taken as they are and
    ``labels`` / ``preprocessing`` are parsed as JSON when they are.
    """
    require("safetensors", "load safetensors files")
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            raw = dict(fh.metadata() or {})
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(
            f"Model file '{p}' ({p.stat().st_size} bytes) could not be read as safetensors: it is truncated, corrupt "
            "or not a safetensors file. Re-save it with safetensors.torch.save_file(model.state_dict(), path). "
            f"(Detail: {type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    meta: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("labels", "preprocessing"):
            try:
                meta[key] = json.loads(value)
            except ValueError:
                logger.warning("Ignoring the safetensors metadata '%s' of '%s': it is not JSON.", key, p)
        else:
            meta[key] = value
    return tensors, meta
