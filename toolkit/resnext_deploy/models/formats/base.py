"""The interface every model format implements, and what the pipeline gets back from it.

A format knows how to recognise its files from their bytes, refuse what would run code (the trust rule), load a
:class:`ModelSource`, check the architecture, export to ONNX with the numeric comparison, and run itself as the
float reference. Nothing outside ``models/formats/`` tests a format's name: it asks the plug-in.
"""

from __future__ import annotations

import abc
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ...buildfolder.artifacts import Artifact, sha256_file
from ...preprocess import Preprocessing

#: the first bytes of an HDF5 file (legacy Keras .h5)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
#: how many leading bytes detection reads
HEAD_BYTES = 16


@dataclass
class LoadRequest:
    """What the user said about the model besides its path (--arch, --num-classes, --preprocessing, --trust-pickle)."""

    arch: Optional[str] = None
    num_classes: Optional[int] = None
    overrides: Dict[str, Any] = field(default_factory=dict)  # the recipe's [preprocess]
    preprocessing: Optional[str] = None  # --preprocessing: a preset name or a JSON file
    allow_pickle: bool = False
    need_preprocessing: bool = True  # False: a format that carries none may fall back to the defaults (check)


@dataclass
class ModelSource:
    """What the user brought, resolved: the model (a torch module, a Keras model, or an ONNX file) and its metadata."""

    name: str
    path: Path
    format: "ModelFormat"
    arch: Optional[str]
    num_classes: Optional[int]
    labels: Optional[List[str]]
    preprocessing: Preprocessing
    module: Any = None  # the framework's model object; None when the model is an ONNX file
    source_kind: str = ""  # how the file was read ("state_dict", "checkpoint", "torchscript", "keras", ...)
    #: where ``labels`` came from: the model itself, or (a model without labels) what a build recorded or the
    #: validation folders' sorted names (pipeline/labels.py)
    labels_from: str = "the model"
    #: a shipped demo model: its data folders are the default (pipeline/source.py:data_folders)
    is_demo: bool = False

    @property
    def kind(self) -> str:
        """The family recorded in manifests and reports ("torch", "keras", "onnx", "demo")."""
        return self.format.kind

    @property
    def sha256(self) -> str:
        """The digest of what the user brought (a file, or a folder such as a SavedModel), by its format."""
        return self.format.source_sha256(self.path)

    @property
    def size_bytes(self) -> int:
        """What the user brought weighs on disk (a folder format sums its files), for the results row."""
        return self.format.source_size_bytes(self.path)

    def describe(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.path),
            "source_sha256": self.sha256,
            "kind": self.kind,
            "format": self.format.name,
            "loaded_as": self.source_kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": self.labels,
            "labels_from": self.labels_from if self.labels else None,
            "demo": self.is_demo,
        }


@dataclass
class ExportSettings:
    """The recipe's [export] table, and where the export's files go."""

    opset: int = 17
    tolerance: float = 1e-3
    simplify: bool = True
    root: Optional[Path] = None  # a build's staging folder (artifact paths are relative to it)
    log_path: Optional[Path] = None  # the exporter's full output (a torch export's failure names it)

    @classmethod
    def from_recipe(cls, section: Mapping[str, Any], root: Optional[Path] = None, log_path: Optional[Path] = None) -> "ExportSettings":
        return cls(int(section["opset"]), float(section["tolerance"]), bool(section["simplify"]), root, log_path)


@dataclass
class Exported:
    """The FP32 ONNX artifact a format exported, what the report records about it, and a note for the report."""

    artifact: Artifact
    record: Dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class CheckOutcome:
    """An architecture check's result: ``report`` is the check engine's (with to_dict/summary), or None."""

    record: Dict[str, Any]
    summary: str = ""
    complete: bool = True  # False: the check could not see the whole model
    uncovered: List[str] = field(default_factory=list)
    report: Any = None


def preprocessing_for(base: Optional[Dict[str, Any]], input_size: Optional[int], overrides: Dict[str, Any]) -> Preprocessing:
    """The model's own preprocessing (``base``), else the default scaled to ``input_size``; the recipe's overrides on top."""
    d: Dict[str, Any] = dict(base or {})
    if not base and input_size and input_size != 224:
        d.update(resize=int(round(input_size * 256 / 224)), crop=input_size)
    d.update(overrides)
    return Preprocessing.from_dict(d)


# --------------------------------------------------------------------------------------------------
# reading a file's bytes for detection (nothing is parsed beyond a header and a zip's directory)


@dataclass
class Sniff:
    """What detection may look at: the path, its first bytes, and a zip's entry names (None: not a readable zip)."""

    path: Path
    head: bytes
    zip_names: Optional[Tuple[str, ...]]
    size: int

    @classmethod
    def of(cls, path: Path) -> "Sniff":
        if path.is_dir():
            return cls(path, b"", None, 0)
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
        names: Optional[Tuple[str, ...]] = None
        if head.startswith(ZIP_MAGIC):
            try:
                with zipfile.ZipFile(path) as zf:
                    names = tuple(zf.namelist())
            except (zipfile.BadZipFile, OSError):
                names = None
        return cls(path, head, names, path.stat().st_size)

    @property
    def is_broken_zip(self) -> bool:
        """Zip magic without a readable central directory: a save, copy or download cut short."""
        return self.head.startswith(ZIP_MAGIC) and self.zip_names is None

    def has_entry(self, leaf: str) -> bool:
        """A zip entry named ``leaf`` at the top or one folder down (torch.save nests under ``<archive>/``)."""
        return any(n == leaf or n.endswith("/" + leaf) and n.count("/") == 1 for n in self.zip_names or ())

    def safetensors_header(self) -> bool:
        """safetensors has no magic number: an 8-byte little-endian header length, then a JSON object."""
        if len(self.head) < 9:
            return False
        (n,) = struct.unpack("<Q", self.head[:8])
        return 2 <= n <= self.size - 8 and self.head[8:9] == b"{"

    def onnx_header(self) -> bool:
        """An ONNX ModelProto as onnx.save writes it: field 1 (ir_version, a small varint) first, then another
        ModelProto field (producer_name, opset_import, graph, ...)."""
        h = self.head
        if len(h) < 3 or h[0] != 0x08 or not 1 <= h[1] <= 30:
            return False
        return h[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A)


# --------------------------------------------------------------------------------------------------
# the interface


class ModelFormat(abc.ABC):
    """A model format. Subclasses import their framework lazily (optional.require) so listing formats is cheap."""

    #: registry name
    name: str = ""
    #: the family recorded in manifests and reports: "torch", "keras", "onnx", "demo"
    kind: str = ""
    #: Python modules this format needs to load and export, and the pyproject extra that installs them
    packages: Tuple[str, ...] = ()
    extra: str = ""
    #: file name endings that name this format when the bytes do not (a truncated file, say)
    suffixes: Tuple[str, ...] = ()
    #: one line for the CLI's --model help
    help: str = ""
    #: the file is already ONNX: the build copies it, and the stage commands check it as ONNX (Q/DQ rules too)
    onnx_input: bool = False
    #: what the export compares the ONNX with, in messages ("torch", "keras"); "" when it compares with nothing
    compared_with: str = ""
    #: the results row of the float reference runner ("pytorch-fp32"); "" when the format has none
    runner_row: str = ""

    def available(self) -> bool:
        from ...optional import available

        return all(available(m) for m in self.packages)

    def source_sha256(self, path: Path) -> str:
        """The digest recorded for the model in manifests (the file's sha256; a folder format overrides it)."""
        return sha256_file(path)

    def source_size_bytes(self, path: Path) -> int:
        """The model's size on disk (the file's; a folder format overrides it)."""
        return path.stat().st_size

    @abc.abstractmethod
    def detect(self, sniff: Sniff) -> bool:
        """True when the bytes (or the folder) are this format's. Extensions are the registry's last resort."""

    def scan(self, path: Path, allow_pickle: bool) -> None:
        """The trust rule, before anything loads: raise BadInputError when loading would run code from the file
        and the user did not opt in (models/trust.py's refuse_code_execution). The one place a format bounds
        what reading it may cost. Default: the format cannot carry code."""

    def check_file(self, path: Path) -> Optional[Dict[str, Any]]:
        """`resnext-deploy check` of a file this format takes as it is (an ONNX, float or already quantized): the
        check's record, or None (the default) to load the model and run :meth:`check` on it."""
        return None

    @abc.abstractmethod
    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        """The model and its metadata (after :meth:`scan`)."""

    @abc.abstractmethod
    def check(self, src: ModelSource) -> CheckOutcome:
        """The architecture check (the seeds' bugs) before export; raises ModelCheckError on a finding."""

    @abc.abstractmethod
    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        """The FP32 ONNX at ``out_path``, compared with the model on ``sample`` (real preprocessed images, NCHW)."""

    def runner(self, src: ModelSource, threads: int = 0) -> Any:
        """The model itself as a backends.Runner (the float model the user starts from), or None."""
        return None
