"""One handler per message: check against state, then write. Raise TxInvalid to reject.

Handlers run on a per-transaction overlay, so a rejected message leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from r3mes.chain import disputes, ledger
from r3mes.chain.assign import assignment_seed, draw
from r3mes.chain.codes import Code
from r3mes.chain.genesis import Params
from r3mes.chain.ledger import BlockContext, Event, event, invalid
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    AttestAdapter,
    DisputeCheckpoint,
    DisputeVerdict,
    Faucet,
    Msg,
    OpenDispute,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    SubmitGradient,
    TransferCredits,
    Unbond,
    Withdraw,
)
from r3mes.chain.pow import pow_ok
from r3mes.chain.state import (
    ArtifactRecord,
    Attestation,
    Node,
    Proposal,
    State,
    Submission,
    Unbonding,
    UnbondingEntry,
    WorkingState,
    artifact_key,
    node_key,
)
from r3mes.chain.vocab import Role
from r3mes.spec.shards import round_shard

MAX_UNBONDING_ENTRIES = 64
"""Unbonding entries one address may hold at once (bounds the state per address)."""


def _require_node(state: WorkingState, role: Role, address: str) -> Node:
    node = state.nodes.get(node_key(role, address))
    if node is None:
        raise invalid(Code.NOT_PERMITTED, f"{address} is not a registered {role}; register first")
    return node


def register_node(state: WorkingState, msg: RegisterNode, ctx: BlockContext) -> list[Event]:
    key = node_key(msg.role, msg.creator)
    existing = state.nodes.get(key)
    if existing is None and msg.stake < state.params.min_stake:
        raise invalid(Code.INSUFFICIENT_FUNDS, f"stake {msg.stake} < min_stake")
    if msg.stake:
        ledger.debit(state, msg.creator, msg.stake)
    if existing is None:
        state.nodes[key] = Node(
            address=msg.creator,
            role=msg.role,
            endpoint=msg.endpoint,
            stake=msg.stake,
            registered_height=ctx.height,
            last_heartbeat_ms=ctx.time_ms,
        )
    else:
        state.nodes[key] = replace(
            existing, endpoint=msg.endpoint, stake=existing.stake + msg.stake, active=True
        )
    return [event("register_node", address=msg.creator, role=msg.role, stake=msg.stake)]


def submit_gradient(state: WorkingState, msg: SubmitGradient, ctx: BlockContext) -> list[Event]:
    _require_node(state, "miner", msg.creator)
    rnd = state.rounds.get(msg.round)
    if rnd is None or rnd.status != "open":
        raise invalid(Code.WRONG_ROUND, f"round {msg.round} is not open")
    if msg.shard >= state.params.shards_per_round:
        raise invalid(Code.INVALID, f"shard must be < {state.params.shards_per_round}")
    if any(miner == msg.creator for _, miner in rnd.claims):
        raise invalid(Code.DUPLICATE, f"{msg.creator} already submitted in round {msg.round}")
    if any(shard == msg.shard for shard, _ in rnd.claims):
        raise invalid(Code.DUPLICATE, f"shard {msg.shard} of round {msg.round} is taken")
    expected = round_shard(
        seed_hex=rnd.seed,
        miner=msg.creator,
        n_shards=state.params.shards_per_round,
        claimed={shard for shard, _ in rnd.claims},
    )
    if msg.shard != expected:
        raise invalid(
            Code.WRONG_SHARD,
            f"{msg.creator} must take shard {expected} of round {msg.round}, not {msg.shard} "
            "(the shard follows from the round seed, the address and the claims so far)",
        )
    if not pow_ok(msg, chain_id=ctx.chain_id, difficulty=state.params.pow_difficulty):
        raise invalid(Code.BAD_POW, "proof of work does not meet the difficulty")
    if msg.base_submission_id:
        base = state.submissions.get(msg.base_submission_id)
        if (
            base is None
            or base.miner != msg.creator
            or base.status != "verified"
            or not base.residual_cid
        ):
            raise invalid(
                Code.INVALID,
                f"base_submission_id {msg.base_submission_id} is not a verified submission of "
                f"{msg.creator} with a committed residual",
            )
    sid = state.next_submission_id
    state.next_submission_id += 1
    state.submissions[sid] = Submission(
        id=sid,
        round=msg.round,
        shard=msg.shard,
        miner=msg.creator,
        cid=msg.cid,
        digest=msg.digest,
        height=ctx.height,
        residual_cid=msg.residual_cid,
        residual_digest=msg.residual_digest,
        base_submission_id=msg.base_submission_id,
        trace_cid=msg.trace_cid,
        trace_root=msg.trace_root,
        assigned=assign_validators(state, rnd.seed, sid, exclude=msg.creator),
    )
    state.rounds[msg.round] = replace(
        rnd, claims=tuple(sorted((*rnd.claims, (msg.shard, msg.creator))))
    )
    return [event("submit_gradient", submission_id=sid, round=msg.round, miner=msg.creator)]


def assign_validators(
    state: WorkingState, round_seed: str, number: int, *, exclude: str, kind: str = "submission"
) -> tuple[str, ...]:
    """The validators judging item `number` of `kind`: `validators_per_submission` of the
    active registered validators (never `exclude`), drawn by stake from the round seed."""
    candidates = [
        (node.address, node.stake)
        for key, node in state.nodes.items()
        if key.startswith("validator/") and node.active and node.address != exclude
    ]
    seed = assignment_seed(round_seed, kind, number)
    return draw(candidates, seed=seed, n=state.params.validators_per_submission)


def round_at(height: int, params: Params) -> int:
    """The round block `height` belongs to."""
    return max(height - 1, 0) // params.round_length + 1


def attest(state: WorkingState, msg: Attest, ctx: BlockContext) -> list[Event]:
    validator = _require_node(state, "validator", msg.creator)
    sub = state.submissions.get(msg.submission_id)
    if sub is None:
        raise invalid(Code.UNKNOWN, f"no submission {msg.submission_id}")
    if sub.miner == msg.creator:
        raise invalid(Code.NOT_PERMITTED, "a validator may not attest its own submission")
    if any(a.validator == msg.creator for a in sub.attestations):
        raise invalid(Code.DUPLICATE, f"{msg.creator} already attested submission {sub.id}")
    last_round = sub.round + state.params.attestation_rounds
    if round_at(ctx.height, state.params) > last_round:
        raise invalid(
            Code.WRONG_ROUND,
            f"submission {sub.id} took attestations until round {last_round}; it is closed",
        )
    if not sub.assigned:  # no validator was registered when it was submitted: assign now
        rnd = state.rounds[sub.round]
        sub = replace(sub, assigned=assign_validators(state, rnd.seed, sub.id, exclude=sub.miner))
    if msg.creator not in sub.assigned or not validator.active:
        raise invalid(
            Code.NOT_PERMITTED,
            f"{msg.creator} is not among the validators assigned to submission {sub.id}",
        )
    att = Attestation(msg.creator, msg.verdict, msg.distance_ppm, ctx.height)
    sub = replace(sub, attestations=(*sub.attestations, att))
    events = [event("attest", submission_id=sub.id, validator=msg.creator, verdict=msg.verdict)]
    p = state.params
    if sub.status != "pending":  # late: paid if it agrees; judged when the window ends
        if msg.verdict == settled_verdict(sub):
            ledger.mint_reward(state, msg.creator, p.validator_reward, p.reputation_gain_validator)
        state.submissions[sub.id] = sub
        return events
    votes = [a for a in sub.attestations if a.verdict == msg.verdict]
    if len(votes) >= p.attestation_quorum:
        sub = replace(
            sub,
            status="verified" if msg.verdict == "accept" else "rejected",
            settled_height=ctx.height,
        )
        events.append(_settle(state, sub, votes))
    state.submissions[sub.id] = sub
    return events


def settled_verdict(sub: Submission) -> str:
    """The verdict a settled submission's quorum reached ("" while pending)."""
    return {"verified": "accept", "rejected": "reject"}.get(sub.status, "")


def _settle(state: WorkingState, sub: Submission, votes: list[Attestation]) -> Event:
    """Reward or slash the miner and reward the validators whose verdict won."""
    p = state.params
    for vote in votes:
        ledger.mint_reward(state, vote.validator, p.validator_reward, p.reputation_gain_validator)
    if sub.status == "verified":
        ledger.mint_reward(state, sub.miner, p.miner_reward, p.reputation_gain_miner)
        return event("submission_verified", submission_id=sub.id, miner=sub.miner)
    burned = ledger.burn_stake(state, node_key("miner", sub.miner), p.slash_amount)
    acc = ledger.account(state, sub.miner)
    state.accounts[sub.miner] = replace(
        acc,
        reputation=max(0, acc.reputation - p.reputation_penalty),
        slashed=acc.slashed + burned,
    )
    return event("submission_rejected", submission_id=sub.id, miner=sub.miner, burned=burned)


def close_attestations(state: WorkingState, round_number: int) -> list[Event]:
    """End round `round_number`'s attestation window: every assigned validator that attested
    against the settled verdict, or not at all, loses `validator_penalty_reputation`."""
    rnd = state.rounds.get(round_number)
    if rnd is None:
        return []
    following = state.rounds.get(round_number + 1)
    end = following.first_submission_id if following else state.next_submission_id
    events = []
    penalty = state.params.validator_penalty_reputation
    for sid in range(rnd.first_submission_id, end):
        sub = state.submissions.get(sid)
        if sub is None:
            continue
        verdict = settled_verdict(sub)
        said = {a.validator: a.verdict for a in sub.attestations}
        for address in sub.assigned:
            if address not in said:
                why = "missed"
            elif verdict and said[address] != verdict:
                why = "disagreed"
            else:
                continue
            ledger.lose_reputation(state, address, penalty)
            events.append(
                event("validator_penalized", submission_id=sid, validator=address, reason=why)
            )
    return events


def propose_adapter(state: WorkingState, msg: ProposeAdapter, ctx: BlockContext) -> list[Event]:
    """Open a proposal for the next adapter version: it is approved only when a quorum of
    the validators assigned to it agree the stored bytes are the deterministic merge of the
    listed verified updates (`attest_adapter`)."""
    _require_node(state, "proposer", msg.creator)
    rnd = state.rounds.get(msg.round)
    if rnd is None or rnd.status != "closed":
        raise invalid(Code.WRONG_ROUND, f"round {msg.round} is not closed yet")
    if rnd.proposed_version:
        raise invalid(Code.DUPLICATE, f"round {msg.round} already produced an adapter")
    pending = state.proposals.get(msg.round)
    if pending is not None and pending.status == "pending":
        raise invalid(Code.DUPLICATE, f"round {msg.round} has a proposal under review")
    current = state.artifacts.get(state.active.get("adapter", ""))
    current_version = current.spec.version if current else 0
    if msg.parent_version != current_version:
        raise invalid(Code.INVALID, f"parent_version must be the current {current_version}")
    for sid in msg.submission_ids:
        sub = state.submissions.get(sid)
        if sub is None or sub.round != msg.round or sub.status != "verified":
            raise invalid(
                Code.INVALID, f"submission {sid} is not a verified one of round {msg.round}"
            )
    model = state.artifacts.get(state.active.get("model", ""))
    spec = ArtifactSpec(
        kind="adapter",
        id=state.params.adapter_id,
        version=msg.version,
        cid=msg.adapter_cid,
        sha256=msg.sha256,
        size=msg.size,
        base_model_id=model.spec.id if model else "",
        base_model_version=model.spec.version if model else 0,
        target_modules=current.spec.target_modules if current else (),
        rank=current.spec.rank if current else 0,
    )
    assigned = assign_validators(
        state, rnd.seed, msg.round, exclude=msg.creator, kind=f"adapter-{ctx.height}"
    )
    state.proposals[msg.round] = Proposal(
        round=msg.round,
        proposer=msg.creator,
        spec=spec,
        parent_version=msg.parent_version,
        submission_ids=tuple(msg.submission_ids),
        height=ctx.height,
        assigned=assigned,
    )
    return [
        event(
            "adapter_proposed",
            round=msg.round,
            version=msg.version,
            cid=msg.adapter_cid,
            validators=",".join(assigned),
        )
    ]


def attest_adapter(state: WorkingState, msg: AttestAdapter, ctx: BlockContext) -> list[Event]:
    """An assigned validator's verdict on a proposal; k matching verdicts decide it."""
    _require_node(state, "validator", msg.creator)
    prop = state.proposals.get(msg.round)
    if prop is None or prop.spec.version != msg.version:
        raise invalid(Code.UNKNOWN, f"no proposal of version {msg.version} for round {msg.round}")
    if prop.status != "pending":
        raise invalid(Code.DUPLICATE, f"the proposal for round {msg.round} is {prop.status}")
    if msg.creator not in prop.assigned:
        raise invalid(
            Code.NOT_PERMITTED, f"{msg.creator} is not assigned to round {msg.round}'s proposal"
        )
    if any(a.validator == msg.creator for a in prop.attestations):
        raise invalid(Code.DUPLICATE, f"{msg.creator} already attested this proposal")
    prop = replace(
        prop,
        attestations=(*prop.attestations, Attestation(msg.creator, msg.verdict, 0, ctx.height)),
    )
    events = [event("attest_adapter", round=msg.round, validator=msg.creator, verdict=msg.verdict)]
    p = state.params
    votes = [a for a in prop.attestations if a.verdict == msg.verdict]
    if len(votes) < p.attestation_quorum:
        state.proposals[msg.round] = prop
        return events
    for vote in votes:
        ledger.mint_reward(state, vote.validator, p.validator_reward, p.reputation_gain_validator)
    if msg.verdict == "reject":
        burned = ledger.burn_stake(state, node_key("proposer", prop.proposer), p.slash_amount)
        acc = ledger.account(state, prop.proposer)
        state.accounts[prop.proposer] = replace(
            acc,
            reputation=max(0, acc.reputation - p.reputation_penalty),
            slashed=acc.slashed + burned,
        )
        state.proposals[msg.round] = replace(prop, status="rejected")
        events.append(
            event("adapter_rejected", round=msg.round, proposer=prop.proposer, burned=burned)
        )
        return events
    current = state.artifacts.get(state.active.get("adapter", ""))
    if (current.spec.version if current else 0) != prop.parent_version:
        state.proposals[msg.round] = replace(prop, status="stale")
        events.append(event("adapter_stale", round=msg.round, version=prop.spec.version))
        return events
    record = ArtifactRecord(prop.spec, "approved", prop.proposer, ctx.height, ctx.height)
    state.artifacts[record.key] = record
    state.active["adapter"] = record.key
    state.rounds[msg.round] = replace(state.rounds[msg.round], proposed_version=prop.spec.version)
    state.proposals[msg.round] = replace(prop, status="approved")
    ledger.mint_reward(state, prop.proposer, p.proposer_reward, p.reputation_gain_proposer)
    events.append(
        event("adapter_approved", round=msg.round, version=prop.spec.version, cid=prop.spec.cid)
    )
    return events


def register_artifact(state: WorkingState, msg: RegisterArtifact, ctx: BlockContext) -> list[Event]:
    spec = msg.artifact
    key = artifact_key(spec.kind, spec.id, spec.version)
    if key in state.artifacts:
        raise invalid(Code.DUPLICATE, f"artifact {key} already exists")
    state.artifacts[key] = ArtifactRecord(spec, "pending", msg.creator, ctx.height)
    return [event("register_artifact", key=key, creator=msg.creator)]


def approve_artifact(state: WorkingState, msg: ApproveArtifact, ctx: BlockContext) -> list[Event]:
    if not state.params.authority or msg.creator != state.params.authority:
        raise invalid(Code.NOT_PERMITTED, "only the genesis authority may approve artifacts")
    key = artifact_key(msg.kind, msg.id, msg.version)
    record = state.artifacts.get(key)
    if record is None:
        raise invalid(Code.UNKNOWN, f"no artifact {key}; register it first")
    if record.status == "approved":
        raise invalid(Code.DUPLICATE, f"artifact {key} is already approved")
    state.artifacts[key] = replace(record, status="approved", approved_height=ctx.height)
    state.active[msg.kind] = key
    return [event("approve_artifact", key=key)]


def serving_heartbeat(state: WorkingState, msg: ServingHeartbeat, ctx: BlockContext) -> list[Event]:
    node = _require_node(state, "serving", msg.creator)
    state.nodes[node_key("serving", msg.creator)] = replace(
        node,
        endpoint=msg.endpoint or node.endpoint,
        adapter_version=msg.adapter_version,
        capacity=msg.capacity,
        last_heartbeat_ms=ctx.time_ms,
        active=True,
    )
    return [event("serving_heartbeat", address=msg.creator)]


def unbond(state: WorkingState, msg: Unbond, ctx: BlockContext) -> list[Event]:
    """Move `amount` of the signer's stake in `role` to unbonding: paid out by `Withdraw`
    from `unbonding_blocks` later, slashable until then. Unbonding all of it leaves the role
    (no new assignments); registering again with stake rejoins."""
    key = node_key(msg.role, msg.creator)
    node = _require_node(state, msg.role, msg.creator)
    if msg.amount > node.stake:
        raise invalid(Code.INSUFFICIENT_FUNDS, f"stake {node.stake} < unbond amount {msg.amount}")
    remaining = node.stake - msg.amount
    state.nodes[key] = replace(node, stake=remaining, active=node.active and remaining > 0)
    release = ctx.height + state.params.unbonding_blocks
    pending = state.unbonding.get(msg.creator) or Unbonding(address=msg.creator)
    if len(pending.entries) >= MAX_UNBONDING_ENTRIES:
        raise invalid(Code.TOO_LARGE, f"at most {MAX_UNBONDING_ENTRIES} unbonding entries")
    entry = UnbondingEntry(role=msg.role, amount=msg.amount, release_height=release)
    state.unbonding[msg.creator] = replace(pending, entries=(*pending.entries, entry))
    return [event("unbond", address=msg.creator, role=msg.role, amount=msg.amount, release=release)]


def withdraw(state: WorkingState, msg: Withdraw, ctx: BlockContext) -> list[Event]:
    """Pay the signer every unbonding entry whose release height has come."""
    pending = state.unbonding.get(msg.creator)
    due = [e for e in (pending.entries if pending else ()) if e.release_height <= ctx.height]
    if pending is None or not due:
        raise invalid(Code.NOT_PERMITTED, f"{msg.creator} has no released unbonding stake")
    amount = sum(e.amount for e in due)
    kept = tuple(e for e in pending.entries if e.release_height > ctx.height)
    state.unbonding[msg.creator] = replace(pending, entries=kept)
    ledger.credit(state, msg.creator, amount)
    return [event("withdraw", address=msg.creator, amount=amount)]


def transfer(state: WorkingState, msg: TransferCredits, ctx: BlockContext) -> list[Event]:
    ledger.debit(state, msg.creator, msg.amount)
    ledger.credit(state, msg.to, msg.amount)
    return [event("transfer", sender=msg.creator, recipient=msg.to, amount=msg.amount)]


def check_faucet(params: Params, msg: Faucet) -> None:
    if not params.devnet:
        raise invalid(Code.DEVNET_ONLY, "the faucet exists only on devnets")
    if msg.amount > params.faucet_max_amount:
        raise invalid(Code.INVALID, f"faucet amount is limited to {params.faucet_max_amount}")


def faucet(state: WorkingState, msg: Faucet, ctx: BlockContext) -> list[Event]:
    check_faucet(state.params, msg)
    ledger.mint(state, msg.to, msg.amount)
    return [event("faucet", recipient=msg.to, amount=msg.amount)]


HANDLERS: dict[type[Any], Callable[[WorkingState, Any, BlockContext], list[Event]]] = {
    RegisterNode: register_node,
    SubmitGradient: submit_gradient,
    Attest: attest,
    ProposeAdapter: propose_adapter,
    RegisterArtifact: register_artifact,
    ApproveArtifact: approve_artifact,
    ServingHeartbeat: serving_heartbeat,
    TransferCredits: transfer,
    Faucet: faucet,
    Unbond: unbond,
    Withdraw: withdraw,
    AttestAdapter: attest_adapter,
    OpenDispute: disputes.open_dispute,
    DisputeCheckpoint: disputes.dispute_checkpoint,
    DisputeVerdict: disputes.dispute_verdict,
}


def handle(state: WorkingState, msg: Msg, ctx: BlockContext) -> list[Event]:
    return HANDLERS[type(msg)](state, msg, ctx)


def spends(msg: Msg) -> int:
    """Credits `msg` takes from its signer's balance when it is delivered."""
    if isinstance(msg, TransferCredits):
        return msg.amount
    if isinstance(msg, RegisterNode):
        return msg.stake
    return 0


def admit(state: State, signer: str, msgs: Sequence[Msg]) -> None:
    """Ante checks: what check_tx can already rule out from the committed state.

    Like Cosmos's ante handler this checks funds and limits, not the messages' business
    rules (roles, rounds, shards depend on what commits first): the signer cannot spend
    more than its committed balance (credits still in flight to it must commit before it
    spends them), and a faucet request must fit the params. The handlers make the same
    checks again at delivery, through the same functions.
    """
    total = sum(spends(msg) for msg in msgs)
    if total:
        ledger.require_funds(state, signer, total)
    for msg in msgs:
        if isinstance(msg, Faucet):
            check_faucet(state.params, msg)
