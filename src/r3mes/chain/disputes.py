"""Disputes by bisection over training steps (issue 17 item 3): the ledger's rules.

A dispute is about one submission (its id is the dispute's id) between a *claimant*, who
says the submitted work is right, and a *respondent*, who says it is not. It opens when the
miner challenges a rejection (respondent: the first validator that attested `reject`) or
when an assigned validator's attestation disagrees with another's (the other is the other
side). The parties post the step-checkpoint digests they already computed
(`TrainState.digest`, index 0 = start): the opener's start and final digests come with
`OpenDispute`, the other side first posts its final digest. Equal final digests leave
nothing to bisect (inconclusive, nobody slashed). Otherwise both post their digest at
`r3mes.spec.bisection.query_step`; equal digests move `lo` up, different ones move `hi` down,
so after at most ceil(log2(steps)) message rounds the disagreement is ONE step. A party posts
the agreed checkpoint at `lo` by CID; referees (validators that are neither party nor the
miner, drawn from the round seed by stake) re-execute that step and post the digest after
it; `attestation_quorum` matching referee digests (all of them, when fewer were drawn)
name the winner. The loser is slashed
`slash_amount` and loses `reputation_penalty`; a submission whose verdict the winner
contradicts is turned over (and its miner paid or slashed). A party that misses
`dispute_step_blocks` for its move loses.

Everything here is integers and strings; open disputes are listed in the state
(`open_disputes`) so the end-block deadline sweep touches only those.
"""

from __future__ import annotations

from dataclasses import replace

from r3mes.chain import ledger
from r3mes.chain.assign import assignment_seed, draw
from r3mes.chain.codes import Code
from r3mes.chain.ledger import BlockContext, Event, event, invalid
from r3mes.chain.msgs import DisputeCheckpoint, DisputeVerdict, OpenDispute
from r3mes.chain.state import Dispute, Submission, WorkingState, node_key
from r3mes.spec.bisection import Bisection, BisectionError, advance, is_narrowed, query_step


def _side_of(d: Dispute, address: str) -> str:
    if address == d.claimant:
        return "claimant"
    if address == d.respondent:
        return "respondent"
    raise invalid(Code.NOT_PERMITTED, f"{address} is not a party to dispute {d.submission_id}")


def open_dispute(state: WorkingState, msg: OpenDispute, ctx: BlockContext) -> list[Event]:
    sub = state.submissions.get(msg.submission_id)
    if sub is None:
        raise invalid(Code.UNKNOWN, f"no submission {msg.submission_id}")
    if msg.submission_id in state.disputes:
        raise invalid(Code.DUPLICATE, f"submission {sub.id} already has a dispute")
    said = {a.validator: a.verdict for a in sub.attestations}
    first = {
        verdict: next((a.validator for a in sub.attestations if a.verdict == verdict), "")
        for verdict in ("accept", "reject")
    }
    if msg.creator == sub.miner:
        if sub.status != "rejected":
            raise invalid(Code.NOT_PERMITTED, "a miner can only challenge a rejection")
        claimant, respondent = sub.miner, first["reject"]
    elif msg.creator in said:
        mine = said[msg.creator]
        other = first["reject" if mine == "accept" else "accept"]
        if not other:
            raise invalid(Code.NOT_PERMITTED, "no attestation disagrees with yours")
        claimant, respondent = (msg.creator, other) if mine == "accept" else (other, msg.creator)
    else:
        raise invalid(Code.NOT_PERMITTED, "only the miner or a validator that attested can open")
    if not respondent:
        raise invalid(Code.NOT_PERMITTED, "nobody attested against the work")
    opener_is_claimant = msg.creator == claimant
    d = Dispute(
        submission_id=sub.id,
        claimant=claimant,
        respondent=respondent,
        steps=msg.steps,
        lo=0,
        hi=msg.steps,
        lo_digest=msg.start_digest,
        claimant_hi=msg.final_digest if opener_is_claimant else "",
        respondent_hi="" if opener_is_claimant else msg.final_digest,
        query=msg.steps,
        deadline_height=ctx.height + state.params.dispute_step_blocks,
        opened_height=ctx.height,
    )
    state.disputes[sub.id] = d
    state.open_disputes = (*state.open_disputes, sub.id)
    return [
        event(
            "dispute_opened",
            dispute_id=sub.id,
            claimant=claimant,
            respondent=respondent,
            steps=msg.steps,
        )
    ]


def dispute_checkpoint(
    state: WorkingState, msg: DisputeCheckpoint, ctx: BlockContext
) -> list[Event]:
    d = _open(state, msg.dispute_id)
    side = _side_of(d, msg.creator)
    if d.status == "refereeing":
        if msg.step != d.lo or msg.digest != d.lo_digest or not msg.cid:
            raise invalid(
                Code.INVALID, f"post the agreed checkpoint: step {d.lo}, its digest and a cid"
            )
        if d.lo_cid:
            raise invalid(Code.DUPLICATE, "the checkpoint is already posted")
        state.disputes[d.submission_id] = replace(d, lo_cid=msg.cid)
        return [event("dispute_checkpoint", dispute_id=d.submission_id, cid=msg.cid)]
    if msg.step != d.query:
        raise invalid(Code.INVALID, f"dispute {d.submission_id} asks for step {d.query}")
    if d.query == d.steps:  # the final digests: the opener's came with OpenDispute
        if d.claimant_hi if side == "claimant" else d.respondent_hi:
            raise invalid(Code.DUPLICATE, "your final digest is already posted")
        if side == "claimant":
            d = replace(d, claimant_hi=msg.digest)
        else:
            d = replace(d, respondent_hi=msg.digest)
        if d.claimant_hi == d.respondent_hi:
            return _resolve(state, d, winner="", ctx=ctx, why="final digests agree")
        return _next_query(state, d, ctx, [])
    if d.claimant_mid if side == "claimant" else d.respondent_mid:
        raise invalid(Code.DUPLICATE, f"your digest at step {d.query} is already posted")
    if side == "claimant":
        d = replace(d, claimant_mid=msg.digest)
    else:
        d = replace(d, respondent_mid=msg.digest)
    if not (d.claimant_mid and d.respondent_mid):
        state.disputes[d.submission_id] = d
        return [event("dispute_digest", dispute_id=d.submission_id, step=d.query, side=side)]
    try:
        b = advance(
            Bisection(d.steps, d.lo, d.hi, d.rounds), agree=d.claimant_mid == d.respondent_mid
        )
    except BisectionError as exc:
        raise invalid(Code.INVALID, str(exc)) from exc
    if b.lo != d.lo:
        d = replace(d, lo=b.lo, lo_digest=d.claimant_mid)
    else:
        d = replace(d, hi=b.hi, claimant_hi=d.claimant_mid, respondent_hi=d.respondent_mid)
    d = replace(d, rounds=b.rounds, claimant_mid="", respondent_mid="")
    events = [event("dispute_narrowed", dispute_id=d.submission_id, lo=d.lo, hi=d.hi)]
    return _next_query(state, d, ctx, events)


def _next_query(
    state: WorkingState, d: Dispute, ctx: BlockContext, events: list[Event]
) -> list[Event]:
    deadline = ctx.height + state.params.dispute_step_blocks
    b = Bisection(d.steps, d.lo, d.hi, d.rounds)
    if is_narrowed(b):
        sub = state.submissions[d.submission_id]
        rnd = state.rounds[sub.round]
        excluded = {d.claimant, d.respondent, sub.miner}
        candidates = [
            (node.address, node.stake)
            for key, node in state.nodes.items()
            if key.startswith("validator/") and node.active and node.address not in excluded
        ]
        referees = draw(
            candidates,
            seed=assignment_seed(rnd.seed, "referee", sub.id),
            n=state.params.validators_per_submission,
        )
        d = replace(d, status="refereeing", query=0, referees=referees, deadline_height=deadline)
        events.append(
            event(
                "dispute_referee",
                dispute_id=d.submission_id,
                step=d.lo,
                referees=",".join(referees),
            )
        )
    else:
        d = replace(d, query=query_step(b), deadline_height=deadline)
    state.disputes[d.submission_id] = d
    return events


def dispute_verdict(state: WorkingState, msg: DisputeVerdict, ctx: BlockContext) -> list[Event]:
    d = _open(state, msg.dispute_id)
    if d.status != "refereeing" or not d.lo_cid:
        raise invalid(Code.NOT_PERMITTED, "the dispute is not waiting for referees")
    if msg.creator not in d.referees:
        raise invalid(Code.NOT_PERMITTED, f"{msg.creator} is not a referee of this dispute")
    if any(addr == msg.creator for addr, _ in d.votes):
        raise invalid(Code.DUPLICATE, "you already gave your digest")
    d = replace(d, votes=(*d.votes, (msg.creator, msg.digest)))
    events = [event("dispute_vote", dispute_id=d.submission_id, referee=msg.creator)]
    k = min(state.params.attestation_quorum, len(d.referees))  # fewer referees: all of them
    agreeing = sum(1 for _, digest in d.votes if digest == msg.digest)
    if agreeing >= k:
        winner = (
            "claimant"
            if msg.digest == d.claimant_hi
            else "respondent"
            if msg.digest == d.respondent_hi
            else "neither"
        )
        return events + _resolve(state, d, winner=winner, ctx=ctx, why="referees re-executed")
    state.disputes[d.submission_id] = d
    return events


def _open(state: WorkingState, dispute_id: int) -> Dispute:
    d = state.disputes.get(dispute_id)
    if d is None:
        raise invalid(Code.UNKNOWN, f"no dispute {dispute_id}")
    if d.status == "resolved":
        raise invalid(Code.DUPLICATE, f"dispute {dispute_id} is resolved")
    return d


def expire_disputes(state: WorkingState, ctx: BlockContext) -> list[Event]:
    """End-block: a party that missed its move's deadline loses (the claimant, who must
    post the agreed checkpoint, when nobody did; referees that never reach a quorum leave
    the dispute inconclusive)."""
    events: list[Event] = []
    for sid in state.open_disputes:
        d = state.disputes[sid]
        if ctx.height <= d.deadline_height:
            continue
        if d.status == "refereeing":
            winner = "respondent" if not d.lo_cid else ""
        elif d.query == d.steps:
            winner = "claimant" if d.claimant_hi else "respondent"
        elif d.claimant_mid and not d.respondent_mid:
            winner = "claimant"
        elif d.respondent_mid and not d.claimant_mid:
            winner = "respondent"
        else:
            winner = "respondent"  # the claimant carries the burden of moving
        events += _resolve(state, d, winner=winner, ctx=ctx, why="deadline passed")
    return events


def _resolve(
    state: WorkingState, d: Dispute, *, winner: str, ctx: BlockContext, why: str
) -> list[Event]:
    p = state.params
    sub = state.submissions[d.submission_id]
    loser = {"claimant": d.respondent, "respondent": d.claimant}.get(winner, "")
    burned = 0
    if loser:
        role = "miner" if loser == sub.miner else "validator"
        key = node_key(role, loser)
        burned = ledger.burn_stake(state, key, p.slash_amount) if key in state.nodes else 0
        acc = ledger.account(state, loser)
        state.accounts[loser] = replace(
            acc,
            reputation=max(0, acc.reputation - p.reputation_penalty),
            slashed=acc.slashed + burned,
        )
        winner_address = d.claimant if winner == "claimant" else d.respondent
        if winner_address != sub.miner:
            ledger.mint_reward(state, winner_address, p.validator_reward, 0)
        _turn_over(state, sub, work_is_right=winner == "claimant", ctx=ctx)
    state.disputes[d.submission_id] = replace(d, status="resolved", winner=winner or "none")
    state.open_disputes = tuple(i for i in state.open_disputes if i != d.submission_id)
    return [
        event(
            "dispute_resolved",
            dispute_id=d.submission_id,
            winner=winner or "none",
            loser=loser,
            burned=burned,
            rounds=d.rounds,
            reason=why,
        )
    ]


def _turn_over(
    state: WorkingState, sub: Submission, *, work_is_right: bool, ctx: BlockContext
) -> None:
    """Make the submission's verdict the one the dispute proved."""
    p = state.params
    if work_is_right and sub.status == "rejected":
        state.submissions[sub.id] = replace(sub, status="verified", settled_height=ctx.height)
        ledger.mint_reward(state, sub.miner, p.miner_reward, p.reputation_gain_miner)
    elif not work_is_right and sub.status == "verified":
        state.submissions[sub.id] = replace(sub, status="rejected", settled_height=ctx.height)
        key = node_key("miner", sub.miner)
        burned = ledger.burn_stake(state, key, p.slash_amount) if key in state.nodes else 0
        acc = ledger.account(state, sub.miner)
        state.accounts[sub.miner] = replace(
            acc,
            reputation=max(0, acc.reputation - p.reputation_penalty),
            slashed=acc.slashed + burned,
        )
