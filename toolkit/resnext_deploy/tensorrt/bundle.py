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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..buildfolder.artifacts import Artifact, atomic_file, sha256_file
from ..errors import BadInputError, InternalError

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
SHA256SUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` on the device, before anything is installed
REQUIREMENTS = "requirements.txt"  # the wheel pinned by its sha256: pip install --no-deps --require-hashes -r
DEPENDENCIES = "dependencies.txt"  # the wheel's own requirements (its Requires-Dist), from JetPack or the index


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
    #: the key id of the workstation key that signed the manifest, when the device pinned one; else None
    signed_by: Optional[str] = None

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
    signing_key: Any = None,
) -> Dict[str, str]:
    """Fill the empty directory ``root`` and write its manifest; returns {relative path: sha256} of every file.

    ``manifest`` is a build manifest (from manifest.make_manifest) whose artifacts already name
    FP32_ONNX and QDQ_ONNX relative to ``root``; its ``bundle`` section gets the hashes of the other files.
    ``typed_models`` ("fp16", "qdq-fp16" -> path) are the strongly typed models; ``calibration_cache`` None: none.
    ``wheel``: resnext-deploy's wheel (distribution.wheel_for_device), copied into wheels/, with requirements.txt
    (the wheel by its sha256) and dependencies.txt from the manifest's ``bundle.install`` (install_facts).
    ``signing_key`` (buildfolder.signing.SigningKey): the workstation's key, which signs the manifest. SHA256SUMS, written last, lists every other file for `sha256sum -c`.
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
    install = manifest.get("bundle", {}).get("install")
    if wheel is not None:
        (root / WHEELS_DIR).mkdir()
        shutil.copyfile(wheel, root / WHEELS_DIR / Path(wheel).name)
        install = install or install_facts(Path(wheel))
        write_install_files(root, install)
    (root / README).write_text(readme, encoding="utf-8")
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    model_files = {f for a in manifest.get("artifacts", []) for f in a.get("files", {})}
    manifest = dict(manifest)
    manifest["bundle"] = dict(manifest.get("bundle", {}), version=BUNDLE_VERSION, install=install,
                              files={k: v for k, v in files.items() if k not in model_files})
    if signing_key is not None:
        from .bundle_checks import sign_manifest

        manifest = sign_manifest(manifest, signing_key)
    with atomic_file(root / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    files["manifest.json"] = sha256_file(root / "manifest.json")
    (root / SHA256SUMS).write_text("".join(f"{files[k]}  {k}\n" for k in sorted(files)), encoding="utf-8")
    return files


def install_facts(wheel: Path) -> Dict[str, Any]:
    """The manifest's ``bundle.install``: the files the device checks and installs from, and the wheel's sha256 and
    Requires-Dist (no extras). The README's install block and requirements.txt / dependencies.txt come from it."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    return {"sha256sums": SHA256SUMS, "requirements": REQUIREMENTS, "dependencies": DEPENDENCIES,
            "wheel": f"{WHEELS_DIR}/{Path(wheel).name}", "wheel_sha256": sha256_file(Path(wheel)),
            "requires": [ln.split(":", 1)[1].strip() for ln in lines
                         if ln.startswith("Requires-Dist:") and "extra ==" not in ln]}


def write_install_files(root: Path, install: Dict[str, Any]) -> None:
    """requirements.txt (the bundle's wheel pinned by sha256) and dependencies.txt (its Requires-Dist), from
    ``install`` (install_facts, as the manifest records it).

    pip's hash-checking mode needs every package pinned with a hash, dependencies included, which cannot be known for
    the device's Python and platform here: the wheel is installed --no-deps --require-hashes, its dependencies by name.
    """
    if sha256_file(root / install["wheel"]) != install["wheel_sha256"]:
        raise InternalError(f"The bundle's {install['wheel']} is not the wheel the manifest's install section names.")
    (root / install["requirements"]).write_text(
        "# resnext-deploy from this bundle, pinned by its sha256:\n"
        f"#   python3 -m pip install --no-deps --require-hashes -r {install['requirements']}\n"
        f"./{install['wheel']} --hash=sha256:{install['wheel_sha256']}\n", encoding="utf-8")
    (root / install["dependencies"]).write_text(
        "# what resnext-deploy's wheel requires (its Requires-Dist), from JetPack or the package index:\n"
        f"#   python3 -m pip install -r {install['dependencies']}\n"
        + "".join(f"{n}\n" for n in install["requires"]), encoding="utf-8")


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
    from .bundle_checks import confined

    root = Path(root)
    manifest = manifest or read_manifest(root)
    shipped = [a for a in manifest.get("artifacts", []) if not a.get("path", "").startswith(ENGINES_DIR + "/")]
    for rel in list(manifest.get("bundle", {}).get("files", {})) + [f for a in shipped for f in a.get("files", {})]:
        confined(root, rel)  # nothing outside the bundle is opened, not even to hash it
    bad = verify_artifacts({"artifacts": shipped}, root)
    for rel, digest in manifest.get("bundle", {}).get("files", {}).items():
        p = confined(root, rel)
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            bad.append(f"{rel}: sha256 differs from the manifest")
    return bad


def read_bundle(root: Union[str, Path], workstation_key: Any = None) -> Bundle:
    """Read and verify a bundle directory; a missing or altered file is a BadInputError naming it.

    Before any file is opened: the manifest's paths are confined to the bundle, its engine names are safe file names,
    its recipe values are range-checked, and with ``workstation_key`` (a pinned buildfolder.signing.PublicKey) its
    signature is verified (bundle_checks.py). The key id that signed it is ``Bundle.signed_by``.
    """
    from ..buildfolder.manifest import read_manifest
    from .bundle_checks import check_manifest, confined, verify_origin

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
    signed_by = verify_origin(root, manifest, workstation_key)
    check_manifest(root, manifest)
    bad = verify_bundle(root, manifest)
    if bad:
        raise BadInputError(
            f"The bundle '{root}' is incomplete or altered: {'; '.join(bad)}. Copy or unpack the bundle again "
            "(the .tar.gz beside it in the build directory holds the original)."
        )

    def load(rel: str) -> Optional[np.ndarray]:
        p = confined(root, rel)
        return np.load(p, allow_pickle=False) if p.is_file() else None

    index = json.loads(confined(root, GOLDEN_INDEX).read_text())
    labels = index.get("labels")
    inputs, reference = load(GOLDEN_INPUTS), load(GOLDEN_FP32)
    if inputs is None or reference is None:
        raise BadInputError(f"The bundle '{root}' lacks its golden inputs or FP32 references ({GOLDEN_INPUTS}, "
                            f"{GOLDEN_FP32}): rebuild the bundle on the workstation.")
    golden = Golden(inputs, reference, load(GOLDEN_QDQ),
                    None if labels is None else np.asarray(labels), list(index.get("files", [])))
    return Bundle(root, manifest, golden, signed_by)


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
