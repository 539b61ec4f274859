"""Artifacts (a file a stage produced, with its hash, backend, precision and parent) and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from .errors import BadInputError


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """One model a stage produced. ``path`` is the primary file; ``files`` maps every file to its sha256.

    Paths are relative to the build directory when the artifact lives in one (see ``relative_to``).
    """

    name: str  # unique within a build, e.g. "openvino-int8"
    path: str
    kind: str  # onnx | onnx-qdq | ort-optimized | openvino-ir | tensorrt-engine | pytorch
    backend: str  # onnxruntime | openvino | tensorrt | pytorch | onnx
    precision: str  # fp32 | fp16 | int8
    parent: Optional[str] = None
    stage: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_files(cls, name: str, paths: List[Path], root: Optional[Path] = None, **kw: Any) -> "Artifact":
        """Create an artifact whose primary file is ``paths[0]``, hashing every file."""
        rel = [str(p.relative_to(root)) if root else str(p) for p in paths]
        files = {r: sha256_file(p) for r, p in zip(rel, paths)}
        return cls(name=name, path=rel[0], files=files, **kw)

    @property
    def sha256(self) -> str:
        return self.files.get(self.path, "")

    def abspath(self, root: Optional[Path] = None) -> Path:
        return (Path(root) / self.path) if root else Path(self.path)

    def size_bytes(self, root: Optional[Path] = None) -> int:
        base = Path(root) if root else Path(".")
        return sum((base / f).stat().st_size for f in self.files)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Artifact":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@contextlib.contextmanager
def atomic_file(final: Union[str, Path]) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success rename it into place, on error remove it."""
    final = Path(final)
    ensure_writable_dir(final.parent)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: Union[str, Path]) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; on success it replaces ``final`` whole.

    A failed build leaves the previous build untouched. The swap is two renames; the old build is
    removed after the new one is in place.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a build directory is as readable as any other
    try:
        yield stage
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
        os.rename(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def ensure_writable_dir(path: Union[str, Path]) -> Path:
    """Create ``path`` if needed and make sure we can write in it, or raise BadInputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BadInputError(
            f"The output directory '{path}' is not writable ({exc.strerror or exc}). "
            "Choose another with --out, or fix its permissions."
        ) from exc
    return path
