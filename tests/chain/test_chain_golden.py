"""App hashes pinned to a fixed scenario: any change to the state encoding, the commitment
or a handler's writes shows up here. The hashes were produced by the code before the typed
State / WorkingState split and the Literal vocabularies, which had to leave them unchanged."""

from __future__ import annotations

from collections.abc import Sequence

from r3mes.chain.crypto import SigningKey
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    Faucet,
    Msg,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    SubmitGradient,
    TransferCredits,
)
from r3mes.chain.pow import solve_pow
from r3mes.chain.state import State, genesis_state
from r3mes.chain.transition import apply_block, make_block
from r3mes.chain.tx import build_tx
from r3mes.spec.shards import round_shard

GOLDEN = {
    0: "cff9d671cb0c8a140510b7e02fbeedcfd54f789325bde7458225cd4868a14166",
    2: "b4c8e1a46a5d78b22eb4ce2f62d8e032a38fe74b81e1b0c44e4908b8365c7e4f",
    4: "07ce815a4fc118f41e69d1c2e468b3c481ef8033e5a5629f70c5100cfab5e8a1",
    7: "c8e896d6fd4cacbb1d768945684598487123ebbd8636e1b2f869c16fa3664905",
    9: "2a3e68e437e7774eff4a1f86a0fc569ed6dbc6ccfe57d501cb4ba9d82479b1d4",
    11: "2dcb288135b799907bc3388f6b9dffb088f87aed64ae8a8188f89784bdc14182",
    17: "f1dbcd4ec2e1fceae3fbb57f2502e158f49af09cff4d69d43ae63288eae695b3",
}


def _key(n: int) -> SigningKey:
    return SigningKey(secret=n.to_bytes(32, "big"))


class _Chain:
    def __init__(self, genesis: Genesis) -> None:
        self.state: State = genesis_state(genesis)
        self.time_ms = genesis.genesis_time_ms
        self.hashes = {0: self.state.app_hash()}
        self.codes: list[int] = []

    def sign(self, signer: SigningKey, msgs: Sequence[Msg]) -> bytes:
        acc = self.state.accounts.get(signer.address)
        return build_tx(
            list(msgs),
            key=signer,
            chain_id=self.state.chain_id,
            account_number=acc.number if acc else 0,
            sequence=acc.sequence if acc else 0,
        )

    def block(self, txs: Sequence[bytes] = ()) -> None:
        self.time_ms += 1000
        block = make_block(self.state, txs=txs, time_ms=self.time_ms)
        self.state, result = apply_block(self.state, block)
        self.hashes[self.state.height] = result.app_hash
        self.codes.extend(r.code for r in result.tx_results)

    def submit(self, miner: SigningKey, cid: str, digest: str) -> bytes:
        rnd = self.state.rounds[self.state.current_round]
        shard = round_shard(
            seed_hex=rnd.seed, miner=miner.address, n_shards=3, claimed={s for s, _ in rnd.claims}
        )
        msg = SubmitGradient(
            creator=miner.address, round=rnd.number, shard=shard, cid=cid, digest=digest
        )
        return self.sign(miner, [solve_pow(msg, chain_id=self.state.chain_id, difficulty=2)])


def test_app_hashes_of_a_full_round_trip_are_pinned() -> None:
    k = [_key(i) for i in range(1, 8)]
    auth = _key(99)
    model = ArtifactSpec(
        kind="model", id="m", version=1, cid="bafymodel", sha256="11" * 32, size=100
    )
    data = ArtifactSpec(
        kind="dataset", id="d", version=1, cid="bafydata", sha256="22" * 32, size=50
    )
    params = Params(
        devnet=True,
        pow_difficulty=2,
        attestation_quorum=1,
        round_length=4,
        shards_per_round=3,
        authority=auth.address,
    )
    accounts = (*(GenesisAccount(x.address, 1000) for x in k), GenesisAccount(auth.address, 10))
    chain = _Chain(Genesis("c-1", 1_000_000, params, accounts, (model, data)))
    chain.block()
    chain.block(
        [
            chain.sign(k[0], [RegisterNode(creator=k[0].address, role="miner", stake=10)]),
            chain.sign(k[1], [RegisterNode(creator=k[1].address, role="validator", stake=10)]),
            chain.sign(k[2], [RegisterNode(creator=k[2].address, role="proposer", stake=10)]),
            chain.sign(k[3], [TransferCredits(creator=k[3].address, to=k[4].address, amount=5000)]),
            chain.sign(k[5], [Faucet(creator=k[5].address, to=k[6].address, amount=7)]),
        ]
    )
    chain.block([chain.submit(k[0], "bafyu", "ab" * 32)])
    attest = Attest(creator=k[1].address, submission_id=1, verdict="accept", distance_ppm=5)
    chain.block([chain.sign(k[1], [attest])])
    chain.block()
    chain.block()
    adapter = ProposeAdapter(
        creator=k[2].address,
        round=1,
        adapter_cid="bafyad",
        sha256="33" * 32,
        size=9,
        version=1,
        parent_version=0,
        submission_ids=(1,),
    )
    chain.block([chain.sign(k[2], [adapter])])
    spec = ArtifactSpec(kind="model", id="m", version=2, cid="bafym2", sha256="44" * 32, size=10)
    chain.block([chain.sign(k[4], [RegisterArtifact(creator=k[4].address, artifact=spec)])])
    approve = ApproveArtifact(creator=auth.address, kind="model", id="m", version=2)
    serving = RegisterNode(creator=k[6].address, role="serving", stake=10)
    chain.block([chain.sign(auth, [approve]), chain.sign(k[6], [serving])])
    chain.block([chain.submit(k[0], "bafyu2", "cd" * 32)])
    reject = Attest(creator=k[1].address, submission_id=2, verdict="reject")
    chain.block([chain.sign(k[1], [reject])])
    for _ in range(6):
        chain.block()
    assert chain.codes == [0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # one transfer over balance
    assert {h: chain.hashes[h] for h in GOLDEN} == GOLDEN
