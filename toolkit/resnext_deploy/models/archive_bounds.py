"""Bounds on what a model archive unpacks to, checked from its directory before any loader reads it.

A 3.7 MB ``.pt`` whose ``data.pkl`` inflates to 3 GiB, or a 1 MB ``.keras`` whose ``config.json`` inflates to
1 GiB, cost gigabytes inside torch or Keras before anything could object (issue 28). Each format's scan calls
:func:`check_archive` first; it reads only the zip's central directory, the HDF5 object headers, or the ONNX
graph's external-data records, never the data. README "Model files" documents the limits:

- entries (zip members, HDF5 objects, external tensors): at most :data:`MAX_ENTRIES`;
- the parts a loader parses whole (a pickle, a JSON config, an HDF5 attribute): at most :data:`MAX_PARSED`;
- one member: at most :data:`MAX_RATIO` times its compressed size (beyond the first :data:`RATIO_FREE` bytes);
- all members together: at most :data:`MAX_TOTAL`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Tuple, Union

from ..errors import BadInputError
from ..names import shown

#: zip members, HDF5 objects or external tensors; ResNeXt-101's torch.save has about 1,600 members
MAX_ENTRIES = 100_000
#: a pickle, config.json or HDF5 model_config is parsed whole in memory; real ones are kilobytes to a few MB
MAX_PARSED = 64 << 20
#: deflate reaches about 1000:1 on zeros; weights compress less than 2:1, JSON about 10:1
MAX_RATIO = 100
RATIO_FREE = 16 << 20
#: everything a model file may unpack to: ResNeXt-101 64x4d is 330 MB in float32, the largest ResNeXt 1.7 GB
MAX_TOTAL = 8 << 30
#: members parsed whole, by the end of their name
_PARSED_SUFFIXES = (".pkl", ".json")

PathLike = Union[str, "os.PathLike[str]"]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _refuse(path: Path, what: str) -> BadInputError:
    return BadInputError(
        f"Model file '{shown(str(path))}' ({path.stat().st_size:,} bytes) {what}; nothing was loaded. Re-save the "
        "model from its framework, or if it really is this large, see README \"Model files\" for the limits."
    )


def check_sizes(path: Path, entries: Iterable[Tuple[str, int, int]]) -> None:
    """Check (name, uncompressed, stored) sizes against the limits; ``stored`` < 0: not compressed (no ratio)."""
    count = total = 0
    for name, size, stored in entries:
        count += 1
        total += size
        if count > MAX_ENTRIES:
            raise _refuse(path, f"holds more than {MAX_ENTRIES:,} entries")
        if name.endswith(_PARSED_SUFFIXES) and size > MAX_PARSED:
            raise _refuse(path, f"has '{shown(name)}' of {_mib(size)}, parsed whole by its loader (limit {_mib(MAX_PARSED)})")
        if stored >= 0 and size > RATIO_FREE and size > MAX_RATIO * max(stored, 1):
            raise _refuse(path, f"has '{shown(name)}' inflating {stored:,} bytes to {_mib(size)} "
                                f"(more than {MAX_RATIO}:1, a decompression bomb)")
        if total > MAX_TOTAL:
            raise _refuse(path, f"unpacks to more than {_mib(MAX_TOTAL)}")


def check_zip(path: PathLike) -> None:
    """The sizes a zip's central directory declares (torch.save, TorchScript, .keras); readers allocate by them."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refuse(p, f"is not a readable zip archive ({exc})") from None
    check_sizes(p, ((i.filename, i.file_size, i.compress_size if i.compress_type != zipfile.ZIP_STORED else -1)
                    for i in infos))


def check_hdf5(path: PathLike) -> None:
    """A legacy Keras .h5: each dataset's size when read, compressed chunks against the ratio, the JSON attributes."""
    from ..optional import require

    h5py = require("h5py", "read legacy Keras .h5 files")
    p = Path(path)
    entries = []

    def visit(name: str, obj: object) -> None:
        attrs = getattr(obj, "attrs", None)
        for key in attrs or ():  # the attribute's size from its header; a JSON config is parsed whole
            entries.append((f"{name}@{key}.json", attrs.get_id(key).get_storage_size(), -1))
        if isinstance(obj, h5py.Dataset):
            stored = obj.id.get_storage_size() if obj.compression or obj.chunks else -1
            entries.append((name, int(obj.size) * obj.dtype.itemsize, stored))

    try:
        with h5py.File(p, "r") as fh:
            visit("/", fh)
            fh.visititems(visit)
    except OSError as exc:
        raise _refuse(p, f"is not a readable HDF5 file ({exc})") from None
    check_sizes(p, entries)


def check_archive(path: PathLike) -> None:
    """Check a model file's unpacked sizes before a loader reads it: zips and HDF5 files; others pass."""
    p = Path(path)
    if not p.is_file():
        return
    with p.open("rb") as fh:
        head = fh.read(8)
    if head[:4] == b"PK\x03\x04" or (head[:4] == b"PK\x05\x06"):
        check_zip(p)
    elif head == b"\x89HDF\r\n\x1a\n":
        check_hdf5(p)
