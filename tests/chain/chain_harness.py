"""A tiny in-memory chain for state-machine tests: sign, put in a block, apply."""

from __future__ import annotations

from collections.abc import Sequence

from r3mes.chain.crypto import SigningKey
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.msgs import ArtifactSpec, Msg
from r3mes.chain.proto.gen.remes.remes.v1 import tx_pb2
from r3mes.chain.state import State, genesis_state
from r3mes.chain.transition import BlockResult, TxResult, apply_block, make_block
from r3mes.chain.tx import build_tx, sign_doc_bytes
from r3mes.spec.shards import round_shard

CHAIN_ID = "r3mes-test-1"
MODEL = ArtifactSpec(
    kind="model", id="bitnet-tiny", version=1, cid="bafymodel", sha256="11" * 32, size=100
)
DATASET = ArtifactSpec(
    kind="dataset", id="ds", version=1, cid="bafydata", sha256="22" * 32, size=50
)


def key(n: int) -> SigningKey:
    return SigningKey(secret=n.to_bytes(32, "big"))


def make_genesis(**params: object) -> Genesis:
    base = {
        "devnet": True,
        "pow_difficulty": 2,
        "attestation_quorum": 2,
        "round_length": 5,
        "shards_per_round": 4,
        "authority": key(99).address,
    }
    base.update(params)
    return Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=1_000_000,
        params=Params(**base),  # type: ignore[arg-type]
        accounts=tuple(GenesisAccount(key(i).address, 1000) for i in range(1, 6)),
        artifacts=(MODEL, DATASET),
    )


class Harness:
    def __init__(self, genesis: Genesis | None = None) -> None:
        self.genesis = genesis or make_genesis()
        self.state: State = genesis_state(self.genesis)
        self.time_ms = self.genesis.genesis_time_ms
        self.blocks: list[object] = []

    def sign(
        self,
        signer: SigningKey,
        msgs: Sequence[Msg],
        *,
        sequence: int | None = None,
        chain_id: str = CHAIN_ID,
        account_number: int | None = None,
    ) -> bytes:
        acc = self.state.accounts.get(signer.address)
        return build_tx(
            list(msgs),
            key=signer,
            chain_id=chain_id,
            account_number=account_number
            if account_number is not None
            else (acc.number if acc else 0),
            sequence=sequence if sequence is not None else (acc.sequence if acc else 0),
        )

    def block(self, txs: Sequence[bytes] = (), *, dt_ms: int = 1000) -> BlockResult:
        self.time_ms += dt_ms
        block = make_block(self.state, txs=txs, time_ms=self.time_ms)
        self.state, result = apply_block(self.state, block)
        self.blocks.append(block)
        return result

    def send(self, signer: SigningKey, *msgs: Msg) -> TxResult:
        return self.block([self.sign(signer, msgs)]).tx_results[0]

    def advance_to_height(self, height: int) -> None:
        while self.state.height < height:
            self.block()

    def assigned(self, miner: SigningKey, round_number: int | None = None) -> int:
        """The shard the ledger accepts from `miner` in the round, given its claims now."""
        rnd = self.state.rounds[round_number or self.state.current_round]
        return round_shard(
            seed_hex=rnd.seed,
            miner=miner.address,
            n_shards=self.state.params.shards_per_round,
            claimed={s for s, _ in rnd.claims},
        )

    def balance(self, signer: SigningKey) -> int:
        acc = self.state.accounts.get(signer.address)
        return acc.balance if acc else 0


_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
FORGERIES = ("other_key", "flipped_bit", "high_s")


def forge(raw: bytes, how: str, *, account_number: int, salt: int = 0) -> bytes:
    """`raw` with only its signature replaced; pubkey, creator and sequence are kept.

    other_key: another key's valid signature over the same sign doc; flipped_bit: one bit
    of the real signature flipped; high_s: the real signature's mirror (r, n - s), valid
    ECDSA math but not the canonical low-S form.
    """
    envelope = tx_pb2.TxRaw.FromString(raw)
    signature = bytes(envelope.signatures[0])
    if how == "other_key":
        doc = sign_doc_bytes(
            body_bytes=envelope.body_bytes,
            auth_info_bytes=envelope.auth_info_bytes,
            chain_id=CHAIN_ID,
            account_number=account_number,
        )
        signature = key(1000 + salt).sign(doc)
    elif how == "flipped_bit":
        bit = salt % (8 * len(signature))
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        signature = bytes(flipped)
    elif how == "high_s":
        s_value = int.from_bytes(signature[32:], "big")
        signature = signature[:32] + (_ORDER - s_value).to_bytes(32, "big")
    else:
        raise ValueError(how)
    forged = tx_pb2.TxRaw(
        body_bytes=envelope.body_bytes,
        auth_info_bytes=envelope.auth_info_bytes,
        signatures=[signature],
    )
    return bytes(forged.SerializeToString(deterministic=True))
