"""The device report comes home: `resnext-deploy report BUILD --device DEVICE_REPORT`.

`compile --bundle` on the device writes report.json with a ``device_report`` section: the sha256 of every bundle
file it verified (the bundle's identity), the sha256 of the report's own canonical JSON, and the device key's Ed25519
signature over that same canonical JSON (buildfolder/signing.py). Merging checks the sha256 and the signature against
the device key the workstation pinned (``[signing] device_key`` or ``--device-key``): an unsigned, edited, or
otherwise-signed report is refused naming why. Then it checks the bundle hashes against the bundle this build made
(a report from another bundle is refused by name), then puts the device's rows into the build's report:
engine rows with the device's golden checks and latency, or rows "pending on device" with the device's reason.
The gate is the workstation's (recomputed on the workstation rows) plus the device's own checks, so JUnit and
the job summary list both. The device report is copied into the build as device-report.json and the build's
manifest records its sha256 and the report's new one, so the build still serves as a baseline (ci/baseline.py).

Sealing runs on the device (Python 3.8, numpy and cryptography): this module imports nothing heavy at the top.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..buildfolder.artifacts import atomic_file, sha256_file
from ..errors import ArtifactIntegrityError, BadInputError
from ..buildfolder.signing import PublicKey, SigningKey, canonical_json, parse_public_key, verify_record

log = logging.getLogger(__name__)

DEVICE_REPORT = "device-report.json"  # the copy kept in the build directory
SEAL_KEY = "device_report"


def _canonical(report: Dict[str, Any]) -> bytes:
    body = {k: v for k, v in report.items() if k != SEAL_KEY}
    section = {k: v for k, v in (report.get(SEAL_KEY) or {}).items() if k not in ("sha256", "signature")}
    return canonical_json({"report": body, SEAL_KEY: section})


def seal(report: Dict[str, Any], bundle_name: str, bundle_files: Dict[str, str], engines: List[str],
         key: Optional[SigningKey] = None, bundle_signed_by: Optional[str] = None) -> Dict[str, Any]:
    """Add the device_report section (bundle identity, its engine plan), its sha256 and ``key``'s signature.

    Both cover the report's canonical JSON without the two fields themselves; ``bundle_signed_by``: the workstation
    key id the device checked the bundle's manifest against (None: no workstation key pinned on the device)."""
    report[SEAL_KEY] = {"bundle": bundle_name, "bundle_files": dict(sorted(bundle_files.items())), "engines": list(engines),
                        "bundle_signed_by": bundle_signed_by,
                        "sealed": "sha256 and the device key's Ed25519 signature of the report's canonical JSON "
                                  "(sorted keys, no spaces) without the fields sha256 and signature"}
    data = _canonical(report)
    report[SEAL_KEY]["sha256"] = hashlib.sha256(data).hexdigest()
    if key is not None:
        report[SEAL_KEY]["signature"] = key.record(data)
    return report


def read_device_report(path: Union[str, Path], device_key: Optional[PublicKey] = None) -> Dict[str, Any]:
    """A device report, its seal and its signature by the pinned ``device_key`` verified.

    An edited, unsigned or otherwise-signed one is an ArtifactIntegrityError (exit 2) naming the file and why."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"Cannot read the device report '{path}': {exc}. Pass the report.json `resnext-deploy "
                            "compile --bundle` wrote in the bundle on the device.") from exc
    sec = data.get(SEAL_KEY) if isinstance(data, dict) else None
    if not isinstance(sec, dict) or "sha256" not in sec or data.get("measured_on") != "device":
        raise BadInputError(f"'{path}' is not a device report (no {SEAL_KEY} section): pass the report.json "
                            "`resnext-deploy compile --bundle` wrote in the bundle on the device.")
    actual = hashlib.sha256(_canonical(data)).hexdigest()
    if actual != sec["sha256"]:
        raise ArtifactIntegrityError(
            f"The device report '{path}' was altered after the device wrote it: its content hashes to {actual[:12]}..., "
            f"its seal says {str(sec['sha256'])[:12]}... . Copy report.json from the device's bundle again."
        )
    hint = ("Pin the device's public key (`resnext-deploy device-key` on the device prints it) with --device-key KEY "
            "or [signing] device_key in the recipe, and bring back the report.json compile --bundle signed there.")
    verify_record(sec.get("signature"), _canonical(data), device_key, f"The device report '{path}'", hint)
    return data


def _build_bundle(manifest: Dict[str, Any], build_dir: Path) -> Dict[str, Any]:
    bundles = [a for a in manifest.get("artifacts", []) if a.get("kind") == "tensorrt-bundle"]
    if not bundles:
        raise BadInputError(f"The build '{build_dir}' made no TensorRT bundle (target {manifest.get('target')}), so "
                            "there is no device report to merge. --device goes with a Jetson or x86-gpu build.")
    return bundles[0]


def verify_same_bundle(device: Dict[str, Any], manifest: Dict[str, Any], build_dir: Path, source: Path) -> List[str]:
    """The bundle files the device verified, each checked against the sha256 this build recorded for it."""
    art = _build_bundle(manifest, build_dir)
    folder = art.get("settings", {}).get("directory") or ""
    built = art.get("files", {})
    sec = device[SEAL_KEY]
    if sec.get("bundle") != Path(folder).name:
        raise ArtifactIntegrityError(
            f"The device report '{source}' is for the bundle '{sec.get('bundle')}', this build made '{Path(folder).name}'. "
            "Pass the report compile --bundle wrote for this build's bundle."
        )
    bad = []
    for rel, digest in sec.get("bundle_files", {}).items():
        ours = built.get(f"{folder}/{rel}")
        if ours is None:
            bad.append(f"{rel} (not in this build's bundle)")
        elif ours != digest:
            bad.append(f"{rel} (device {digest[:12]}..., build {ours[:12]}...)")
    missing = [k[len(folder) + 1:] for k in built if k.startswith(folder + "/") and k[len(folder) + 1:] not in sec.get("bundle_files", {})]
    if bad or not sec.get("bundle_files"):
        raise ArtifactIntegrityError(
            f"The device report '{source}' comes from a different bundle than the build '{build_dir}' made: "
            f"{'; '.join(bad) or 'it names no bundle files'}. Rebuild on the device from this build's bundle "
            f"({folder}/ or its .tar.gz) and bring back that report."
        )
    return missing


def merge_device_report(build_dir: Union[str, Path], device_report: Union[str, Path], recipe: Any,
                        device_key: Optional[str] = None) -> Dict[str, Any]:
    """Merge a verified device report into the build's report, rewrite report.* and the manifest; returns the report.

    ``device_key``: the device's public key (text or file), else the recipe's ``[signing] device_key``."""
    from ..evaluation.gate import GateResult
    from ..buildfolder.manifest import read_manifest
    from ..report import make_report, read_report, write_report

    build_dir, source = Path(build_dir), Path(device_report)
    if not (build_dir / "manifest.json").is_file():
        raise BadInputError(f"'{build_dir}' is not a build directory (no manifest.json). Pass the directory "
                            "`resnext-deploy build --target jetson-*` wrote.")
    pinned = device_key or (recipe.data.get("signing") or {}).get("device_key")
    device = read_device_report(source, parse_public_key(pinned, "The device key") if pinned else None)
    manifest = read_manifest(build_dir / "manifest.json")
    recorded = (manifest.get("reports") or {}).get("report.json")
    if recorded and sha256_file(build_dir / "report.json") != recorded:
        raise ArtifactIntegrityError(f"The build's report '{build_dir / 'report.json'}' differs from the sha256 its "
                                     "manifest recorded: it was edited after the build. Rebuild, then merge.")
    unverified = verify_same_bundle(device, manifest, build_dir, source)
    data = read_report(build_dir)
    engine_names = set(device[SEAL_KEY].get("engines") or [])
    device_rows = [dict(r, measured_on="device") for r in device["results"]]
    ws_rows = [r for r in data["results"] if r["artifact"] not in engine_names and r.get("measured_on") != "device"]
    dev_gate = GateResult.from_dict(device["gate"])
    pending = sorted(r["artifact"] for r in device["results"] if r.get("pending"))
    dev_digest = device[SEAL_KEY]["sha256"]
    summary = {
        "report": DEVICE_REPORT, "sha256_sealed": dev_digest, "bundle": device[SEAL_KEY]["bundle"],
        "signed_by": device[SEAL_KEY]["signature"]["key_id"], "bundle_signed_by": device[SEAL_KEY].get("bundle_signed_by"),
        "bundle_files_verified": len(device[SEAL_KEY]["bundle_files"]), "bundle_files_not_checked_on_device": unverified,
        "machine": device.get("device"), "gate_passed": dev_gate.passed, "gate": device["gate"], "engines_pending": pending,
        "engines_built": sorted(n for n in engine_names if n not in pending),
    }
    # a second merge replaces the first one's notes
    notes = [n for n in (data.get("notes") or []) if not n.startswith(("Device report merged", "device: "))] + [
        f"Device report merged from '{source.name}' (bundle {summary['bundle']}, {summary['bundle_files_verified']} "
        f"files' sha256 match this build's bundle; signed by device key {summary['signed_by']}, seal {dev_digest[:12]}...): "
        f"device gate "
        f"{'passed' if dev_gate.passed else 'FAILED'}" + (f"; engines still pending on device: {', '.join(pending)}"
                                                          if pending else "; every engine built and checked on the device") + "."
    ] + [f"device: {n}" for n in device.get("notes") or []]
    extra = {k: v for k, v in data.items() if k not in _CORE}
    extra["device"] = summary
    gate = regate(ws_rows + device_rows, data["reference"], recipe.section("gates"), summary)
    report = make_report(model=data["model"], target=data["target"], reference=data["reference"],
                         results=ws_rows + device_rows, gate=gate, dataset=data["dataset"], stages=data.get("stages"),
                         notes=notes, extra=extra)
    kept = build_dir / DEVICE_REPORT
    with atomic_file(kept) as tmp:
        shutil.copyfile(source, tmp)
    write_report(report, build_dir)
    manifest = dict(manifest)
    reports = dict(manifest.get("reports") or {})
    for name in list(reports) + ["report.json"]:  # report.md / .html were rewritten too
        if (build_dir / name).is_file():
            reports[name] = sha256_file(build_dir / name)
    reports[DEVICE_REPORT] = sha256_file(kept)
    manifest["reports"] = reports
    manifest["device"] = summary
    with atomic_file(build_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    log.info("merged device report %s into %s", source, build_dir)
    return report


def regate(results: List[Dict[str, Any]], reference: str, gates: Dict[str, Any],
           device: Optional[Dict[str, Any]]) -> Any:
    """The gate of a build with device rows: the recipe's gates on the workstation's rows, plus the device's own checks.

    Rows measured on the device (golden images only) are never held to the workstation's accuracy gates.
    """
    from ..evaluation.gate import GateResult, apply_gates

    ws = apply_gates([r for r in results if r.get("measured_on") != "device"], reference, gates)
    if not device or not device.get("gate"):
        return ws
    dev = GateResult.from_dict(device["gate"])
    return GateResult(ws.passed and dev.passed, ws.checks + dev.checks)


def engines_pending(report: Dict[str, Any]) -> bool:
    """True when the merged report still has TensorRT engines pending on the device (exit 7 when all else passed)."""
    return bool((report.get("device") or {}).get("engines_pending"))


_CORE = {"schema", "schema_version", "model", "target", "reference", "dataset", "results", "gate", "stages", "notes",
         "baseline", "device"}

