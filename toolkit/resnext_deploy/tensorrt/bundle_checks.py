"""What the device checks in a bundle's manifest before it uses any of it (read_bundle and compile --bundle).

Every path the manifest names stays inside the bundle (resolved, symbolic links included), every engine name is a
safe file name, the recipe values it carries pass the workstation's own range checks (recipes.check_values), and,
where the device pins the workstation's public key, the manifest carries that key's signature (buildfolder/signing.py). All
refusals are BadInputError (exit 2) naming the offending value. Python 3.8, no heavy imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from ..errors import BadInputError
from ..buildfolder.signing import PublicKey, SigningKey, canonical_json, verify_record

#: engine names become file names on the device (engines/<name>.engine): this set only
ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENGINES_PREFIX = "engines/"
SIGNATURE_KEY = "signature"


def confined(root: Path, rel: Any) -> Path:
    """``root / rel`` resolved, refused unless it stays inside ``root`` (no absolute path, no '..', no link out)."""
    base = Path(root).resolve()
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute():
        raise BadInputError(f"The bundle's manifest names the path {rel!r}: only relative paths inside the bundle are "
                            f"accepted. The manifest in '{root}' was edited; copy the bundle again.")
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise BadInputError(f"The bundle's manifest names '{rel}', which leads outside the bundle '{root}' (to "
                            f"'{path}'): refused. The manifest was edited or the bundle holds a symbolic link out of it.")
    return path


def _manifest_paths(manifest: Dict[str, Any]) -> Iterator[Any]:
    for a in manifest.get("artifacts", []) or []:
        yield a.get("path", "")
        yield from (a.get("files") or {})
    yield from ((manifest.get("bundle") or {}).get("files") or {})


def check_manifest(root: Path, manifest: Dict[str, Any]) -> None:
    """Paths confined, engine names safe, recipe values in range: before any file is opened."""
    from ..recipes import check_values

    for rel in _manifest_paths(manifest):
        confined(root, rel)
    for spec in (manifest.get("bundle") or {}).get("engines", []) or []:
        name = spec.get("name") if isinstance(spec, dict) else spec
        if not isinstance(name, str) or not ENGINE_NAME.fullmatch(name) or ".." in name:
            raise BadInputError(f"The bundle's engine name {name!r} is not a safe file name (letters, digits, '.', '_', "
                                "'-', at most 64, no '..'): refused. The manifest was edited; copy the bundle again.")
    if not isinstance(manifest.get("recipe"), dict):
        raise BadInputError(f"The bundle's manifest in '{root}' carries no recipe: rebuild the bundle on the workstation.")
    check_values(manifest["recipe"], f"the bundle's manifest ({Path(root) / 'manifest.json'})")


def signed_content(manifest: Dict[str, Any]) -> bytes:
    """The bytes the workstation signs: the manifest as written, less what compile --bundle adds (engines, device)."""
    body = {k: v for k, v in manifest.items() if k not in (SIGNATURE_KEY, "device")}
    body["artifacts"] = [a for a in manifest.get("artifacts", [])
                         if not str(a.get("path", "")).startswith(ENGINES_PREFIX)]
    return canonical_json(body)


def sign_manifest(manifest: Dict[str, Any], key: SigningKey) -> Dict[str, Any]:
    """The manifest with the workstation's signature record added."""
    return dict(manifest, **{SIGNATURE_KEY: key.record(signed_content(manifest))})


def verify_origin(root: Path, manifest: Dict[str, Any], pinned: Optional[PublicKey]) -> Optional[str]:
    """The key id that signed the manifest when a workstation key is pinned (refused if it did not), else None."""
    if pinned is None:
        return None
    hint = ("Check that the bundle comes from the workstation whose key you pinned (`compile --bundle "
            "--workstation-key`, or workstation-key.pub in resnext-deploy's config folder); copy it again.")
    return verify_record(manifest.get(SIGNATURE_KEY), signed_content(manifest), pinned,
                         f"The bundle manifest '{Path(root) / 'manifest.json'}'", hint).key_id
