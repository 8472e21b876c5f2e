"""Passphrase-encrypted key files: one JSON file per key, scrypt + ChaCha20-Poly1305, mode 0600.

The file holds the address and public key in the clear (so `list`/`show` need no
passphrase) and the secret key plus its mnemonic encrypted; the name and address are bound
to the ciphertext as associated data, so a file cannot be relabelled without detection.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from r3mes.chain.crypto import SigningKey, generate_mnemonic, key_from_mnemonic, normalize_mnemonic
from r3mes.chain.errors import KeystoreError

log = logging.getLogger(__name__)

KEYSTORE_VERSION = 1
DEFAULT_SCRYPT_N = 2**15
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class KeyInfo:
    """The public part of a stored key."""

    name: str
    address: str
    pubkey_hex: str


@dataclass(frozen=True)
class ExportedKey:
    """The secret part of a stored key; only produced on an explicit export."""

    info: KeyInfo
    secret_hex: str = field(repr=False)
    mnemonic: str | None = field(repr=False)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise KeystoreError(f"key name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def _derive(passphrase: str, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode())


def _aad(name: str, address: str) -> bytes:
    return f"r3mes-keystore-v1|{name}|{address}".encode()


class Keystore:
    """Key files under one directory (normally `Home.keys`)."""

    def __init__(self, directory: Path, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> None:
        self.directory = directory
        self.scrypt_n = scrypt_n

    def path(self, name: str) -> Path:
        return self.directory / f"{_check_name(name)}.json"

    def create(self, name: str, *, passphrase: str, words: int = 24) -> tuple[KeyInfo, str]:
        """Make a new key from a fresh mnemonic; returns its info and the mnemonic."""
        mnemonic = generate_mnemonic(words)
        return self.import_mnemonic(name, mnemonic=mnemonic, passphrase=passphrase), mnemonic

    def import_mnemonic(self, name: str, *, mnemonic: str, passphrase: str) -> KeyInfo:
        """Store the m/44'/118'/0'/0/0 key of `mnemonic` under `name`."""
        phrase = normalize_mnemonic(mnemonic)
        return self._write(name, key_from_mnemonic(phrase), phrase, passphrase)

    def import_secret(self, name: str, *, secret_hex: str, passphrase: str) -> KeyInfo:
        """Store a raw 32-byte hex private key under `name`."""
        try:
            secret = bytes.fromhex(secret_hex.strip())
        except ValueError as exc:
            raise KeystoreError("private key must be 64 hex characters") from exc
        return self._write(name, SigningKey(secret=secret), None, passphrase)

    def list(self) -> list[KeyInfo]:
        """All keys, sorted by name (unreadable files are skipped with a warning)."""
        if not self.directory.is_dir():
            return []
        out: list[KeyInfo] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                out.append(self.show(path.stem))
            except KeystoreError as exc:
                log.warning("skipping key file %s: %s", path.name, exc)
        return out

    def show(self, name: str) -> KeyInfo:
        doc = self._read(name)
        return KeyInfo(name=name, address=doc["address"], pubkey_hex=doc["pubkey"])

    def load(self, name: str, *, passphrase: str) -> SigningKey:
        """Decrypt the signing key of `name`."""
        return SigningKey(secret=bytes.fromhex(self.export(name, passphrase=passphrase).secret_hex))

    def export(self, name: str, *, passphrase: str) -> ExportedKey:
        """Decrypt the secret key and mnemonic of `name`."""
        doc = self._read(name)
        try:
            kdf = doc["kdf"]
            key = _derive(passphrase, bytes.fromhex(kdf["salt"]), int(kdf["n"]))
            plain = ChaCha20Poly1305(key).decrypt(
                bytes.fromhex(doc["nonce"]),
                bytes.fromhex(doc["ciphertext"]),
                _aad(name, doc["address"]),
            )
            payload = json.loads(plain)
        except InvalidTag as exc:
            raise KeystoreError(
                f"wrong passphrase for key {name!r} (or the file is damaged)"
            ) from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise KeystoreError(f"key file for {name!r} is corrupt: {exc}") from exc
        signing = SigningKey(secret=bytes.fromhex(payload["secret"]))
        if signing.address != doc["address"]:
            raise KeystoreError(f"key file for {name!r} does not match its address")
        info = KeyInfo(name=name, address=doc["address"], pubkey_hex=doc["pubkey"])
        return ExportedKey(info=info, secret_hex=payload["secret"], mnemonic=payload["mnemonic"])

    def _read(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        if not path.is_file():
            raise KeystoreError(
                f"no key named {name!r} in {self.directory}; see `r3mes wallet list`"
            )
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise KeystoreError(f"key file {path} is too large to be a key file")
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeystoreError(f"key file {path} is not readable JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != KEYSTORE_VERSION:
            raise KeystoreError(f"key file {path} has an unknown format version")
        if not isinstance(doc.get("address"), str) or not isinstance(doc.get("pubkey"), str):
            raise KeystoreError(f"key file {path} lacks address/pubkey")
        return doc

    def _write(self, name: str, key: SigningKey, mnemonic: str | None, passphrase: str) -> KeyInfo:
        path = self.path(name)
        if path.exists():
            raise KeystoreError(f"a key named {name!r} already exists; pick another name")
        if not passphrase:
            raise KeystoreError("a non-empty passphrase is required to encrypt the key")
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        info = KeyInfo(name=name, address=key.address, pubkey_hex=key.public_key.hex())
        payload = json.dumps({"secret": key.secret.hex(), "mnemonic": mnemonic}).encode()
        cipher = ChaCha20Poly1305(_derive(passphrase, salt, self.scrypt_n))
        doc = {
            "version": KEYSTORE_VERSION,
            "name": name,
            "address": info.address,
            "pubkey": info.pubkey_hex,
            "kdf": {"name": "scrypt", "n": self.scrypt_n, "r": 8, "p": 1, "salt": salt.hex()},
            "cipher": "chacha20-poly1305",
            "nonce": nonce.hex(),
            "ciphertext": cipher.encrypt(nonce, payload, _aad(name, info.address)).hex(),
        }
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(doc, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        log.info("stored key %s (%s)", name, info.address)
        return info
