"""Ed25519 signatures on what crosses between the workstation and a device: device reports and bundle manifests.

One key format. A public key is its raw 32 bytes written as base64 (64 hex digits are accepted too); its key id is
the first 16 hex digits of the sha256 of those 32 bytes. A private key file is PKCS#8 PEM, unencrypted (``openssl
pkey`` reads it), created with mode 0600 and never overwritten; ``<file>.pub`` beside it holds the public key.
What is signed is always canonical JSON (sorted keys, no spaces, UTF-8): the signature record is
``{"algorithm": "ed25519", "key_id", "public_key", "signature"}`` (base64), kept beside the data it covers.

The device's key lives in ``$RESNEXT_DEPLOY_DEVICE_KEY``, else ``$XDG_CONFIG_HOME/resnext-deploy/device-key``
(``~/.config/...``); the workstation key a device pins, in ``workstation-key.pub`` there. Python 3.8 (JetPack 5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import ArtifactIntegrityError, BadInputError

ALGORITHM = "ed25519"
DEVICE_KEY_ENV = "RESNEXT_DEPLOY_DEVICE_KEY"
DEVICE_KEY_FILE = "device-key"
WORKSTATION_PIN_FILE = "workstation-key.pub"
_PEM_LIMIT = 4096  # an Ed25519 PKCS#8 PEM is 119 bytes: anything much larger is not one


def _ed25519() -> Any:
    from ..optional import require

    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "sign or verify device reports and bundles")


def _serialization() -> Any:
    _ed25519()  # a clear "install cryptography" (exit 5) when it is missing
    from cryptography.hazmat.primitives import serialization

    return serialization


def config_dir() -> Path:
    """resnext-deploy's key folder: $XDG_CONFIG_HOME/resnext-deploy, else ~/.config/resnext-deploy."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "resnext-deploy"


def device_key_path(given: Union[str, Path, None] = None) -> Path:
    """The device's private key file: ``given``, else $RESNEXT_DEPLOY_DEVICE_KEY, else config_dir()/device-key."""
    return Path(given or os.environ.get(DEVICE_KEY_ENV) or config_dir() / DEVICE_KEY_FILE)


def canonical_json(data: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8 (NaN written as JSON's NaN, as reports do)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @property
    def text(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def verifies(self, signature: bytes, data: bytes) -> bool:
        ed = _ed25519()
        from cryptography.exceptions import InvalidSignature

        try:
            ed.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
            return True
        except InvalidSignature:
            return False


def _decode_key_text(text: str) -> Optional[bytes]:
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def parse_public_key(value: str, what: str = "the public key") -> PublicKey:
    """A public key from its text (base64 or hex of the raw 32 bytes) or from a file holding that text."""
    text = str(value).strip()
    path = Path(text)
    if _decode_key_text(text) is None and path.is_file():
        if path.stat().st_size > _PEM_LIMIT:
            raise BadInputError(f"{what} file '{path}' is {path.stat().st_size} bytes: a public key file is one line.")
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    raw = _decode_key_text(text)
    if raw is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise BadInputError(
            f"{what} '{shown}' is neither an Ed25519 public key (base64 or hex of 32 bytes) nor a file holding one. "
            "The device prints its key with `resnext-deploy device-key`; a key file's .pub beside it holds it too."
        )
    return PublicKey(raw)


class SigningKey:
    """An Ed25519 private key read from (or written to) its file."""

    def __init__(self, private: Any, path: Path) -> None:
        serialization = _serialization()
        self._private = private
        self.path = path
        self.public = PublicKey(private.public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw))

    def sign(self, data: bytes) -> bytes:
        return bytes(self._private.sign(data))

    def record(self, data: bytes) -> Dict[str, str]:
        """The signature record over ``data`` (canonical JSON bytes)."""
        return {"algorithm": ALGORITHM, "key_id": self.public.key_id, "public_key": self.public.text,
                "signature": base64.b64encode(self.sign(data)).decode("ascii")}


def create_key(path: Union[str, Path]) -> SigningKey:
    """Write a new key pair: ``path`` (PKCS#8 PEM, 0600, created exclusively) and ``path``.pub; refuses to overwrite."""
    serialization = _serialization()
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise BadInputError(f"The key file '{path}' already exists; resnext-deploy never overwrites a key. Use it, or "
                            "move it away first.")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = _ed25519().Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    key = SigningKey(private, path)
    Path(str(path) + ".pub").write_text(key.public.text + "\n", encoding="ascii")
    return key


def load_signing_key(path: Union[str, Path]) -> SigningKey:
    """A private key file; one that others can read, or that is not an Ed25519 PKCS#8 PEM, is refused naming it."""
    serialization = _serialization()
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"The private key '{path}' does not exist (make one: `resnext-deploy device-key --new`, "
                            "or on the workstation `resnext-deploy device-key --new --key FILE`).")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInputError(f"The private key '{path}' can be read by others (mode {oct(mode & 0o777)}): "
                            f"`chmod 600 {path}` and check nobody copied it.")
    data = path.read_bytes()[: _PEM_LIMIT + 1]
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"'{path}' is not an unencrypted PKCS#8 PEM private key ({exc}).") from exc
    if not isinstance(private, _ed25519().Ed25519PrivateKey):
        raise BadInputError(f"'{path}' holds a {type(private).__name__}; resnext-deploy signs with Ed25519 keys only.")
    return SigningKey(private, path)


def load_or_create_key(path: Union[str, Path]) -> Tuple[SigningKey, bool]:
    """The key at ``path``, made there first if missing; (key, True when it was just made)."""
    path = Path(path)
    if path.exists():
        return load_signing_key(path), False
    return create_key(path), True


def verify_record(record: Any, data: bytes, pinned: Optional[PublicKey], what: str, pin_hint: str) -> PublicKey:
    """Check the signature ``record`` over ``data`` against the ``pinned`` key; returns that key.

    Refused (ArtifactIntegrityError, exit 2) naming why: no signature, no key pinned, another key, a bad signature.
    """
    if not isinstance(record, dict) or not record.get("signature"):
        raise ArtifactIntegrityError(f"{what} is not signed, so nothing says where it came from. {pin_hint}")
    if record.get("algorithm") != ALGORITHM:
        raise ArtifactIntegrityError(f"{what} is signed with '{record.get('algorithm')}'; only {ALGORITHM} is accepted.")
    claimed = _decode_key_text(str(record.get("public_key", "")))
    claimed_id = PublicKey(claimed).key_id if claimed else str(record.get("key_id"))[:16]
    if pinned is None:
        raise ArtifactIntegrityError(
            f"{what} is signed by key {claimed_id}, but no key is pinned to check it against. {pin_hint}")
    if claimed != pinned.raw:
        raise ArtifactIntegrityError(f"{what} is signed by key {claimed_id}, not by the pinned key {pinned.key_id}. "
                                     f"{pin_hint}")
    try:
        signature = base64.b64decode(str(record["signature"]), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64 or not pinned.verifies(signature, data):
        raise ArtifactIntegrityError(f"{what}: its signature by key {pinned.key_id} does not verify: the content was "
                                     "altered after it was signed.")
    return pinned


def pinned_workstation_key(value: Optional[str] = None) -> Optional[PublicKey]:
    """The workstation key a device pins: ``value`` (text or file), else config_dir()/workstation-key.pub, else None."""
    if value:
        return parse_public_key(value, "The workstation key")
    pin = config_dir() / WORKSTATION_PIN_FILE
    return parse_public_key(str(pin), f"The pinned workstation key ({pin})") if pin.is_file() else None
