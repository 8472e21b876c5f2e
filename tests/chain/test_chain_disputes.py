"""Disputes by bisection on the ledger (issue 17 item 3): an honest miner against a lying
validator and the reverse end with the liar slashed after ceil(log2(steps)) message
rounds; a party that stops answering loses at its deadline; bad moves are typed refusals."""

from __future__ import annotations

import hashlib

import pytest
from chain.chain_harness import Harness
from chain.test_chain_quorum import MINER, VALIDATORS, attest, by_address, network, submit

from r3mes.chain import views
from r3mes.chain.codes import Code
from r3mes.chain.crypto import SigningKey
from r3mes.chain.msgs import DisputeCheckpoint, DisputeVerdict, OpenDispute
from r3mes.chain.state import state_from_entries
from r3mes.spec.bisection import max_rounds

STEPS = 8


def digests(tag: str, *, diverge_at: int = STEPS + 1) -> list[str]:
    """Step digests 0..STEPS: the honest chain, or one that leaves it at `diverge_at`."""
    return [
        hashlib.sha256(f"{'honest' if i < diverge_at else tag}:{i}".encode()).hexdigest()
        for i in range(STEPS + 1)
    ]


HONEST = digests("honest")
LIAR = digests("liar", diverge_at=5)


def rejected_submission(h: Harness) -> tuple[int, SigningKey]:
    sid = submit(h, MINER)
    judges = [by_address()[a] for a in h.state.submissions[sid].assigned]
    for judge in judges:
        assert attest(h, judge, sid, "reject") == 0
    assert h.state.submissions[sid].status == "rejected"
    return sid, judges[0]


def play(h: Harness, sid: int, parties: dict[str, tuple[SigningKey, list[str]]]) -> None:
    """Both parties answer every query with their own digest lists until it is narrowed."""
    while h.state.disputes[sid].status == "bisecting":
        d = h.state.disputes[sid]
        for side in ("claimant", "respondent"):
            signer, chain = parties[side]
            posted = {
                "claimant": d.claimant_hi if d.query == STEPS else d.claimant_mid,
                "respondent": d.respondent_hi if d.query == STEPS else d.respondent_mid,
            }[side]
            if posted or h.state.disputes[sid].status != "bisecting":
                continue
            msg = DisputeCheckpoint(
                creator=signer.address, dispute_id=sid, step=d.query, digest=chain[d.query]
            )
            assert h.send(signer, msg).code == 0


def referee(h: Harness, sid: int, digest: str) -> list[int]:
    return [
        h.send(by_address()[r], DisputeVerdict(creator=r, dispute_id=sid, digest=digest)).code
        for r in h.state.disputes[sid].referees
    ]


@pytest.mark.parametrize(("liar", "k"), [("validator", 1), ("miner", 1), ("validator", 2)])
def test_the_liar_is_slashed_in_log_steps_rounds(liar: str, k: int) -> None:
    # k = 2 with n = 2: the submission has 2 judges, the 2 other validators are referees
    # (one when a party is a validator): a dispute needs all of them when fewer than k
    h = network(attestation_quorum=k, validators_per_submission=k, slash_amount=40)
    sid, validator = rejected_submission(h)
    miner_chain, validator_chain = (HONEST, LIAR) if liar == "validator" else (LIAR, HONEST)
    opened = OpenDispute(
        creator=MINER.address,
        submission_id=sid,
        steps=STEPS,
        start_digest=miner_chain[0],
        final_digest=miner_chain[STEPS],
    )
    assert h.send(MINER, opened).code == 0
    d = h.state.disputes[sid]
    assert (d.claimant, d.respondent, d.query) == (MINER.address, validator.address, STEPS)
    (listed,) = views.open_disputes_json(h.state)
    assert (listed["id"], listed["open"], listed["query"]) == (sid, True, STEPS)
    play(h, sid, {"claimant": (MINER, miner_chain), "respondent": (validator, validator_chain)})
    d = h.state.disputes[sid]
    assert d.status == "refereeing" and (d.lo, d.hi) == (4, 5)
    assert d.rounds == max_rounds(STEPS) == 3
    assert d.referees and validator.address not in d.referees
    assert referee(h, sid, HONEST[5]) == [Code.NOT_PERMITTED] * len(d.referees)  # no checkpoint
    post = DisputeCheckpoint(
        creator=MINER.address, dispute_id=sid, step=4, digest=HONEST[4], cid="bafycheckpoint4"
    )
    assert h.send(MINER, post).code == 0
    before = {k.address: h.state.accounts[k.address].slashed for k in (MINER, validator)}
    codes = referee(h, sid, HONEST[5])  # the referees re-execute step 4 -> 5 honestly
    assert codes[0] == 0
    d = h.state.disputes[sid]
    assert d.status == "resolved" and sid not in h.state.open_disputes
    assert views.open_disputes_json(h.state) == []
    assert views.dispute_json(h.state, sid)["winner"] == d.winner
    loser, winner = (validator, MINER) if liar == "validator" else (MINER, validator)
    assert h.state.accounts[loser.address].slashed == before[loser.address] + 40
    assert h.state.accounts[winner.address].slashed == before[winner.address]
    expected = "verified" if liar == "validator" else "rejected"
    assert h.state.submissions[sid].status == expected
    restored = state_from_entries(h.state.entries())
    assert restored.app_hash() == h.state.app_hash() and restored.disputes[sid] == d


def test_a_party_that_stops_answering_loses_at_its_deadline() -> None:
    h = network(attestation_quorum=1, validators_per_submission=1, dispute_step_blocks=3)
    sid, validator = rejected_submission(h)
    opened = OpenDispute(
        creator=MINER.address,
        submission_id=sid,
        steps=STEPS,
        start_digest=HONEST[0],
        final_digest=HONEST[STEPS],
    )
    assert h.send(MINER, opened).code == 0
    deadline = h.state.disputes[sid].deadline_height
    h.advance_to_height(deadline + 1)
    d = h.state.disputes[sid]
    assert d.status == "resolved" and d.winner == "claimant"
    assert h.state.submissions[sid].status == "verified"
    assert h.state.accounts[validator.address].slashed == 40


def test_bad_dispute_moves_are_refused() -> None:
    h = network(attestation_quorum=1, validators_per_submission=1)
    sid, validator = rejected_submission(h)
    outsider = next(v for v in VALIDATORS if v.address != validator.address)

    def opening(creator: SigningKey) -> OpenDispute:
        return OpenDispute(
            creator=creator.address,
            submission_id=sid,
            steps=STEPS,
            start_digest=HONEST[0],
            final_digest=HONEST[STEPS],
        )

    assert h.send(outsider, opening(outsider)).code == Code.NOT_PERMITTED
    assert h.send(MINER, opening(MINER)).code == 0
    assert h.send(MINER, opening(MINER)).code == Code.DUPLICATE
    wrong_step = DisputeCheckpoint(
        creator=validator.address, dispute_id=sid, step=3, digest=LIAR[3]
    )
    assert h.send(validator, wrong_step).code == Code.INVALID
    stranger = DisputeCheckpoint(
        creator=outsider.address, dispute_id=sid, step=STEPS, digest=LIAR[STEPS]
    )
    assert h.send(outsider, stranger).code == Code.NOT_PERMITTED
    unknown = DisputeCheckpoint(creator=validator.address, dispute_id=999, step=8, digest=LIAR[8])
    assert h.send(validator, unknown).code == Code.UNKNOWN
    vote = DisputeVerdict(creator=outsider.address, dispute_id=sid, digest=HONEST[5])
    assert h.send(outsider, vote).code == Code.NOT_PERMITTED  # not refereeing yet
    # agreeing final digests leave nothing to bisect: inconclusive, nobody slashed
    same = DisputeCheckpoint(
        creator=validator.address, dispute_id=sid, step=STEPS, digest=HONEST[STEPS]
    )
    assert h.send(validator, same).code == 0
    d = h.state.disputes[sid]
    assert d.status == "resolved" and d.winner == "none"
    assert h.state.accounts[validator.address].slashed == 0


def test_new_queries_answer_the_same_documents_through_abci_query() -> None:
    """What the CometBFT gateway asks (abci_query) equals the devnet's REST views."""
    import json

    from r3mes.chain import abci
    from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2

    h = network(attestation_quorum=1, validators_per_submission=1)
    sid, _ = rejected_submission(h)
    opened = OpenDispute(
        creator=MINER.address,
        submission_id=sid,
        steps=STEPS,
        start_digest=HONEST[0],
        final_digest=HONEST[STEPS],
    )
    assert h.send(MINER, opened).code == 0

    def ask(method: str, request: object) -> object:
        raw = abci.query(h.state, abci.PATH_PREFIX + method, request.SerializeToString())  # type: ignore[attr-defined]
        return json.loads(query_pb2.QueryJsonResponse.FromString(raw).json)

    sub = h.state.submissions[sid]
    assert ask("Submission", query_pb2.QuerySubmissionRequest(id=sid)) == {
        "submission": json.loads(json.dumps(views.submission_json(sub)))
    }
    dispute = json.loads(json.dumps(views.dispute_json(h.state, sid)))
    assert ask("Dispute", query_pb2.QueryDisputeRequest(id=sid)) == {"dispute": dispute}
    assert ask("Disputes", query_pb2.QueryDisputesRequest()) == {"disputes": [dispute]}
    stake = ask("Stake", query_pb2.QueryStakeRequest(address=MINER.address))
    assert stake == {"stake": views.stake_json(h.state, MINER.address)}
    for method, request in (
        ("Submission", query_pb2.QuerySubmissionRequest(id=999)),
        ("Proposal", query_pb2.QueryProposalRequest(round=1)),
        ("Dispute", query_pb2.QueryDisputeRequest(id=999)),
    ):
        with pytest.raises(views.QueryError):
            ask(method, request)
