"""The signed transaction envelope: Cosmos TxRaw / SignDoc layout, SIGN_MODE_DIRECT.

`build_tx` signs SHA-256(SignDoc(body_bytes, auth_info_bytes, chain_id, account_number)),
so a signature is only valid on one chain, for one account, at one sequence: a tx cannot
be replayed on another chain or twice on the same one. `decode_tx` is the only parser of
untrusted transaction bytes; it enforces size limits and raises only TxDecodeError.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError

from r3mes.chain.crypto import PUBKEY_SIZE, SIGNATURE_SIZE, SigningKey, address_from_pubkey
from r3mes.chain.crypto import verify_signature as _verify
from r3mes.chain.errors import KeyMaterialError, TxDecodeError
from r3mes.chain.msgs import Msg, decode_msg, encode_msg
from r3mes.chain.proto.gen.remes.remes.v1 import tx_pb2

MAX_TX_BYTES = 64 * 1024
"""Largest encoded transaction accepted anywhere (mempool, blocks, decode)."""
MAX_MSGS = 16
MAX_MEMO = 256


def tx_hash(raw: bytes) -> str:
    """CometBFT-style transaction hash: upper-case hex SHA-256 of the raw bytes."""
    return hashlib.sha256(raw).hexdigest().upper()


def sign_doc_bytes(
    *, body_bytes: bytes, auth_info_bytes: bytes, chain_id: str, account_number: int
) -> bytes:
    doc = tx_pb2.SignDoc(
        body_bytes=body_bytes,
        auth_info_bytes=auth_info_bytes,
        chain_id=chain_id,
        account_number=account_number,
    )
    return bytes(doc.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class SignedTx:
    """A decoded transaction; `raw` is exactly the bytes that were decoded."""

    msgs: tuple[Msg, ...]
    memo: str
    timeout_height: int
    pubkey: bytes
    sequence: int
    signature: bytes
    body_bytes: bytes = field(repr=False)
    auth_info_bytes: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @functools.cached_property
    def signer(self) -> str:
        return address_from_pubkey(self.pubkey)

    @property
    def hash(self) -> str:
        return tx_hash(self.raw)

    def verify(self, *, chain_id: str, account_number: int) -> bool:
        """True iff the signature is valid for this chain id and account number."""
        message = sign_doc_bytes(
            body_bytes=self.body_bytes,
            auth_info_bytes=self.auth_info_bytes,
            chain_id=chain_id,
            account_number=account_number,
        )
        return _verify(pubkey=self.pubkey, message=message, signature=self.signature)


def build_tx(
    msgs: Sequence[Msg],
    *,
    key: SigningKey,
    chain_id: str,
    account_number: int,
    sequence: int,
    memo: str = "",
    timeout_height: int = 0,
) -> bytes:
    """Encode and sign `msgs` as one transaction; returns the TxRaw bytes."""
    if not 0 < len(msgs) <= MAX_MSGS:
        raise TxDecodeError(f"a transaction carries 1..{MAX_MSGS} messages")
    if len(memo) > MAX_MEMO:
        raise TxDecodeError(f"memo is limited to {MAX_MEMO} characters")
    body = tx_pb2.TxBody(memo=memo, timeout_height=timeout_height)
    for msg in msgs:
        url, value = encode_msg(msg)
        body.messages.append(AnyProto(type_url=url, value=value))
    body_bytes = body.SerializeToString(deterministic=True)
    auth = tx_pb2.AuthInfo(
        signer_infos=[tx_pb2.SignerInfo(public_key=key.public_key, sequence=sequence)]
    )
    auth_bytes = auth.SerializeToString(deterministic=True)
    signature = key.sign(
        sign_doc_bytes(
            body_bytes=body_bytes,
            auth_info_bytes=auth_bytes,
            chain_id=chain_id,
            account_number=account_number,
        )
    )
    raw = tx_pb2.TxRaw(body_bytes=body_bytes, auth_info_bytes=auth_bytes, signatures=[signature])
    out = bytes(raw.SerializeToString(deterministic=True))
    if len(out) > MAX_TX_BYTES:
        raise TxDecodeError(f"transaction is {len(out)} bytes; the limit is {MAX_TX_BYTES}")
    return out


_PARSE_ERRORS = (DecodeError, ValueError, KeyError, TypeError, RecursionError, OverflowError)


def decode_tx(raw: bytes) -> SignedTx:
    """Parse untrusted TxRaw bytes; raises TxDecodeError (never anything else) if malformed."""
    if not isinstance(raw, bytes | bytearray) or not raw:
        raise TxDecodeError("transaction bytes are empty")
    if len(raw) > MAX_TX_BYTES:
        raise TxDecodeError(f"transaction is {len(raw)} bytes; the limit is {MAX_TX_BYTES}")
    raw = bytes(raw)
    try:
        envelope = tx_pb2.TxRaw.FromString(raw)
        if envelope.SerializeToString(deterministic=True) != raw:
            raise TxDecodeError("TxRaw is not canonically encoded")
        body = tx_pb2.TxBody.FromString(envelope.body_bytes)
        auth = tx_pb2.AuthInfo.FromString(envelope.auth_info_bytes)
        msgs = tuple(decode_msg(m.type_url, m.value) for m in body.messages)
    except TxDecodeError:
        raise
    except _PARSE_ERRORS as exc:
        raise TxDecodeError(f"malformed transaction: {type(exc).__name__}: {exc}") from exc
    if not 0 < len(msgs) <= MAX_MSGS:
        raise TxDecodeError(f"a transaction carries 1..{MAX_MSGS} messages, not {len(msgs)}")
    if len(body.memo) > MAX_MEMO:
        raise TxDecodeError(f"memo is limited to {MAX_MEMO} characters")
    if len(auth.signer_infos) != 1 or len(envelope.signatures) != 1:
        raise TxDecodeError("a transaction has exactly one signer and one signature")
    signer = auth.signer_infos[0]
    signature = bytes(envelope.signatures[0])
    if len(signer.public_key) != PUBKEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise TxDecodeError("public key must be 33 bytes and signature 64 bytes")
    try:
        address_from_pubkey(bytes(signer.public_key))
    except KeyMaterialError as exc:
        raise TxDecodeError(str(exc)) from exc
    return SignedTx(
        msgs=msgs,
        memo=body.memo,
        timeout_height=body.timeout_height,
        pubkey=bytes(signer.public_key),
        sequence=signer.sequence,
        signature=signature,
        body_bytes=bytes(envelope.body_bytes),
        auth_info_bytes=bytes(envelope.auth_info_bytes),
        raw=raw,
    )
