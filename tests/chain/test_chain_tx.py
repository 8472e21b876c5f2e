"""Transaction envelope: round trip, replay/chain binding, size limits, fuzzed decoding."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import TxDecodeError, TxInvalid
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    Faucet,
    Msg,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    SubmitGradient,
    TransferCredits,
    validate_basic,
)
from r3mes.chain.proto.gen.remes.remes.v1 import tx_pb2
from r3mes.chain.tx import MAX_TX_BYTES, build_tx, decode_tx

KEY = SigningKey(secret=bytes(range(1, 33)))
ADDR = KEY.address
ART = ArtifactSpec(
    kind="adapter",
    id="r3mes-lora",
    version=2,
    cid="bafkreiabc",
    sha256="ab" * 32,
    size=10,
    base_model_id="bitnet",
    base_model_version=1,
    target_modules=("q_proj", "v_proj"),
    rank=8,
    hf_repo="org/repo",
    hf_revision="main",
)
ALL_MSGS: list[Msg] = [
    RegisterNode(creator=ADDR, role="validator", endpoint="http://127.0.0.1:1", stake=5),
    SubmitGradient(creator=ADDR, round=3, shard=1, cid="bafy1", digest="cd" * 32, pow_nonce=9),
    Attest(creator=ADDR, submission_id=4, verdict="reject", distance_ppm=1234),
    ProposeAdapter(
        creator=ADDR,
        round=2,
        adapter_cid="bafy2",
        sha256="ef" * 32,
        size=7,
        version=3,
        parent_version=2,
        submission_ids=(1, 5),
    ),
    RegisterArtifact(creator=ADDR, artifact=ART),
    ApproveArtifact(creator=ADDR, kind="dataset", id="ds", version=1),
    ServingHeartbeat(creator=ADDR, endpoint="http://x", adapter_version=2, capacity=4),
    TransferCredits(creator=ADDR, to=ADDR, amount=3),
    Faucet(creator=ADDR, to=ADDR, amount=100),
]


@pytest.mark.parametrize("msg", ALL_MSGS, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Msg) -> None:
    validate_basic(msg)
    raw = build_tx([msg], key=KEY, chain_id="c1", account_number=7, sequence=2, memo="m")
    tx = decode_tx(raw)
    assert tx.msgs == (msg,)
    assert tx.signer == ADDR and tx.sequence == 2 and tx.memo == "m"
    assert tx.hash == decode_tx(raw).hash and len(tx.hash) == 64


def test_signature_binds_chain_and_account_number() -> None:
    tx = decode_tx(build_tx(ALL_MSGS[-1:], key=KEY, chain_id="c1", account_number=7, sequence=0))
    assert tx.verify(chain_id="c1", account_number=7)
    assert not tx.verify(chain_id="c2", account_number=7)
    assert not tx.verify(chain_id="c1", account_number=8)


def test_tampered_body_fails_signature() -> None:
    raw = build_tx(ALL_MSGS[-1:], key=KEY, chain_id="c1", account_number=1, sequence=0)
    env = tx_pb2.TxRaw.FromString(raw)
    body = tx_pb2.TxBody.FromString(env.body_bytes)
    body.memo = "changed"
    env.body_bytes = body.SerializeToString()
    tx = decode_tx(env.SerializeToString(deterministic=True))
    assert not tx.verify(chain_id="c1", account_number=1)


def test_decode_rejects_structural_problems() -> None:
    raw = build_tx(ALL_MSGS[-1:], key=KEY, chain_id="c", account_number=1, sequence=0)
    env = tx_pb2.TxRaw.FromString(raw)
    env.signatures.append(b"x" * 64)
    with pytest.raises(TxDecodeError, match="exactly one"):
        decode_tx(env.SerializeToString())
    with pytest.raises(TxDecodeError):
        decode_tx(b"")
    with pytest.raises(TxDecodeError, match="limit"):
        decode_tx(b"\x0a" * (MAX_TX_BYTES + 1))
    body = tx_pb2.TxBody()
    body.messages.add(type_url="/remes.remes.v1.MsgUnknown", value=b"")
    bad = tx_pb2.TxRaw(body_bytes=body.SerializeToString(), auth_info_bytes=env.auth_info_bytes)
    bad.signatures.append(b"s" * 64)
    with pytest.raises(TxDecodeError):
        decode_tx(bad.SerializeToString())
    with pytest.raises(TxDecodeError, match="canonical"):
        decode_tx(b"\x0a\x00" + raw)  # a repeated body field: last wins, re-encodes shorter


def test_validate_basic_rejects_bad_fields() -> None:
    bad: list[Msg] = [
        RegisterNode(creator=ADDR, role="king"),  # type: ignore[arg-type]  # not a Role, on purpose
        RegisterNode(creator="remes1bad", role="miner"),
        SubmitGradient(creator=ADDR, round=0, shard=0, cid="c", digest="00" * 32),
        SubmitGradient(creator=ADDR, round=1, shard=0, cid="c", digest="XYZ"),
        Attest(creator=ADDR, submission_id=1, verdict="maybe"),  # type: ignore[arg-type]  # not a Verdict
        TransferCredits(creator=ADDR, to=ADDR, amount=0),
        TransferCredits(creator=ADDR, to=ADDR, amount=-1),
        Faucet(creator=ADDR, to="cosmos1xyz", amount=1),
        ProposeAdapter(
            creator=ADDR,
            round=1,
            adapter_cid="c",
            sha256="00" * 32,
            size=1,
            version=5,
            parent_version=1,
            submission_ids=(1,),
        ),
    ]
    for msg in bad:
        with pytest.raises(TxInvalid):
            validate_basic(msg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzzed_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        decode_tx(data)
    except TxDecodeError:
        pass


_VALID = build_tx(ALL_MSGS, key=KEY, chain_id="c", account_number=1, sequence=0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 255), st.integers(0, 3))
def test_mutated_valid_tx_only_raises_decode_error(pos: int, byte: int, cut: int) -> None:
    data = _VALID[:pos] + bytes([byte]) + _VALID[pos + 1 + cut :]
    try:
        decode_tx(data)
    except TxDecodeError:
        pass
