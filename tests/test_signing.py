"""buildfolder/signing.py: one key format (raw Ed25519 public key, base64 or hex; key id = sha256[:16]), private keys 0600 and never
overwritten, signature records refused naming why, and the `device-key` command."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from click.testing import CliRunner

from resnext_deploy.cli import cli
from resnext_deploy.errors import ArtifactIntegrityError, BadInputError
from resnext_deploy.buildfolder.signing import (
    canonical_json,
    create_key,
    load_or_create_key,
    load_signing_key,
    parse_public_key,
    verify_record,
)


def test_a_new_key_is_0600_with_its_public_key_beside_it(tmp_path):
    key = create_key(tmp_path / "keys" / "device-key")
    assert stat.S_IMODE(os.stat(key.path).st_mode) == 0o600
    assert key.path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8 PEM
    pub = (tmp_path / "keys" / "device-key.pub").read_text().strip()
    assert pub == key.public.text and len(parse_public_key(pub).raw) == 32
    assert key.public.key_id == hashlib.sha256(key.public.raw).hexdigest()[:16]
    assert load_signing_key(key.path).public == key.public  # the same key read back
    again, created = load_or_create_key(key.path)
    assert not created and again.public == key.public


def test_a_key_is_never_overwritten(tmp_path):
    key = create_key(tmp_path / "k")
    before = key.path.read_bytes()
    with pytest.raises(BadInputError, match="never overwrites a key"):
        create_key(tmp_path / "k")
    assert key.path.read_bytes() == before


def test_a_private_key_others_can_read_or_of_another_type_is_refused(tmp_path):
    key = create_key(tmp_path / "k")
    os.chmod(key.path, 0o644)
    with pytest.raises(BadInputError, match="can be read by others .*chmod 600"):
        load_signing_key(key.path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    other = tmp_path / "ec"
    other.write_bytes(pem)
    os.chmod(other, 0o600)
    with pytest.raises(BadInputError, match="Ed25519 keys only"):
        load_signing_key(other)
    (tmp_path / "junk").write_text("not a key")
    os.chmod(tmp_path / "junk", 0o600)
    with pytest.raises(BadInputError, match="not an unencrypted PKCS#8 PEM"):
        load_signing_key(tmp_path / "junk")


def test_public_keys_parse_from_base64_hex_or_a_file_and_nothing_else(tmp_path):
    key = create_key(tmp_path / "k")
    hex_text = key.public.raw.hex()
    (tmp_path / "hex.pub").write_text(hex_text + "\n")
    for value in (key.public.text, hex_text, str(tmp_path / "k.pub"), str(tmp_path / "hex.pub")):
        assert parse_public_key(value) == key.public, value
    for bad in ("", "abc", key.public.text[:-4], "00" * 31, str(tmp_path / "missing.pub")):
        with pytest.raises(BadInputError, match="neither an Ed25519 public key"):
            parse_public_key(bad)


def test_signature_records_are_refused_naming_why(tmp_path):
    key, other = create_key(tmp_path / "a"), create_key(tmp_path / "b")
    data = canonical_json({"b": 1, "a": [1.5, "x"]})
    assert data == b'{"a":[1.5,"x"],"b":1}'
    record = key.record(data)
    assert record["algorithm"] == "ed25519" and record["key_id"] == key.public.key_id
    assert verify_record(record, data, key.public, "R", "hint") == key.public
    cases = [
        (None, key.public, "R is not signed"),
        (record, None, f"signed by key {key.public.key_id}, but no key is pinned"),
        (record, other.public, f"signed by key {key.public.key_id}, not by the pinned key {other.public.key_id}"),
        (dict(record, algorithm="rsa"), key.public, "only ed25519"),
        (dict(record, signature=other.record(data)["signature"]), key.public, "does not verify"),
        (dict(record, signature="!!"), key.public, "does not verify"),
    ]
    for rec, pinned, message in cases:
        with pytest.raises(ArtifactIntegrityError, match=message):
            verify_record(rec, data, pinned, "R", "hint")
    with pytest.raises(ArtifactIntegrityError, match="altered after it was signed"):
        verify_record(record, data + b" ", key.public, "R", "hint")


def test_device_key_command_makes_then_shows_the_key(tmp_path):
    path = tmp_path / "cfg" / "device-key"
    first = CliRunner().invoke(cli, ["device-key", "--key", str(path)])
    assert first.exit_code == 0 and first.output.startswith("made: ") and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = load_signing_key(path)
    again = CliRunner().invoke(cli, ["device-key", "--key", str(path)])
    assert again.exit_code == 0 and again.output.startswith("key: ")
    assert f"key id: {key.public.key_id}\npublic key: {key.public.text}\n" in again.output
    os.chmod(path, 0o640)
    refused = CliRunner().invoke(cli, ["device-key", "--key", str(path)])
    assert refused.exit_code == 2 and "chmod 600" in refused.output
