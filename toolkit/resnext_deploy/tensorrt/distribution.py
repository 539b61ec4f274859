"""The toolkit's own wheel, for a device that installs resnext-deploy from a bundle alone.

Two sources, by how this toolkit was installed:

* from a source checkout (editable or not): the checkout is built with pip's ``pip wheel --no-deps
  --no-build-isolation`` and the project's build backend (hatchling, from the build extra; nothing is
  downloaded). hatchling's wheels are reproducible (fixed timestamps), so identical sources give an identical
  wheel and the bundle's tarball stays byte-identical.
* from a wheel (site-packages): the installed distribution is packed back into a wheel from its RECORD, after
  checking every installed file against the sha256 RECORD holds; a file changed since installation is refused
  by name (a wheel is never made from an install that differs from what was released).

Either way the wheel is pure Python (``py3-none-any``), holds no demo or stand-in data and runs on 3.8+.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Tuple

from ..errors import BadInputError, InternalError, MissingDependencyError
from ..data.resources import checkout_root, in_checkout

log = logging.getLogger(__name__)

DIST_NAME = "resnext-deploy"
#: the zip timestamp of a repacked wheel (hatchling's own reproducible default)
_ZIP_TIME = (2020, 2, 2, 0, 0, 0)
#: dist-info files an installer writes: not part of the wheel that was installed
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def wheel_for_device(out_dir: Path) -> Path:
    """Write resnext-deploy's pure-Python wheel into ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _wheel_from_checkout(out_dir) if in_checkout() else _wheel_from_installed(out_dir)


def _wheel_from_checkout(out_dir: Path) -> Path:
    try:
        import hatchling  # noqa: F401  (the build backend pyproject.toml names)
    except ImportError as exc:
        raise MissingDependencyError(
            "Building resnext-deploy's wheel for the bundle needs the build backend hatchling (>=1.27), which is in "
            "the build extra: pip install 'hatchling>=1.27' (or pip install -e '.[build]')."
        ) from exc
    with tempfile.TemporaryDirectory(dir=str(out_dir)) as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", tmp, str(checkout_root())]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("resnext_deploy-*-py3-none-any.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise InternalError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        final = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), str(final))
    log.info("wheel built from the checkout %s: %s", checkout_root(), final.name)
    return final


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel_from_installed(out_dir: Path) -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError as exc:
        raise InternalError(f"{DIST_NAME} is neither a source checkout nor an installed distribution.") from exc
    version = dist.metadata["Version"]
    info_dir = f"resnext_deploy-{version}.dist-info"
    entries: List[Tuple[str, bytes]] = []
    changed = []
    for f in dist.files or []:
        rel = f.as_posix()
        parts = rel.split("/")
        if rel.startswith("..") or "__pycache__" in parts or (parts[0].endswith(".dist-info") and parts[-1] in _INSTALLER_FILES):
            continue  # scripts the installer made, bytecode, the installer's own records
        if not (parts[0] == "resnext_deploy" or parts[0].endswith(".dist-info")):
            continue
        data = Path(str(f.locate())).read_bytes()
        if f.hash is not None and _record_hash(data) != f"{f.hash.mode}={f.hash.value}":
            changed.append(rel)
        entries.append((info_dir + "/" + parts[-1] if parts[0].endswith(".dist-info") else rel, data))
    if changed:
        raise BadInputError(
            f"The installed {DIST_NAME} differs from the wheel it was installed from ({', '.join(changed[:5])}"
            f"{' ...' if len(changed) > 5 else ''}: sha256 differs from its RECORD), so no wheel for the device is "
            "made from it. Reinstall it (pip install --force-reinstall) or run from a source checkout."
        )
    if not any(name.endswith("/WHEEL") for name, _ in entries):
        raise InternalError(f"The installed {DIST_NAME} has no WHEEL file: it was not installed from a wheel.")
    final = out_dir / f"resnext_deploy-{version}-py3-none-any.whl"
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in sorted(entries)) + f"{info_dir}/RECORD,,\n"
    tmp = final.with_name(final.name + ".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(entries) + [(f"{info_dir}/RECORD", record.encode())]:
            zi = zipfile.ZipInfo(name, _ZIP_TIME)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    tmp.replace(final)
    log.info("wheel repacked from the installed %s %s (every file matched its RECORD): %s", DIST_NAME, version, final.name)
    return final
