"""Load the PyTorch model a user brings, in whatever form they saved it.

Accepted: a plain ``state_dict``; a checkpoint dict holding the weights under ``state_dict`` /
``model`` / ``model_state_dict`` (a state_dict or a whole ``nn.Module``), optionally with ``arch``,
``num_classes``, ``labels`` and ``preprocessing`` keys; keys prefixed ``module.`` (DataParallel/DDP)
or ``_orig_mod.`` (torch.compile); a safetensors file (a state_dict; ``arch`` etc. from its metadata);
TorchScript (``torch.jit.save``); a whole pickled module (``torch.save(model)``) only with ``allow_pickle``.
Whether a file may be opened, and how, is decided in :mod:`.trust`. Every failure is a :class:`BadInputError`
that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BadInputError
from ..optional import require
from .resnext import ARCHS, ArchSpec, ResNeXt, create
from .trust import torchscript_load

torch = require("torch", "load PyTorch models")
nn = torch.nn

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Checkpoint keys that may hold the weights (a state_dict or a whole module), in priority order.
WEIGHT_KEYS: Tuple[str, ...] = ("state_dict", "model", "model_state_dict")
#: Prefixes added by wrappers: DataParallel / DistributedDataParallel, and torch.compile.
WRAPPER_PREFIXES: Tuple[str, ...] = ("module.", "_orig_mod.")
#: Name of the JSON file we read from a TorchScript archive's extra files, if present.
TORCHSCRIPT_METADATA_FILE = "metadata.json"

_MAX_LISTED = 5


@dataclass
class LoadedModel:
    """A model ready for export, plus what its file told us about it.

    ``source`` is one of ``"state_dict"``, ``"checkpoint"`` (a dict with weights and metadata),
    ``"module"`` (a pickled whole module), ``"torchscript"`` or ``"safetensors"``.
    """

    module: Any  # torch.nn.Module (or torch.jit.ScriptModule), in eval mode, on the CPU
    arch: Optional[str]
    num_classes: Optional[int]
    source: str
    labels: Optional[List[str]] = None
    preprocessing: Optional[Dict[str, Any]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def is_torchscript(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)


# --------------------------------------------------------------------------------------------------
# public entry point


def load_torch_model(
    path: PathLike,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    *,
    allow_pickle: bool = False,
    fmt: Any = None,
) -> LoadedModel:
    """Load a model file of any supported form; see the module docstring.

    ``arch`` / ``num_classes`` override what the checkpoint records. Files that need full (code-executing)
    unpickling, i.e. whole pickled modules and checkpoints with Python objects beyond tensors and plain data,
    are refused (BadInputError naming the first such object) unless ``allow_pickle=True`` (``--trust-pickle``).
    ``fmt`` is the file's format plug-in (models/formats/) when the caller detected it already.
    """
    p = _check_path(path)
    if arch is not None and arch not in ARCHS:
        raise BadInputError(
            f"Unknown --arch '{arch}'. Known architectures: {', '.join(sorted(ARCHS))}. "
            "Pick the one the checkpoint was trained with."
        )
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
        raise BadInputError(f"--num-classes must be a positive integer, got {num_classes!r}.")

    from .formats import detect

    fmt = fmt or detect(p)
    read = getattr(fmt, "read", None)  # the formats that read into a torch module (formats/torch_module.py)
    if read is None:
        raise BadInputError(f"Model file '{p}' is a {fmt.name} file, not a PyTorch model; it is not read here.")
    return read(p, arch, num_classes, allow_pickle)


# --------------------------------------------------------------------------------------------------
# reading the file


def _check_path(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative paths are resolved from {Path.cwd()})"
        raise BadInputError(f"Model file '{p}' does not exist. Check the path{where}.")
    if p.is_dir():
        raise BadInputError(
            f"Model path '{p}' is a folder; pass the checkpoint file itself (a .pt/.pth saved with torch.save "
            "or torch.jit.save)."
        )
    if p.stat().st_size == 0:
        raise BadInputError(
            f"Model file '{p}' is empty (0 bytes): the save or download was interrupted. "
            "Re-save it with torch.save(...) or download it again."
        )
    return p


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


# --------------------------------------------------------------------------------------------------
# TorchScript


def load_torchscript(p: Path, arch: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    module = torchscript_load(p, extra)
    meta: Dict[str, Any] = {}
    raw = extra.get(TORCHSCRIPT_METADATA_FILE) or ""
    if raw:
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                meta = parsed
        except (ValueError, UnicodeDecodeError):
            logger.warning("Ignoring unreadable %s inside TorchScript file '%s'.", TORCHSCRIPT_METADATA_FILE, p)
    module.eval()
    recorded = meta.get("arch")
    if recorded is None:
        try:
            recorded = guess_arch(module.state_dict())
        except Exception:
            recorded = None
        if recorded is not None:
            logger.info("TorchScript '%s' has the structure of '%s'.", p, recorded)
    arch = _resolve_arch(arch, recorded, p, required=False)
    num_classes = _resolve_num_classes_for_module(module, num_classes, meta.get("num_classes"), p)
    return LoadedModel(
        module=module,
        arch=arch,
        num_classes=num_classes,
        source="torchscript",
        labels=_labels(meta.get("labels"), p),
        preprocessing=_preprocessing(meta.get("preprocessing"), p),
        metadata=_plain_metadata(meta),
    )


# --------------------------------------------------------------------------------------------------
# what torch.load returned


def from_object(obj: Any, p: Path, arch: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    if isinstance(obj, nn.Module):
        return _from_module(obj, p, arch, num_classes, meta={}, source="module")
    if not isinstance(obj, Mapping):
        raise BadInputError(
            f"Model file '{p}' holds a {type(obj).__name__}, not a model. Expected a state_dict, a checkpoint dict "
            "with the weights under 'state_dict' or 'model', a whole module saved with torch.save(model), or "
            "TorchScript. Re-save it as torch.save(model.state_dict(), path)."
        )
    if _is_state_dict(obj):
        return from_state_dict(obj, p, arch, num_classes, meta={}, source="state_dict")

    meta = dict(obj)
    for key in WEIGHT_KEYS:
        if key not in obj:
            continue
        weights = obj[key]
        if isinstance(weights, nn.Module):
            return _from_module(weights, p, arch, num_classes, meta=meta, source="checkpoint")
        if isinstance(weights, Mapping) and _is_state_dict(weights):
            return from_state_dict(weights, p, arch, num_classes, meta=meta, source="checkpoint")
        raise BadInputError(
            f"Checkpoint '{p}' has a '{key}' entry, but it is a {type(weights).__name__}, neither a state_dict "
            "(names -> tensors) nor an nn.Module. Re-save with torch.save({'state_dict': model.state_dict()}, path)."
        )
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise BadInputError(
        f"Checkpoint '{p}' is a dict without model weights: its top-level keys are {keys}. Expected a state_dict "
        f"(names -> tensors) or the weights under one of {', '.join(repr(k) for k in WEIGHT_KEYS)}. Re-save with "
        "torch.save(model.state_dict(), path) or torch.save({'state_dict': model.state_dict(), 'arch': ...}, path)."
    )


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove ``module.`` / ``_orig_mod.`` prefixes shared by all keys (DataParallel, DDP, torch.compile)."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                logger.info("Stripping the '%s' prefix from all state_dict keys.", prefix)
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    # Mixed cases (e.g. a compiled submodule): strip the infix wherever it appears.
    if any("._orig_mod." in k or k.startswith("_orig_mod.") for k in sd):
        sd = {_drop_segment(k, "_orig_mod"): v for k, v in sd.items()}
    return sd


def _drop_segment(key: str, segment: str) -> str:
    return ".".join(part for part in key.split(".") if part != segment)


def from_state_dict(
    state_dict: Mapping[str, Any],
    p: Path,
    arch: Optional[str],
    num_classes: Optional[int],
    meta: Dict[str, Any],
    source: str,
) -> LoadedModel:
    sd = strip_wrapper_prefixes(state_dict)
    arch = _resolve_arch(arch, meta.get("arch"), p, required=True, state_dict=sd)
    assert arch is not None

    fc_classes = _fc_classes(sd)
    ckpt_classes = _int_or_none(meta.get("num_classes"))
    explicit_classes = num_classes is not None
    if num_classes is None:
        num_classes = ckpt_classes or fc_classes or ARCHS[arch].default_num_classes
        how = "checkpoint" if ckpt_classes else ("fc.weight" if fc_classes else f"the {arch} default")
        logger.info("num_classes = %d (from %s).", num_classes, how)
    elif ckpt_classes is not None and ckpt_classes != num_classes:
        logger.warning(
            "--num-classes %d overrides the checkpoint's num_classes=%d for '%s'.", num_classes, ckpt_classes, p
        )

    model = create(arch, num_classes)
    _load_weights(model, sd, p, arch, num_classes, explicit_classes)
    model.eval()
    return _loaded(model, arch, num_classes, source, meta, p)


def _from_module(
    module: Any,
    p: Path,
    arch: Optional[str],
    num_classes: Optional[int],
    meta: Dict[str, Any],
    source: str,
) -> LoadedModel:
    # Unwrap DataParallel / DDP / torch.compile wrappers that were pickled whole.
    for _ in range(3):
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
    module = module.cpu()
    module.eval()
    detected = _detect_arch_of_module(module)
    ckpt_arch = meta.get("arch") if meta.get("arch") is not None else detected
    arch = _resolve_arch(arch, ckpt_arch, p, required=False)
    num_classes = _resolve_num_classes_for_module(module, num_classes, meta.get("num_classes"), p)
    return _loaded(module, arch, num_classes, source, meta, p)


def _loaded(module: Any, arch: Optional[str], num_classes: Optional[int], source: str, meta: Mapping[str, Any], p: Path) -> LoadedModel:
    """The LoadedModel, with labels/preprocessing/metadata taken (and validated) from the checkpoint's dict."""
    return LoadedModel(
        module=module,
        arch=arch,
        num_classes=num_classes,
        source=source,
        labels=_labels(meta.get("labels"), p),
        preprocessing=_preprocessing(meta.get("preprocessing"), p),
        metadata=_plain_metadata(meta),
    )


# --------------------------------------------------------------------------------------------------
# arch / num_classes / metadata


def _resolve_arch(
    explicit: Optional[str],
    recorded: Any,
    p: Path,
    required: bool,
    state_dict: Optional[Mapping[str, Any]] = None,
) -> Optional[str]:
    known = ", ".join(sorted(ARCHS))
    if recorded is not None and not isinstance(recorded, str):
        logger.warning("Ignoring the checkpoint's non-string 'arch' entry %r in '%s'.", recorded, p)
        recorded = None
    if explicit is not None:
        if recorded is not None and recorded != explicit:
            logger.warning(
                "--arch %s overrides the architecture recorded in '%s' (%s); using %s.", explicit, p, recorded, explicit
            )
        return explicit
    if recorded is not None:
        if recorded not in ARCHS:
            raise BadInputError(
                f"Checkpoint '{p}' records arch '{recorded}', which this toolkit does not know. Known "
                f"architectures: {known}. Pass --arch with the matching one (it overrides the checkpoint)."
            )
        return recorded
    if required:
        guess = guess_arch(state_dict) if state_dict is not None else None
        hint = f" The weights look like '{guess}': try --arch {guess}." if guess else ""
        raise BadInputError(
            f"Checkpoint '{p}' holds only weights (a state_dict) and does not record its architecture, so "
            f"--arch is required. Known architectures: {known}.{hint}"
        )
    return None


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None and int(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _fc_classes(sd: Mapping[str, Any]) -> Optional[int]:
    w = sd.get("fc.weight")
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[0])
    return None


def _module_classes(module: Any) -> Optional[int]:
    fc = getattr(module, "fc", None)
    out = getattr(fc, "out_features", None)
    if isinstance(out, int):
        return out
    try:
        return _fc_classes(module.state_dict())
    except Exception:
        return None


def _resolve_num_classes_for_module(module: Any, explicit: Optional[int], recorded: Any, p: Path) -> Optional[int]:
    actual = _module_classes(module)
    if explicit is not None and actual is not None and explicit != actual:
        raise BadInputError(
            f"--num-classes {explicit} disagrees with the model in '{p}', whose classifier (fc) has {actual} "
            f"outputs. Drop --num-classes or set it to {actual}."
        )
    return explicit or actual or _int_or_none(recorded)


def _detect_arch_of_module(module: Any) -> Optional[str]:
    spec = getattr(module, "spec", None)
    if isinstance(module, ResNeXt) and isinstance(spec, ArchSpec):
        for name, known in ARCHS.items():
            if known == spec:
                return name
    return None


def guess_arch(state_dict: Mapping[str, Any]) -> Optional[str]:
    """Name the known architecture whose structure (blocks per stage, groups, widths, stem) the weights match."""
    try:
        blocks: Dict[int, int] = {}
        for k in state_dict:
            parts = k.split(".")
            if len(parts) > 2 and parts[0].startswith("layer") and parts[0][5:].isdigit() and parts[1].isdigit():
                stage = int(parts[0][5:])
                blocks[stage] = max(blocks.get(stage, 0), int(parts[1]) + 1)
        if not blocks:
            return None
        layers = [blocks.get(i, 0) for i in range(1, max(blocks) + 1)]
        stem_w = state_dict["conv1.weight"]
        conv2 = state_dict["layer1.0.conv2.weight"]
        conv3 = state_dict["layer1.0.conv3.weight"]
        width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
        groups = width // per_group
        base_planes = int(conv3.shape[0]) // 4
        for name, spec in ARCHS.items():
            if (
                spec.layers == layers
                and spec.groups == groups
                and spec.base_planes == base_planes
                and spec.stem_width == int(stem_w.shape[0])
                and int(stem_w.shape[-1]) == (7 if spec.stem == "imagenet" else 3)
                and int(base_planes * spec.width_per_group / 64) * groups == width
            ):
                return name
    except (KeyError, AttributeError, IndexError, TypeError, ZeroDivisionError):
        return None
    return None


def _labels(value: Any, p: Path) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, Mapping):  # {index: name}
        try:
            return [str(value[k]) for k in sorted(value, key=int)]
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    logger.warning("Ignoring the checkpoint's 'labels' entry in '%s': expected a list, got %s.", p, type(value).__name__)
    return None


def _preprocessing(value: Any, p: Path) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    logger.warning(
        "Ignoring the checkpoint's 'preprocessing' entry in '%s': expected a dict, got %s.", p, type(value).__name__
    )
    return None


_USED_KEYS = set(WEIGHT_KEYS) | {"arch", "num_classes", "labels", "preprocessing"}


def _plain_metadata(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's other small, plain entries (epoch, accuracy, ...); tensors and optimizer state dropped."""

    def plain(v: Any, depth: int = 0) -> bool:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return True
        if depth < 2 and isinstance(v, (list, tuple)) and len(v) <= 64:
            return all(plain(x, depth + 1) for x in v)
        if depth < 2 and isinstance(v, Mapping) and len(v) <= 64:
            return all(isinstance(k, str) and plain(x, depth + 1) for k, x in v.items())
        return False

    return {k: v for k, v in meta.items() if isinstance(k, str) and k not in _USED_KEYS and plain(v)}


# --------------------------------------------------------------------------------------------------
# matching weights to the architecture


def _fmt_shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}."


def _load_weights(
    model: Any, sd: Dict[str, Any], p: Path, arch: str, num_classes: int, explicit_classes: bool
) -> None:
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (older checkpoints lack it).
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {_fmt_shape(sd[k].shape)} vs model {_fmt_shape(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched and not missing and not unexpected and guess_arch(sd) in (None, arch):
        # The same layers with other widths: a user's modified block (the seeds' bug lives here). Build those
        # layers with the checkpoint's shapes so the architecture check can name the block and both shapes.
        layers = _reshape_to_checkpoint(model, sd, expected)
        if layers is not None:
            logger.warning(
                "The weights in '%s' have other shapes than '%s' in %d layer(s) (%s); the model is built with the "
                "checkpoint's shapes.", p, arch, len(layers), ", ".join(layers[:_MAX_LISTED]))
            model.load_state_dict(sd, strict=True)
            return
    if missing or unexpected or mismatched:
        parts = [
            f"The weights in '{p}' do not match architecture '{arch}' with {num_classes} classes "
            f"({len(sd)} tensors in the checkpoint, {len(expected)} in the model)."
        ]
        if missing:
            parts.append(_listing("Missing from the checkpoint", missing))
        if unexpected:
            parts.append(_listing("Unexpected in the checkpoint", unexpected))
        if mismatched:
            parts.append(_listing("Shape mismatches", mismatched))
        hints = []
        only_fc = not missing and not unexpected and all(m.startswith(("fc.weight:", "fc.bias:")) for m in mismatched)
        fc_classes = _fc_classes(sd)
        if only_fc and fc_classes is not None:
            hints.append(
                f"only the classifier differs: is --num-classes right? The checkpoint has {fc_classes} classes "
                f"(drop --num-classes or pass --num-classes {fc_classes})"
            )
        else:
            guess = guess_arch(sd)
            if guess and guess != arch:
                hints.append(f"is --arch right? The weights look like '{guess}' (try --arch {guess})")
            else:
                hints.append(f"is --arch right (known: {', '.join(sorted(ARCHS))})?")
            if fc_classes is not None and fc_classes != num_classes and explicit_classes:
                hints.append(f"is --num-classes right? The checkpoint's fc has {fc_classes} outputs")
            if unexpected and not missing:
                hints.append("were the weights saved from a model with extra layers (e.g. a wrapper or a head)?")
        check = "; ".join(hints)
        parts.append("Check: " + check + ("" if check.endswith("?") else "."))
        raise BadInputError(" ".join(parts))
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as exc:  # should not happen after the checks above; keep the promise of no traceback
        raise BadInputError(
            f"The weights in '{p}' could not be loaded into '{arch}': {_first_line(str(exc))}. "
            "Check --arch and --num-classes, or re-save the checkpoint."
        ) from None


def _reshape_to_checkpoint(model: Any, sd: Mapping[str, Any], expected: Mapping[str, Any]) -> Optional[List[str]]:
    """Give every conv / BatchNorm layer whose weights differ in shape the checkpoint's shape; None when
    another kind of layer differs (then the mismatch is reported as it is)."""
    owners = sorted({k.rsplit(".", 1)[0] for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)})
    mods = dict(model.named_modules())
    if "fc" in owners or not all(isinstance(mods.get(o), (nn.Conv2d, nn.BatchNorm2d)) for o in owners):
        return None  # the classifier's size is --num-classes' business; other layers are not ours to guess
    for name in owners:
        m = mods[name]
        for pname, param in list(m.named_parameters(recurse=False)):
            m.register_parameter(pname, nn.Parameter(sd[f"{name}.{pname}"].detach().clone().float()))
        for bname, buf in list(m.named_buffers(recurse=False)):
            key = f"{name}.{bname}"
            if key in sd:
                m.register_buffer(bname, sd[key].detach().clone())
        w = m.weight
        if isinstance(m, nn.Conv2d):
            # in_channels is what the weights take; a layer feeding it another width is then found by the check.
            m.out_channels, m.in_channels = int(w.shape[0]), int(w.shape[1]) * m.groups
        else:
            m.num_features = int(w.shape[0])
    return owners
