"""The TensorRT bundle: everything a device needs to build its own engines and check them.

A bundle is a directory (and a .tar.gz of it) with the FP32 ONNX, the TensorRT-ready Q/DQ ONNX, their FP16
versions for strongly typed TensorRT (11.x), a calibration cache where an implicit INT8 path exists (DLA on
JetPack 5/6), the recipe, golden inputs with FP32 reference outputs, a README with equivalent
trtexec lines, and ``manifest.json`` — a regular build manifest (so the runtime can load a bundle) with a
``bundle`` section: the sha256 of every other file, the engine plan and what the workstation measured.

Writing needs nothing beyond numpy; the outputs it packs are computed by the caller. Reading and
verifying run on the device with numpy alone (Python 3.8+).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..buildfolder.artifacts import Artifact, atomic_file, sha256_file
from ..errors import BadInputError

BUNDLE_VERSION = 1
FP32_ONNX = "model-fp32.onnx"
QDQ_ONNX = "model-int8-qdq.onnx"
FP16_ONNX = "model-fp16.onnx"  # strongly typed TensorRT: FP16 compute, FP32 I/O
QDQ_FP16_ONNX = "model-int8-qdq-fp16.onnx"  # strongly typed TensorRT: the Q/DQ model, float regions in FP16
#: engine_plan / device_plan.source_for keys -> file in the bundle
MODEL_FILES = {"fp32": FP32_ONNX, "qdq": QDQ_ONNX, "fp16": FP16_ONNX, "qdq-fp16": QDQ_FP16_ONNX}
CALIB_CACHE = "calibration.cache"
RECIPE = "recipe.toml"
README = "README.md"
GOLDEN_DIR = "golden"
GOLDEN_INPUTS = "golden/inputs.npy"
GOLDEN_FP32 = "golden/reference-fp32.npy"
GOLDEN_QDQ = "golden/reference-int8-qdq.npy"
GOLDEN_INDEX = "golden/golden.json"
ENGINES_DIR = "engines"
WHEELS_DIR = "wheels"  # resnext-deploy's own pure-Python wheel: the device installs from the bundle alone


@dataclass
class Golden:
    """Preprocessed inputs, the FP32 reference logits (and the Q/DQ model's), labels and where they came from."""

    inputs: np.ndarray
    reference_fp32: np.ndarray
    reference_qdq: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    files: List[str] = field(default_factory=list)

    def index(self) -> Dict[str, Any]:
        return {
            "count": int(len(self.inputs)),
            "shape": list(self.inputs.shape),
            "files": self.files,
            "labels": None if self.labels is None else [int(x) for x in self.labels],
            "reference": "ONNX Runtime (CPU) on model-fp32.onnx",
            "reference_qdq": None if self.reference_qdq is None else "ONNX Runtime (CPU) on model-int8-qdq.onnx",
        }


@dataclass
class Bundle:
    """A bundle read back (on the device): its directory, manifest, recipe and golden data."""

    root: Path
    manifest: Dict[str, Any]
    golden: Golden

    @property
    def info(self) -> Dict[str, Any]:
        return self.manifest["bundle"]

    @property
    def recipe(self) -> Dict[str, Any]:
        return self.manifest["recipe"]

    @property
    def tensorrt(self) -> Dict[str, Any]:
        return self.manifest["recipe"]["backends"]["tensorrt"]

    def path(self, rel: str) -> Path:
        return self.root / rel


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    path.write_bytes(buf.getvalue())


def write_bundle(
    root: Path,
    *,
    fp32_onnx: Path,
    qdq_onnx: Path,
    calibration_cache: Optional[bytes],
    recipe_file: Optional[Path],
    golden: Golden,
    manifest: Dict[str, Any],
    readme: str,
    typed_models: Optional[Dict[str, Path]] = None,
    wheel: Optional[Path] = None,
) -> Dict[str, str]:
    """Fill the empty directory ``root`` and write its manifest; returns {relative path: sha256} of every file.

    ``manifest`` is a build manifest (from manifest.make_manifest) whose artifacts already name
    FP32_ONNX and QDQ_ONNX relative to ``root``; its ``bundle`` section gets the hashes of the other files.
    ``typed_models`` ("fp16", "qdq-fp16" -> path) are the strongly typed models; ``calibration_cache`` None: none.
    ``wheel``: resnext-deploy's wheel (distribution.wheel_for_device), copied into wheels/.
    """
    root.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(fp32_onnx, root / FP32_ONNX)
    shutil.copyfile(qdq_onnx, root / QDQ_ONNX)
    for key, path in (typed_models or {}).items():
        shutil.copyfile(path, root / MODEL_FILES[key])
    if calibration_cache is not None:
        (root / CALIB_CACHE).write_bytes(calibration_cache)
    if recipe_file is not None and Path(recipe_file).is_file():
        shutil.copyfile(recipe_file, root / RECIPE)
    else:  # a recipe given as data only: the resolved values are in manifest.json
        (root / RECIPE).write_text("# The resolved recipe is in manifest.json (key 'recipe').\n")
    (root / GOLDEN_DIR).mkdir()
    _save_npy(root / GOLDEN_INPUTS, golden.inputs.astype(np.float32))
    _save_npy(root / GOLDEN_FP32, golden.reference_fp32.astype(np.float32))
    if golden.reference_qdq is not None:
        _save_npy(root / GOLDEN_QDQ, golden.reference_qdq.astype(np.float32))
    (root / GOLDEN_INDEX).write_text(json.dumps(golden.index(), indent=2))
    if wheel is not None:
        (root / WHEELS_DIR).mkdir()
        shutil.copyfile(wheel, root / WHEELS_DIR / Path(wheel).name)
    (root / README).write_text(readme, encoding="utf-8")
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    model_files = {f for a in manifest.get("artifacts", []) for f in a.get("files", {})}
    manifest = dict(manifest)
    manifest["bundle"] = dict(manifest.get("bundle", {}), version=BUNDLE_VERSION,
                              files={k: v for k, v in files.items() if k not in model_files})
    with atomic_file(root / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    files["manifest.json"] = sha256_file(root / "manifest.json")
    return files


def tar_bundle(root: Path, tar_path: Path) -> Path:
    """``root`` as a .tar.gz whose single top folder is ``root.name``; byte-identical for identical files."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with atomic_file(tar_path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(str(root), arcname=root.name, recursive=False, filter=clean)
                for p in sorted(root.rglob("*")):
                    tar.add(str(p), arcname=f"{root.name}/{p.relative_to(root).as_posix()}", recursive=False, filter=clean)
    return tar_path


def verify_bundle(root: Union[str, Path], manifest: Optional[Dict[str, Any]] = None) -> List[str]:
    """Files of the bundle that are missing or whose sha256 differs from the manifest: empty when intact."""
    from ..buildfolder.manifest import read_manifest, verify_artifacts

    root = Path(root)
    manifest = manifest or read_manifest(root)
    shipped = [a for a in manifest.get("artifacts", []) if not a.get("path", "").startswith(ENGINES_DIR + "/")]
    bad = verify_artifacts({"artifacts": shipped}, root)
    for rel, digest in manifest.get("bundle", {}).get("files", {}).items():
        p = root / rel
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            bad.append(f"{rel}: sha256 differs from the manifest")
    return bad


def read_bundle(root: Union[str, Path]) -> Bundle:
    """Read and verify a bundle directory; a missing or altered file is a BadInputError naming it."""
    from ..buildfolder.manifest import read_manifest

    root = Path(root)
    if not root.is_dir():
        hint = " Unpack it first: tar xzf <bundle>.tar.gz" if str(root).endswith((".tar.gz", ".tgz")) else ""
        raise BadInputError(f"The bundle '{root}' is not a directory.{hint}")
    manifest = read_manifest(root)
    if "bundle" not in manifest:
        raise BadInputError(
            f"'{root}' holds a build manifest but no TensorRT bundle section. Pass the bundle directory a Jetson or "
            "x86-gpu build wrote (build/<model>/<target>/<model>-<target>-bundle)."
        )
    bad = verify_bundle(root, manifest)
    if bad:
        raise BadInputError(
            f"The bundle '{root}' is incomplete or altered: {'; '.join(bad)}. Copy or unpack the bundle again "
            "(the .tar.gz beside it in the build directory holds the original)."
        )

    def load(rel: str) -> Optional[np.ndarray]:
        p = root / rel
        return np.load(p, allow_pickle=False) if p.is_file() else None

    index = json.loads((root / GOLDEN_INDEX).read_text())
    labels = index.get("labels")
    inputs, reference = load(GOLDEN_INPUTS), load(GOLDEN_FP32)
    if inputs is None or reference is None:
        raise BadInputError(f"The bundle '{root}' lacks its golden inputs or FP32 references ({GOLDEN_INPUTS}, "
                            f"{GOLDEN_FP32}): rebuild the bundle on the workstation.")
    golden = Golden(inputs, reference, load(GOLDEN_QDQ),
                    None if labels is None else np.asarray(labels), list(index.get("files", [])))
    return Bundle(root, manifest, golden)


def bundle_artifact(root: Path, build_dir: Path, tar_path: Path, parent: str) -> Artifact:
    """The bundle as one artifact of the build (every file, plus the .tar.gz), for the build's manifest."""
    paths = [tar_path] + sorted(p for p in root.rglob("*") if p.is_file())
    return Artifact.from_files(
        "tensorrt-bundle", paths, build_dir, kind="tensorrt-bundle", backend="bundle", precision="int8",
        parent=parent, stage="compile", settings={"directory": str(root.relative_to(build_dir))},
    )


def engines_pending_note(manifest: Dict[str, Any], running: str) -> Optional[str]:
    """For `predict` on a build directory whose TensorRT engines are pending on the device: what runs instead.

    (On the bundle itself the runtime already warns: runtime/selection.py.)
    """
    kinds = {a.get("kind") for a in manifest.get("artifacts", [])}
    if "bundle" in manifest or "tensorrt-engine" in kinds or "tensorrt-bundle" not in kinds:
        return None
    return (f"no TensorRT engines yet for {manifest.get('target')}: they are pending on the device (the bundle in this "
            f"build directory builds them there with `resnext-deploy compile --bundle`); running {running} here, "
            "the model the workstation report measured")
