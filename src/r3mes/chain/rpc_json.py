"""CometBFT JSON shapes of blocks, headers, commits and transactions, and RPC errors.

Heights are strings, hashes upper-case hex, tx bytes base64, as CometBFT's RPC writes them
(https://docs.cometbft.com/v0.38/rpc/), so clients written for CometBFT read our answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from r3mes.chain.identity import NodeIdentity
from r3mes.chain.store import StoredTx
from r3mes.chain.transition import Block, Header, TxResult
from r3mes.chain.tx import MAX_TX_BYTES

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request may have (CometBFT requests need 3)."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"')
_BRACKETS = re.compile(rb"[\[\]{}]")
_HEIGHT = re.compile(r"[0-9]{1,19}")
MAX_HEIGHT = 2**63 - 1
"""Heights are SQLite INTEGERs (signed 64-bit), as CometBFT's int64."""

BLOCK_PROTOCOL = "11"
"""CometBFT 0.38's block protocol version, reported in header.version.block."""
EMPTY_HASH = hashlib.sha256(b"").hexdigest().upper()
"""CometBFT's hash of an empty list (no evidence, no tx results, no previous commit)."""


PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
ERROR_MESSAGES = {
    PARSE_ERROR: "Parse error. Invalid JSON",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}
"""CometBFT's fixed `error.message` per code; what went wrong is in `error.data`."""
CODESPACE = "remes"
"""The codespace the R3MES ABCI app reports in its CheckTx, FinalizeBlock and Query answers."""


class RpcError(Exception):
    """A JSON-RPC error: its code (-32602 bad parameters, -32603 the method failed, as
    CometBFT sorts them) and what went wrong (the answer's `error.data`).

    `status` is the HTTP status of an answer to a request that could not be read as
    JSON-RPC at all (400: not JSON, nested too deep; 413: too large). A method's error is
    answered with HTTP 200, as CometBFT answers a JSON-RPC POST."""

    def __init__(self, status: int, message: str, code: int = INVALID_PARAMS) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def error_json(code: int, detail: str) -> dict[str, Any]:
    """CometBFT's error object: a fixed message per code, the detail as `data` (an unknown
    method has no data, as on CometBFT)."""
    doc: dict[str, Any] = {"code": code, "message": ERROR_MESSAGES.get(code, "Server error")}
    if code != METHOD_NOT_FOUND and detail:
        doc["data"] = detail
    return doc


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in `data` (brackets inside strings do not count).

    Runs before `json.loads`, whose recursion would otherwise fail on a deep document.
    """
    depth = deepest = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub(b'""', data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode_request(data: bytes | bytearray | str) -> Any:
    """A JSON-RPC request document; RpcError (-32700) when it is not JSON or nests too deep."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise RpcError(400, f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels", -32700)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RpcError(400, "the request is not JSON; send a JSON-RPC 2.0 request", -32700) from exc


def height_param(value: str, name: str) -> int:
    """A block height written in ASCII digits, within SQLite's signed 64-bit range."""
    text = value.strip().strip('"')
    if not _HEIGHT.fullmatch(text) or int(text) > MAX_HEIGHT:
        raise RpcError(400, f"{name} must be an integer in [0, {MAX_HEIGHT}], not {value[:40]!r}")
    return int(text)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _block_id(block_hash: str) -> dict[str, Any]:
    # One part: the devnet does not split blocks for gossip. Its part-set hash is the
    # RFC 6962 leaf hash of the block hash (CometBFT's Merkle root of one leaf).
    if not block_hash:
        return {"hash": "", "parts": {"total": 0, "hash": ""}}
    parts = hashlib.sha256(b"\x00" + bytes.fromhex(block_hash)).hexdigest().upper()
    return {"hash": block_hash.upper(), "parts": {"total": 1, "hash": parts}}


def _canonical_hash(doc: object) -> str:
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest().upper()


def validators_json(identity: NodeIdentity) -> list[dict[str, Any]]:
    """The devnet's validator set: its node identity, voting power 1."""
    return [
        {
            "address": identity.validator_address,
            "pub_key": identity.pub_key_json(),
            "voting_power": "1",
            "proposer_priority": "0",
        }
    ]


def results_hash(codes: list[int]) -> str:
    """Hash of a block's tx result codes (the deterministic part of its results)."""
    return _canonical_hash(codes) if codes else EMPTY_HASH


def header_json(
    h: Header, *, identity: NodeIdentity, app_version: int, last_results_hash: str
) -> dict[str, Any]:
    """CometBFT's header fields. The devnet's own hashes stand where CometBFT's protobuf
    Merkle roots would: canonical-JSON SHA-256 of the last commit, the validator set and
    the consensus constants; `last_results_hash` is `results_hash` of the previous block."""
    last_commit = last_commit_json(h, identity)
    validators = _canonical_hash(validators_json(identity))
    consensus = {"block": BLOCK_PROTOCOL, "app": app_version, "max_tx_bytes": MAX_TX_BYTES}
    return {
        "version": {"block": BLOCK_PROTOCOL, "app": str(app_version)},
        "chain_id": h.chain_id,
        "height": str(h.height),
        "time": rfc3339(h.time_ms),
        "last_block_id": _block_id(h.last_block_hash),
        "last_commit_hash": _canonical_hash(last_commit) if h.height > 1 else EMPTY_HASH,
        "data_hash": h.data_hash.upper(),
        "validators_hash": validators,
        "next_validators_hash": validators,
        "consensus_hash": _canonical_hash(consensus),
        "app_hash": h.app_hash.upper(),
        "last_results_hash": last_results_hash,
        "evidence_hash": EMPTY_HASH,
        "proposer_address": h.proposer,
    }


def commit_sign_bytes(*, chain_id: str, height: int, block_hash: str) -> bytes:
    """What the devnet validator signs to commit a block (R3MES devnet's own vote
    encoding; a CometBFT network signs its canonical protobuf vote instead)."""
    doc = {"chain_id": chain_id, "height": height, "block_hash": block_hash.upper()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def commit_json(
    *, chain_id: str, height: int, block_hash: str, time_ms: int, identity: NodeIdentity
) -> dict[str, Any]:
    """The commit of block `height`: the single devnet validator's signature over it."""
    signed = commit_sign_bytes(chain_id=chain_id, height=height, block_hash=block_hash)
    return {
        "height": str(height),
        "round": 0,
        "block_id": _block_id(block_hash),
        "signatures": [
            {
                "block_id_flag": 2,  # BLOCK_ID_FLAG_COMMIT
                "validator_address": identity.validator_address,
                "timestamp": rfc3339(time_ms),
                "signature": base64.b64encode(identity.sign(signed)).decode(),
            }
        ],
    }


def last_commit_json(h: Header, identity: NodeIdentity) -> dict[str, Any]:
    """The commit of block h-1 carried in block h: the single devnet validator's signature."""
    if h.height <= 1:
        return {"height": "0", "round": 0, "block_id": _block_id(""), "signatures": []}
    return commit_json(
        chain_id=h.chain_id,
        height=h.height - 1,
        block_hash=h.last_block_hash,
        time_ms=h.time_ms,
        identity=identity,
    )


def block_json(
    block: Block, *, identity: NodeIdentity, app_version: int, last_results_hash: str
) -> dict[str, Any]:
    header = header_json(
        block.header,
        identity=identity,
        app_version=app_version,
        last_results_hash=last_results_hash,
    )
    return {
        "block_id": _block_id(block.hash),
        "block": {
            "header": header,
            "data": {"txs": [base64.b64encode(t).decode() for t in block.txs]},
            "evidence": {"evidence": []},
            "last_commit": last_commit_json(block.header, identity),
        },
    }


def exec_result_json(code: int, log: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """CometBFT's ExecTxResult / ResponseCheckTx JSON. R3MES meters no gas and returns no
    data or info, so those fields are CometBFT's zero values."""
    return {
        "code": code,
        "data": None,
        "log": log,
        "info": "",
        "gas_wanted": "0",
        "gas_used": "0",
        "events": events,
        "codespace": CODESPACE,
    }


def tx_result_json(r: TxResult) -> dict[str, Any]:
    return exec_result_json(r.code, r.log, [e.to_json() for e in r.events])


def stored_tx_json(t: StoredTx, proof: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {
        "hash": t.hash,
        "height": str(t.height),
        "index": t.index,
        "tx_result": exec_result_json(t.code, t.log, t.events),
        "tx": base64.b64encode(t.raw).decode(),
    }
    if proof is not None:
        doc["proof"] = proof
    return doc


def tx_proof_json(txs: tuple[bytes, ...], index: int, root_hash: str) -> dict[str, Any]:
    """CometBFT's TxProof fields for tx `index` of a block whose header has `root_hash`
    (its data_hash). The devnet's data_hash is flat, not a Merkle tree: SHA-256 of
    b"r3mes-data-v1" and every tx's SHA-256 in order. So `aunts` holds the other txs'
    hashes (every leaf but this one, in order): `verify_tx_proof` recomputes the root
    from them. A CometBFT Merkle verifier would reject it; see docs/chain-rpc.md."""
    leaves = [hashlib.sha256(raw).digest() for raw in txs]
    return {
        "root_hash": root_hash.upper(),
        "data": base64.b64encode(txs[index]).decode(),
        "proof": {
            "total": str(len(txs)),
            "index": str(index),
            "leaf_hash": base64.b64encode(leaves[index]).decode(),
            "aunts": [base64.b64encode(h).decode() for i, h in enumerate(leaves) if i != index],
        },
    }


def verify_tx_proof(proof: dict[str, Any]) -> bool:
    """Whether a `tx_proof_json` proof shows its tx under its root hash."""
    inner = proof["proof"]
    leaf = hashlib.sha256(base64.b64decode(proof["data"])).digest()
    if base64.b64decode(inner["leaf_hash"]) != leaf:
        return False
    others = [base64.b64decode(a) for a in inner["aunts"]]
    index, total = int(inner["index"]), int(inner["total"])
    if len(others) != total - 1 or not 0 <= index < total:
        return False
    digest = hashlib.sha256(b"r3mes-data-v1")
    for h in [*others[:index], leaf, *others[index:]]:
        digest.update(h)
    return bool(digest.hexdigest().upper() == str(proof["root_hash"]).upper())


def parse_bytes(value: str, what: str, limit: int = MAX_TX_BYTES) -> bytes:
    """CometBFT URI convention: 0x-prefixed hex, else (optionally quoted) base64."""
    text = value.strip().strip('"')
    if len(text) > 2 * limit + 2:
        raise RpcError(400, f"{what} is larger than {limit} bytes")
    try:
        if text.startswith(("0x", "0X")):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise RpcError(400, f"{what} must be 0x-hex or base64") from exc


def number_param(value: str | int | float, name: str, *, low: float, high: float) -> float:
    """A numeric parameter (possibly a quoted string) within [low, high]."""
    try:
        number = float(str(value).strip('"'))
    except ValueError as exc:
        raise RpcError(400, f"{name} must be a number, not {value!r}") from exc
    if not low <= number <= high:  # also false for nan
        raise RpcError(400, f"{name} must be in [{low:g}, {high:g}]")
    return number
