"""Quorum verification and the residual on the ledger (issue 17, items 1 and 2).

Submissions are judged by k-of-n validators the ledger assigns from the round seed by
stake; only they may attest; k matching verdicts settle; when the attestation window ends
assigned validators that disagreed with the settled verdict or never attested lose
reputation. Each submission commits the miner's residual by CID and digest and names the
verified submission whose residual it started from.
"""

from __future__ import annotations

import pytest
from chain.chain_harness import CHAIN_ID, DATASET, MODEL, Harness, key

from r3mes.chain.assign import assignment_seed, draw
from r3mes.chain.codes import Code
from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import GenesisError, TxInvalid
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.ledger import Event
from r3mes.chain.msgs import Attest, RegisterNode, SubmitGradient, validate_basic
from r3mes.chain.pow import solve_pow
from r3mes.chain.state import state_from_entries

MINER, MINER2 = key(1), key(2)
VALIDATORS = [key(10 + i) for i in range(4)]
STAKES = [100, 200, 300, 400]
WINDOW = 2


def genesis(**params: object) -> Genesis:
    base: dict[str, object] = {
        "devnet": True,
        "pow_difficulty": 2,
        "attestation_quorum": 2,
        "validators_per_submission": 3,
        "attestation_rounds": WINDOW,
        "round_length": 10,
        "shards_per_round": 4,
        "validator_penalty_reputation": 7,
        "slash_amount": 40,
    }
    base.update(params)
    keys = [MINER, MINER2, *VALIDATORS]
    return Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=1_000_000,
        params=Params(**base),  # type: ignore[arg-type]
        accounts=tuple(GenesisAccount(k.address, 10_000) for k in keys),
        artifacts=(MODEL, DATASET),
    )


def network(**params: object) -> Harness:
    h = Harness(genesis(**params))
    h.block()
    for miner in (MINER, MINER2):
        assert h.send(miner, RegisterNode(creator=miner.address, role="miner", stake=100)).code == 0
    for v, stake in zip(VALIDATORS, STAKES, strict=True):
        msg = RegisterNode(creator=v.address, role="validator", stake=stake)
        assert h.send(v, msg).code == 0
    return h


def submit(h: Harness, miner: SigningKey, **fields: object) -> int:
    msg = SubmitGradient(
        creator=miner.address,
        round=h.state.current_round,
        shard=h.assigned(miner),
        cid="bafyupdate" + miner.address[-6:],
        digest="ab" * 32,
        **fields,  # type: ignore[arg-type]
    )
    msg = solve_pow(msg, chain_id=CHAIN_ID, difficulty=h.state.params.pow_difficulty)
    result = h.send(miner, msg)
    assert result.code == 0, result.log
    return h.state.next_submission_id - 1


def by_address() -> dict[str, SigningKey]:
    return {v.address: v for v in VALIDATORS}


def attest(h: Harness, validator: SigningKey, sid: int, verdict: str) -> int:
    msg = Attest(creator=validator.address, submission_id=sid, verdict=verdict)  # type: ignore[arg-type]
    return h.send(validator, msg).code


def rep(h: Harness, k: SigningKey) -> int:
    return h.state.accounts[k.address].reputation


def close_window(h: Harness, sid: int) -> list[Event]:
    """Advance to the round whose opening ends submission `sid`'s attestation window;
    returns the begin-block events on the way."""
    rnd = h.state.rounds[h.state.submissions[sid].round]
    target = rnd.close_height + WINDOW * h.state.params.round_length + 1
    events: list[Event] = []
    while h.state.height < target:
        events.extend(h.block().begin_events)
    return events


# -- assignment ---------------------------------------------------------------------------


def test_draw_is_deterministic_distinct_and_stake_weighted() -> None:
    candidates = [("a", 1), ("b", 9), ("c", 0), ("d", 5)]
    seed = assignment_seed("00" * 32, "submission", 7)
    assert draw(candidates, seed=seed, n=3) == draw(list(reversed(candidates)), seed=seed, n=3)
    assert len(set(draw(candidates, seed=seed, n=3))) == 3
    assert draw(candidates, seed=seed, n=10) == ("a", "b", "c", "d")  # fewer than n: all
    assert draw([], seed=seed, n=3) == ()
    picks = {"a": 0, "b": 0}
    for i in range(600):
        (one,) = draw([("a", 1), ("b", 9)], seed=assignment_seed("11" * 32, "submission", i), n=1)
        picks[one] += 1
    assert picks["b"] > 4 * picks["a"] > 0  # about 9:1
    assert assignment_seed("00" * 32, "submission", 1) != assignment_seed("00" * 32, "adapter", 1)


def test_submission_gets_n_assigned_validators_from_the_seed_never_the_miner() -> None:
    h = network()
    sid = submit(h, MINER)
    sub = h.state.submissions[sid]
    assert len(sub.assigned) == 3
    assert set(sub.assigned) <= {v.address for v in VALIDATORS}
    rnd = h.state.rounds[sub.round]
    candidates = [(v.address, s) for v, s in zip(VALIDATORS, STAKES, strict=True)]
    expected = draw(candidates, seed=assignment_seed(rnd.seed, "submission", sid), n=3)
    assert sub.assigned == expected


def test_only_assigned_validators_attest_and_k_matching_verdicts_settle() -> None:
    h = network()
    sid = submit(h, MINER)
    assigned = [by_address()[a] for a in h.state.submissions[sid].assigned]
    outsider = next(v for v in VALIDATORS if v.address not in h.state.submissions[sid].assigned)
    assert attest(h, outsider, sid, "accept") == Code.NOT_PERMITTED
    balance = h.balance(MINER)
    assert attest(h, assigned[0], sid, "accept") == 0
    assert h.state.submissions[sid].status == "pending"  # 1 of k=2
    assert attest(h, assigned[1], sid, "reject") == 0
    assert h.state.submissions[sid].status == "pending"  # 1 accept, 1 reject
    assert attest(h, assigned[2], sid, "accept") == 0
    sub = h.state.submissions[sid]
    assert sub.status == "verified" and sub.settled_height == h.state.height
    assert h.balance(MINER) == balance + h.state.params.miner_reward
    assert attest(h, assigned[2], sid, "accept") == Code.DUPLICATE
    reps = {v.address: rep(h, v) for v in assigned}
    gain = h.state.params.reputation_gain_validator
    assert reps[assigned[0].address] == reps[assigned[2].address] == gain
    assert reps[assigned[1].address] == 0  # not paid for the losing verdict
    close_window(h, sid)
    assert rep(h, assigned[1]) == 0  # penalised (floored at 0)
    assert rep(h, assigned[0]) == gain  # winners keep theirs
    assert attest(h, outsider, sid, "accept") != 0


def test_disagreeing_and_silent_validators_lose_reputation_when_the_window_ends() -> None:
    h = network(validator_penalty_reputation=1, round_length=10)
    first = submit(h, MINER)
    a, b, c = (by_address()[x] for x in h.state.submissions[first].assigned)
    for v in (a, b):
        assert attest(h, v, first, "accept") == 0
    # c is silent on `first`; in the next round it earns some reputation, then is penalised
    h.advance_to_height(h.state.rounds[h.state.current_round].close_height + 1)
    second = submit(h, MINER2)
    for address in h.state.submissions[second].assigned:
        attest(h, by_address()[address], second, "reject")
    assert h.state.submissions[second].status == "rejected"
    before = {v.address: rep(h, v) for v in VALIDATORS}
    result_events = close_window(h, first)
    assert rep(h, c) == max(0, before[c.address] - 1)
    assert rep(h, a) == before[a.address] and rep(h, b) == before[b.address]
    assert any(
        e.type == "validator_penalized" and ("reason", "missed") in e.attributes
        for e in result_events
    )


def test_late_agreeing_attestation_is_paid_and_rejection_slashes_the_miner() -> None:
    h = network()
    sid = submit(h, MINER)
    a, b, c = (by_address()[x] for x in h.state.submissions[sid].assigned)
    stake = h.state.nodes[f"miner/{MINER.address}"].stake
    assert attest(h, a, sid, "reject") == 0
    assert attest(h, b, sid, "reject") == 0
    assert h.state.submissions[sid].status == "rejected"
    assert h.state.nodes[f"miner/{MINER.address}"].stake == stake - 40
    balance = h.balance(c)
    assert attest(h, c, sid, "reject") == 0  # late but within the window: paid
    assert h.balance(c) == balance + h.state.params.validator_reward
    assert h.state.submissions[sid].status == "rejected"


def test_quorum_params_checked_at_genesis() -> None:
    with pytest.raises(GenesisError, match="attestation_quorum"):
        genesis(attestation_quorum=4, validators_per_submission=3)
    with pytest.raises(GenesisError):
        genesis(validators_per_submission=0)


def test_no_validator_at_submission_time_assigns_at_first_attestation() -> None:
    h = Harness(genesis(attestation_quorum=1, validators_per_submission=1))
    h.block()
    assert h.send(MINER, RegisterNode(creator=MINER.address, role="miner", stake=100)).code == 0
    sid = submit(h, MINER)
    assert h.state.submissions[sid].assigned == ()
    for v in VALIDATORS[:2]:
        assert h.send(v, RegisterNode(creator=v.address, role="validator", stake=10)).code == 0
    codes = {v.address: attest(h, v, sid, "accept") for v in VALIDATORS[:2]}
    (chosen,) = h.state.submissions[sid].assigned
    assert codes[chosen] == 0 and h.state.submissions[sid].status == "verified"
    other = next(a for a in codes if a != chosen)
    assert codes[other] in (Code.NOT_PERMITTED, Code.DUPLICATE)


# -- residual on the ledger -----------------------------------------------------------------


def test_residual_commitment_and_base_are_recorded_and_checked() -> None:
    h = network(attestation_quorum=1, validators_per_submission=1)
    residual = {"residual_cid": "bafyresidual1", "residual_digest": "cd" * 32}
    first = submit(h, MINER, **residual)
    sub = h.state.submissions[first]
    assert (sub.residual_cid, sub.residual_digest, sub.base_submission_id) == (
        "bafyresidual1",
        "cd" * 32,
        0,
    )
    h.advance_to_height(h.state.rounds[h.state.current_round].close_height + 1)
    # a pending base is refused; so are other miners' and unknown ones
    for base in (first, 999):
        msg = SubmitGradient(
            creator=MINER.address,
            round=h.state.current_round,
            shard=h.assigned(MINER),
            cid="bafyu2",
            digest="ee" * 32,
            base_submission_id=base,
        )
        msg = solve_pow(msg, chain_id=CHAIN_ID, difficulty=2)
        result = h.send(MINER, msg)
        assert result.code == Code.INVALID and "base_submission_id" in result.log
    (judge,) = h.state.submissions[first].assigned
    assert attest(h, by_address()[judge], first, "accept") == 0
    other = SubmitGradient(
        creator=MINER2.address,
        round=h.state.current_round,
        shard=h.assigned(MINER2),
        cid="bafyu3",
        digest="ee" * 32,
        base_submission_id=first,
    )
    result = h.send(MINER2, solve_pow(other, chain_id=CHAIN_ID, difficulty=2))
    assert result.code == Code.INVALID  # someone else's residual
    second = submit(h, MINER, base_submission_id=first, **residual)
    assert h.state.submissions[second].base_submission_id == first


def test_residual_fields_are_validated_statelessly() -> None:
    base = SubmitGradient(
        creator=MINER.address, round=1, shard=0, cid="bafy", digest="ab" * 32, pow_nonce=0
    )
    from dataclasses import replace

    for bad in (
        replace(base, residual_cid="bafyr"),  # digest missing
        replace(base, residual_digest="ab" * 32),  # cid missing
        replace(base, residual_cid="bafy r", residual_digest="ab" * 32),
        replace(base, residual_cid="bafyr", residual_digest="AB" * 32),
    ):
        with pytest.raises(TxInvalid):
            validate_basic(bad)
    validate_basic(replace(base, residual_cid="bafyr", residual_digest="ab" * 32))


def test_quorum_transitions_are_deterministic_and_survive_the_store_encoding() -> None:
    runs = []
    for _ in range(2):
        h = network()
        sid = submit(h, MINER)
        for address in h.state.submissions[sid].assigned:
            attest(h, by_address()[address], sid, "accept")
        close_window(h, sid)
        runs.append((h.state.app_hash(), h.state.last_block_hash))
        restored = state_from_entries(h.state.entries())
        assert restored.app_hash() == h.state.app_hash()
        assert restored.submissions[sid] == h.state.submissions[sid]
    assert runs[0] == runs[1]


# -- stake lifecycle ----------------------------------------------------------------------


def test_unbond_waits_the_delay_stays_slashable_then_withdraws() -> None:
    from r3mes.chain.msgs import Unbond, Withdraw

    h = network(attestation_quorum=1, validators_per_submission=1, unbonding_blocks=5)
    key_ = f"miner/{MINER.address}"
    balance = h.balance(MINER)
    assert h.send(MINER, Unbond(creator=MINER.address, role="miner", amount=101)).code == (
        Code.INSUFFICIENT_FUNDS
    )
    assert h.send(MINER, Unbond(creator=MINER.address, role="validator", amount=1)).code == (
        Code.NOT_PERMITTED
    )
    # a submission made before unbonding, rejected while the stake unbonds
    sid = submit(h, MINER)
    result = h.send(MINER, Unbond(creator=MINER.address, role="miner", amount=100))
    assert result.code == 0
    release = h.state.height + 5
    assert h.state.nodes[key_].stake == 0 and not h.state.nodes[key_].active
    assert h.send(MINER, Withdraw(creator=MINER.address)).code == Code.NOT_PERMITTED  # too early
    (judge,) = h.state.submissions[sid].assigned
    assert attest(h, by_address()[judge], sid, "reject") == 0
    (entry,) = h.state.unbonding[MINER.address].entries
    assert entry.amount == 100 - 40 and entry.release_height == release  # slashed while unbonding
    assert h.state.accounts[MINER.address].slashed == 40
    supply = h.state.supply
    h.advance_to_height(release - 1)
    assert h.send(MINER, Withdraw(creator=MINER.address)).code == 0  # delivered at `release`
    assert h.balance(MINER) == balance + 60
    assert h.state.unbonding[MINER.address].entries == ()
    assert h.state.supply == supply  # stake was never burned twice nor minted
    assert h.send(MINER, Withdraw(creator=MINER.address)).code == Code.NOT_PERMITTED
    restored = state_from_entries(h.state.entries())
    assert restored.app_hash() == h.state.app_hash()


def test_an_unbonded_validator_is_no_longer_assigned() -> None:
    from r3mes.chain.msgs import Unbond

    h = network(attestation_quorum=1, validators_per_submission=4)
    leaving = VALIDATORS[0]
    assert h.send(leaving, Unbond(creator=leaving.address, role="validator", amount=100)).code == 0
    sid = submit(h, MINER)
    assert leaving.address not in h.state.submissions[sid].assigned
    assert len(h.state.submissions[sid].assigned) == 3


# -- checked merges -----------------------------------------------------------------------

PROPOSER = key(30)


def proposal_network() -> tuple[Harness, int]:
    """A network with a closed round holding one verified submission; returns it and the id."""
    g = genesis()
    g = Genesis(
        chain_id=g.chain_id,
        genesis_time_ms=g.genesis_time_ms,
        params=g.params,
        accounts=(*g.accounts, GenesisAccount(PROPOSER.address, 10_000)),
        artifacts=g.artifacts,
    )
    h = Harness(g)
    h.block()
    register = RegisterNode(creator=PROPOSER.address, role="proposer", stake=100)
    assert h.send(PROPOSER, register).code == 0
    assert h.send(MINER, RegisterNode(creator=MINER.address, role="miner", stake=100)).code == 0
    for v, stake in zip(VALIDATORS, STAKES, strict=True):
        assert h.send(v, RegisterNode(creator=v.address, role="validator", stake=stake)).code == 0
    sid = submit(h, MINER)
    for address in h.state.submissions[sid].assigned[:2]:
        assert attest(h, by_address()[address], sid, "accept") == 0
    h.advance_to_height(h.state.rounds[h.state.current_round].close_height + 1)
    return h, sid


def propose(h: Harness, sid: int, sha: str = "33") -> int:
    from r3mes.chain.msgs import ProposeAdapter

    rnd = h.state.submissions[sid].round
    msg = ProposeAdapter(
        creator=PROPOSER.address,
        round=rnd,
        adapter_cid="bafyadapter" + sha,
        sha256=sha * 32,
        size=9,
        version=1,
        parent_version=0,
        submission_ids=(sid,),
    )
    return h.send(PROPOSER, msg).code


def vote(h: Harness, v: SigningKey, rnd: int, verdict: str) -> int:
    from r3mes.chain.msgs import AttestAdapter

    msg = AttestAdapter(creator=v.address, round=rnd, version=1, verdict=verdict)  # type: ignore[arg-type]
    return h.send(v, msg).code


def test_a_proposal_is_approved_only_at_quorum_of_its_assigned_validators() -> None:
    h, sid = proposal_network()
    rnd = h.state.submissions[sid].round
    assert propose(h, sid) == 0
    prop = h.state.proposals[rnd]
    assert prop.status == "pending" and len(prop.assigned) == 3
    assert "adapter" not in h.state.active and h.state.rounds[rnd].proposed_version == 0
    outsider = next(v for v in VALIDATORS if v.address not in prop.assigned)
    assert vote(h, outsider, rnd, "accept") == Code.NOT_PERMITTED
    a, b, _ = (by_address()[x] for x in prop.assigned)
    assert vote(h, a, rnd, "accept") == 0
    assert vote(h, a, rnd, "accept") == Code.DUPLICATE
    assert "adapter" not in h.state.active  # 1 of k=2
    balance = h.balance(PROPOSER)
    assert vote(h, b, rnd, "accept") == 0
    assert h.state.proposals[rnd].status == "approved"
    adapter = h.state.artifacts[h.state.active["adapter"]]
    assert (adapter.spec.version, adapter.spec.sha256, adapter.status) == (1, "33" * 32, "approved")
    assert h.state.rounds[rnd].proposed_version == 1
    assert h.balance(PROPOSER) == balance + h.state.params.proposer_reward
    assert propose(h, sid) == Code.DUPLICATE


def test_a_lying_proposer_is_slashed_and_the_round_can_be_proposed_again() -> None:
    h, sid = proposal_network()
    rnd = h.state.submissions[sid].round
    assert propose(h, sid, sha="44") == 0
    assert propose(h, sid, sha="55") == Code.DUPLICATE  # one proposal under review at a time
    a, b, _ = (by_address()[x] for x in h.state.proposals[rnd].assigned)
    stake = h.state.nodes[f"proposer/{PROPOSER.address}"].stake
    assert vote(h, a, rnd, "reject") == 0
    assert vote(h, b, rnd, "reject") == 0
    assert h.state.proposals[rnd].status == "rejected"
    assert h.state.nodes[f"proposer/{PROPOSER.address}"].stake == stake - 40
    assert h.state.accounts[PROPOSER.address].slashed == 40
    assert "adapter" not in h.state.active
    assert propose(h, sid, sha="33") == 0  # an honest re-proposal opens a fresh review
    assert h.state.proposals[rnd].status == "pending"
    assert h.state.proposals[rnd].attestations == ()
