"""The state machine end to end on an in-memory chain: rounds, work, rewards, slashing."""

from __future__ import annotations

import pytest
from chain.chain_harness import CHAIN_ID, FORGERIES, Harness, forge, key, make_genesis

from r3mes.chain.codes import Code
from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import BlockInvalid, GenesisError
from r3mes.chain.genesis import Genesis, Params
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    AttestAdapter,
    Faucet,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    SubmitGradient,
    TransferCredits,
)
from r3mes.chain.pow import pow_ok, solve_pow
from r3mes.chain.state import genesis_state, state_from_entries, tier
from r3mes.chain.transition import apply_block, check_tx, make_block
from r3mes.chain.vocab import Role, SubmissionStatus

UNAUTHORIZED_LOG = "signature verification failed (wrong key, chain id or account number)"

MINER, MINER2, VAL1, VAL2, PROPOSER, AUTH = key(1), key(2), key(3), key(4), key(5), key(99)


def submission(
    h: Harness, miner: SigningKey, shard: int | None = None, rnd: int | None = None
) -> SubmitGradient:
    """A solved submission of `miner`'s assigned shard (or of `shard`, to test refusals)."""
    chosen = h.assigned(miner) if shard is None else shard
    msg = SubmitGradient(
        creator=miner.address,
        round=rnd or h.state.current_round,
        shard=chosen,
        cid=f"bafyupdate{chosen}",
        digest=f"{chosen:02x}" * 32,
    )
    return solve_pow(msg, chain_id=CHAIN_ID, difficulty=h.state.params.pow_difficulty)


def submission_status(h: Harness, submission_id: int) -> SubmissionStatus:
    """Read through a call: mypy would keep an attribute compared to one literal narrowed."""
    return h.state.submissions[submission_id].status


def registered() -> Harness:
    h = Harness(make_genesis(round_length=20))
    h.block()  # height 1 opens round 1
    roles: tuple[tuple[SigningKey, Role], ...] = (
        (MINER, "miner"),
        (MINER2, "miner"),
        (VAL1, "validator"),
        (VAL2, "validator"),
        (PROPOSER, "proposer"),
    )
    for k, role in roles:
        assert h.send(k, RegisterNode(creator=k.address, role=role, stake=100)).code == 0
    return h


def test_round_names_genesis_artifacts_and_seed() -> None:
    h = Harness()
    genesis_hash = h.state.last_block_hash
    h.block()
    rnd = h.state.rounds[1]
    assert rnd.seed == genesis_hash and rnd.status == "open"
    assert (rnd.base_model_id, rnd.base_model_cid, rnd.dataset_cid) == (
        "bitnet-tiny",
        "bafymodel",
        "bafydata",
    )
    h.advance_to_height(6)
    assert h.state.rounds[1].status == "closed" and h.state.rounds[2].status == "open"
    assert h.state.rounds[2].seed == h.blocks[4].hash  # type: ignore[attr-defined]


def test_full_round_rewards_and_adapter_proposal() -> None:
    h = registered()
    assert h.send(MINER, submission(h, MINER)).code == 0
    assert h.send(MINER2, submission(h, MINER2)).code == 0
    supply = h.state.supply
    assert h.send(VAL1, Attest(creator=VAL1.address, submission_id=1, verdict="accept")).code == 0
    assert submission_status(h, 1) == "pending"
    assert h.send(VAL2, Attest(creator=VAL2.address, submission_id=1, verdict="accept")).code == 0
    assert submission_status(h, 1) == "verified"
    p = h.state.params
    assert h.state.supply == supply + p.miner_reward + 2 * p.validator_reward
    assert h.state.accounts[MINER.address].reputation == p.reputation_gain_miner
    # Rejected by quorum: slashed stake and reputation floor at zero.
    for v in (VAL1, VAL2):
        assert h.send(v, Attest(creator=v.address, submission_id=2, verdict="reject")).code == 0
    assert h.state.submissions[2].status == "rejected"
    assert h.state.nodes[f"miner/{MINER2.address}"].stake == 100 - p.slash_amount
    assert h.state.accounts[MINER2.address].slashed == p.slash_amount
    propose = ProposeAdapter(
        creator=PROPOSER.address,
        round=1,
        adapter_cid="bafyadapter1",
        sha256="33" * 32,
        size=9,
        version=1,
        parent_version=0,
        submission_ids=(1,),
    )
    assert h.send(PROPOSER, propose).code == Code.WRONG_ROUND  # round 1 still open
    h.advance_to_height(21)
    bad = ProposeAdapter(**{**propose.__dict__, "submission_ids": (2,)})
    assert h.send(PROPOSER, bad).code == Code.INVALID  # rejected submission cannot be merged
    assert h.send(PROPOSER, propose).code == 0
    assert h.send(PROPOSER, propose).code == Code.DUPLICATE
    assert "adapter" not in h.state.active  # a proposal until its validators check it
    for v in (VAL1, VAL2):
        vote = AttestAdapter(creator=v.address, round=1, version=1, verdict="accept")
        assert h.send(v, vote).code == 0
    assert h.state.proposals[1].status == "approved"
    h.advance_to_height(41)
    assert (
        h.state.rounds[3].adapter_version == 1 and h.state.rounds[3].adapter_cid == "bafyadapter1"
    )
    adapter = h.state.artifacts[h.state.active["adapter"]]
    assert adapter.spec.base_model_id == "bitnet-tiny" and adapter.status == "approved"


def test_submission_rules() -> None:
    h = registered()
    assert h.send(VAL1, submission(h, VAL1)).code == Code.NOT_PERMITTED
    good = submission(h, MINER)
    assert h.send(
        MINER, SubmitGradient(**{**good.__dict__, "pow_nonce": good.pow_nonce + 1})
    ).code in (0, Code.BAD_POW)
    h2 = registered()
    mine = h2.assigned(MINER)
    unsolved = SubmitGradient(
        creator=MINER.address, round=1, shard=mine, cid="bafy", digest="00" * 32
    )
    if not pow_ok(unsolved, chain_id=CHAIN_ID, difficulty=2):
        assert h2.send(MINER, unsolved).code == Code.BAD_POW
    assert h2.send(MINER, submission(h2, MINER)).code == 0
    other = (mine + 1) % 4
    assert h2.send(MINER, submission(h2, MINER, other)).code == Code.DUPLICATE  # one per round
    assert h2.send(MINER2, submission(h2, MINER2, mine)).code == Code.DUPLICATE  # shard taken
    assert h2.send(MINER2, submission(h2, MINER2, 9)).code == Code.INVALID  # no such shard
    theirs = h2.assigned(MINER2)
    wrong = next(s for s in range(4) if s not in (mine, theirs))
    assert h2.send(MINER2, submission(h2, MINER2, wrong)).code == Code.WRONG_SHARD
    assert h2.send(MINER2, submission(h2, MINER2, theirs, rnd=2)).code == Code.WRONG_ROUND
    assert h2.state.rounds[1].claims == ((mine, MINER.address),)
    assert h2.send(MINER2, submission(h2, MINER2)).code == 0


def test_validator_cannot_attest_own_submission_or_twice() -> None:
    h = registered()
    assert h.send(VAL1, RegisterNode(creator=VAL1.address, role="miner", stake=10)).code == 0
    assert h.send(VAL1, submission(h, VAL1)).code == 0
    assert (
        h.send(VAL1, Attest(creator=VAL1.address, submission_id=1, verdict="accept")).code
        == Code.NOT_PERMITTED
    )
    assert h.send(VAL2, Attest(creator=VAL2.address, submission_id=1, verdict="accept")).code == 0
    assert (
        h.send(VAL2, Attest(creator=VAL2.address, submission_id=1, verdict="accept")).code
        == Code.DUPLICATE
    )
    assert (
        h.send(VAL2, Attest(creator=VAL2.address, submission_id=7, verdict="accept")).code
        == Code.UNKNOWN
    )


def test_failed_message_rolls_back_whole_tx_but_bumps_sequence() -> None:
    h = Harness()
    before = h.balance(MINER)
    raw = h.sign(
        MINER,
        [
            TransferCredits(creator=MINER.address, to=VAL1.address, amount=10),
            TransferCredits(creator=MINER.address, to=VAL1.address, amount=10**9),
        ],
    )
    result = h.block([raw]).tx_results[0]
    assert result.code == Code.INSUFFICIENT_FUNDS
    assert h.balance(MINER) == before
    assert h.state.accounts[MINER.address].sequence == 1


def test_replay_wrong_chain_and_forgery_rejected() -> None:
    h = Harness()
    raw = h.sign(MINER, [TransferCredits(creator=MINER.address, to=VAL1.address, amount=1)])
    assert h.block([raw]).tx_results[0].code == 0
    assert h.block([raw]).tx_results[0].code == Code.WRONG_SEQUENCE
    other = h.sign(
        MINER,
        [TransferCredits(creator=MINER.address, to=VAL1.address, amount=1)],
        chain_id="evil-1",
    )
    assert h.block([other]).tx_results[0].code == Code.UNAUTHORIZED
    forged = h.sign(VAL2, [TransferCredits(creator=MINER.address, to=VAL2.address, amount=5)])
    assert h.block([forged]).tx_results[0].code == Code.UNAUTHORIZED


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_signature_of_the_real_signer_is_rejected(how: str) -> None:
    """The victim's own pubkey, creator, chain, account number and sequence: only the
    signature bytes are wrong, so nothing but signature verification can refuse it."""
    h = Harness()
    number = h.state.accounts[MINER.address].number
    msg = TransferCredits(creator=MINER.address, to=VAL2.address, amount=5)
    honest = h.sign(MINER, [msg])
    for salt in range(3):
        forged = forge(honest, how, account_number=number, salt=salt)
        assert forged != honest
        checked = check_tx(h.state, forged)
        assert (checked.code, checked.log) == (Code.UNAUTHORIZED, UNAUTHORIZED_LOG)
        result = h.block([forged]).tx_results[0]
        assert (result.code, result.log) == (Code.UNAUTHORIZED, UNAUTHORIZED_LOG)
    assert h.balance(VAL2) == 1000 and h.state.accounts[MINER.address].sequence == 0
    assert check_tx(h.state, honest).code == 0  # the untouched tx was valid all along
    assert h.block([honest]).tx_results[0].code == 0


def test_artifacts_registry_and_authority() -> None:
    h = Harness()
    spec = ArtifactSpec(kind="dataset", id="ds", version=2, cid="bafyds2", sha256="44" * 32, size=5)
    assert h.send(MINER, RegisterArtifact(creator=MINER.address, artifact=spec)).code == 0
    assert (
        h.send(MINER, RegisterArtifact(creator=MINER.address, artifact=spec)).code == Code.DUPLICATE
    )
    approve = ApproveArtifact(creator=MINER.address, kind="dataset", id="ds", version=2)
    assert h.send(MINER, approve).code == Code.NOT_PERMITTED
    assert (
        h.send(AUTH, ApproveArtifact(creator=AUTH.address, kind="dataset", id="ds", version=2)).code
        == 0
    )
    assert h.state.active["dataset"].startswith("dataset/ds/")
    assert h.state.artifacts[h.state.active["dataset"]].approved_height == h.state.height


def test_serving_heartbeat_and_staleness() -> None:
    h = Harness(make_genesis(serving_stale_after_ms=5000))
    s = key(3)
    assert (
        h.send(s, ServingHeartbeat(creator=s.address, endpoint="http://x")).code
        == Code.NOT_PERMITTED
    )
    assert h.send(s, RegisterNode(creator=s.address, role="serving", endpoint="http://a")).code == 0
    assert (
        h.send(s, ServingHeartbeat(creator=s.address, endpoint="http://b", adapter_version=1)).code
        == 0
    )
    node = h.state.nodes[f"serving/{s.address}"]
    assert node.active and node.endpoint == "http://b"
    h.block(dt_ms=6000)
    assert not h.state.nodes[f"serving/{s.address}"].active
    assert h.send(s, ServingHeartbeat(creator=s.address, endpoint="")).code == 0
    assert h.state.nodes[f"serving/{s.address}"].active


def test_faucet_devnet_only_and_limited() -> None:
    h = Harness()
    new = key(42)
    assert h.send(new, Faucet(creator=new.address, to=new.address, amount=500)).code == 0
    assert h.balance(new) == 500 and h.state.accounts[new.address].sequence == 1
    assert (
        h.send(new, Faucet(creator=new.address, to=new.address, amount=10**7)).code == Code.INVALID
    )
    prod = Harness(make_genesis(devnet=False, pow_difficulty=16))
    assert (
        prod.send(new, Faucet(creator=new.address, to=new.address, amount=1)).code
        == Code.DEVNET_ONLY
    )


def test_apply_block_is_pure_and_replay_reproduces_hashes() -> None:
    h = registered()
    h.send(MINER, submission(h, MINER))
    hashes = [h.state.app_hash()]
    replay = Harness(h.genesis)
    for block in h.blocks:
        before = replay.state.app_hash()
        new, result = apply_block(replay.state, block)  # type: ignore[arg-type]
        assert replay.state.app_hash() == before  # input untouched
        replay.state = new
    assert replay.state.app_hash() == hashes[0]
    assert state_from_entries(replay.state.entries()).app_hash() == hashes[0]


def test_bad_blocks_rejected() -> None:
    h = Harness()
    block = make_block(h.state, txs=[], time_ms=h.time_ms + 1)
    wrong = type(block)(header=type(block.header)(**{**block.header.__dict__, "height": 5}))
    with pytest.raises(BlockInvalid, match="height"):
        apply_block(h.state, wrong)
    with pytest.raises(BlockInvalid, match="data_hash"):
        apply_block(h.state, type(block)(header=block.header, txs=(b"x",)))


def test_tiers_and_genesis_bounds() -> None:
    assert [tier(r) for r in (0, 50, 200, 500, 1000)] == [
        "bronze",
        "silver",
        "gold",
        "platinum",
        "diamond",
    ]
    with pytest.raises(GenesisError, match="devnet"):
        Params(pow_difficulty=8)
    with pytest.raises(GenesisError):
        Params(pow_difficulty=33, devnet=True)
    g = make_genesis()
    assert Genesis.from_json(g.to_json()) == g
    assert genesis_state(g).supply == 5000
    with pytest.raises(GenesisError):
        Genesis.from_json('{"version": 1, "chain_id": "bad id!", "genesis_time_ms": 0}')


def test_handler_bug_raises_instead_of_becoming_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from r3mes.chain import handlers

    def broken(state: object, msg: object, ctx: object) -> list[object]:
        raise KeyError("bug")

    monkeypatch.setitem(handlers.HANDLERS, TransferCredits, broken)
    h = Harness()
    before = h.state
    with pytest.raises(KeyError, match="bug"):
        h.send(MINER, TransferCredits(creator=MINER.address, to=VAL1.address, amount=1))
    assert h.state is before and h.state.height == 0  # apply_block is pure: nothing changed
    assert h.balance(MINER) == 1000 and h.state.accounts[MINER.address].sequence == 0
