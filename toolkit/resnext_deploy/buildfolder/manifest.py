"""manifest.json: what a build is made of — inputs and artifacts with sha256, versions, preprocessing, recipe."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from .artifacts import Artifact, atomic_file, sha256_file
from ..host.cpu import host_cpu
from ..errors import BadInputError

MANIFEST_SCHEMA = "resnext-deploy/manifest"
MANIFEST_SCHEMA_VERSION = 1
_VERSIONED = ("numpy", "PIL", "onnx", "onnxruntime", "openvino", "torch", "onnxslim", "tensorrt", "nncf")


def library_versions() -> Dict[str, str]:
    """Versions of the libraries already imported (never imports a heavy one just to ask)."""
    from .. import __version__

    out = {"resnext_deploy": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in _VERSIONED:
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "unknown"))
    out["cpu"] = host_cpu().model
    return out


def folder_digest(paths: Iterable[Path]) -> str:
    """One sha256 over the (name, content hash) of each file: identifies a calibration/validation set."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(os.fsencode(p.name))  # the name's bytes: a name that is not UTF-8 is hashed as it is
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def make_manifest(
    *,
    model: Dict[str, Any],
    target: str,
    recipe: Dict[str, Any],
    recipe_source: str,
    preprocessing: Dict[str, Any],
    inputs: Dict[str, Any],
    artifacts: List[Artifact],
    reports: Dict[str, str],
    gate: Dict[str, Any],
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "model": model,
        "target": target,
        "recipe_source": recipe_source,
        "recipe": recipe,
        "preprocessing": preprocessing,
        "inputs": inputs,
        "artifacts": [a.to_dict() for a in artifacts],
        "reports": reports,
        "gate": gate,
        # The build machine's ISA and the CPU class the INT8 artifacts were made for (runtime.load compares
        # the device's ISA with it; each Q/DQ artifact's settings.weight_range says what it holds).
        "isa": {"build": host_cpu().to_dict(), "target": recipe.get("quantize", {}).get("isa_class", "x86-64")},
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(manifest: Dict[str, Any], out_dir: Union[str, Path]) -> Path:
    path = Path(out_dir) / "manifest.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def read_manifest(build_dir: Union[str, Path]) -> Dict[str, Any]:
    """Read and version-check a build's manifest."""
    build_dir = Path(build_dir)
    path = build_dir / "manifest.json" if build_dir.is_dir() else build_dir
    if not path.is_file():
        raise BadInputError(f"No manifest.json at '{build_dir}'. Pass a build directory made by `resnext-deploy build`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"'{path}' is not a readable manifest: {exc}. Rebuild the directory.") from exc
    if data.get("schema") != MANIFEST_SCHEMA:
        raise BadInputError(f"'{path}' is not a resnext-deploy manifest (schema {data.get('schema')!r}).")
    if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise BadInputError(
            f"'{path}' has manifest schema version {data.get('schema_version')!r}; this resnext-deploy reads "
            f"version {MANIFEST_SCHEMA_VERSION}. Rebuild it with this version, or install the version that made it."
        )
    return data


def int8_weight_range(manifest: Dict[str, Any], name: str) -> str:
    """The weight range ("7bit" | "full") of INT8 artifact ``name``: its own or its nearest ancestor's
    ``settings.weight_range``; "full" when none records one (builds before it was recorded were full-range)."""
    by_name = {a.get("name"): a for a in manifest.get("artifacts", [])}
    seen = set()
    while name in by_name and name not in seen:
        seen.add(name)
        art = by_name[name]
        recorded = (art.get("settings") or {}).get("weight_range")
        if recorded:
            return str(recorded)
        name = art.get("parent")
    return "full"


def verify_artifacts(manifest: Dict[str, Any], root: Union[str, Path]) -> List[str]:
    """Files whose sha256 differs from the manifest's (or that are missing): empty when all match."""
    bad = []
    for art in manifest.get("artifacts", []):
        for rel, digest in art.get("files", {}).items():
            p = Path(root) / rel
            if not p.is_file():
                bad.append(f"{rel}: missing")
            elif sha256_file(p) != digest:
                bad.append(f"{rel}: sha256 differs from the manifest")
    return bad
