"""Encrypted key files: round trip, wrong passphrase, tamper detection, file mode."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from r3mes.chain.crypto import key_from_mnemonic
from r3mes.chain.errors import KeystoreError
from r3mes.chain.keystore import Keystore

MNEMONIC = "dinner proud piano mention silk plunge forest fold trial duck electric define"


def make(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "keys", scrypt_n=2**10)


def test_create_load_export(tmp_path: Path) -> None:
    ks = make(tmp_path)
    info, phrase = ks.create("alice", passphrase="pw")
    assert ks.load("alice", passphrase="pw").address == info.address
    assert key_from_mnemonic(phrase).address == info.address
    exported = ks.export("alice", passphrase="pw")
    assert exported.mnemonic == phrase
    assert exported.secret_hex not in repr(exported)
    assert [k.name for k in ks.list()] == ["alice"]
    path = ks.path("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert exported.secret_hex not in text and phrase.split()[0] + " " not in text


def test_import_mnemonic_and_secret(tmp_path: Path) -> None:
    ks = make(tmp_path)
    info = ks.import_mnemonic("v", mnemonic=MNEMONIC, passphrase="pw")
    assert info.address == key_from_mnemonic(MNEMONIC).address
    secret = key_from_mnemonic(MNEMONIC).secret.hex()
    assert ks.import_secret("raw", secret_hex=secret, passphrase="x").address == info.address
    with pytest.raises(KeystoreError):
        ks.import_secret("bad", secret_hex="zz", passphrase="x")


def test_wrong_passphrase_and_tamper(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.import_mnemonic("a", mnemonic=MNEMONIC, passphrase="right")
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        ks.load("a", passphrase="wrong")
    doc = json.loads(ks.path("a").read_text())
    doc["address"] = "remes1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"
    ks.path("a").write_text(json.dumps(doc))
    with pytest.raises(KeystoreError):
        ks.load("a", passphrase="right")


def test_rejects_bad_names_duplicates_and_empty_passphrase(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.create("a", passphrase="p", words=12)
    with pytest.raises(KeystoreError, match="already exists"):
        ks.create("a", passphrase="p")
    for bad in ("../x", "", "a b", "x" * 65):
        with pytest.raises(KeystoreError):
            ks.create(bad, passphrase="p")
    with pytest.raises(KeystoreError):
        ks.create("b", passphrase="")
    with pytest.raises(KeystoreError, match="no key named"):
        ks.show("missing")


def test_list_skips_corrupt_files(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.create("good", passphrase="p", words=12)
    (tmp_path / "keys" / "bad.json").write_text("{not json")
    assert [k.name for k in ks.list()] == ["good"]
