"""The state transition: check_tx, deliver_tx and the pure `apply_block(state, block)`.

The shape follows ABCI 2.0 so the same functions can sit behind CometBFT later:
`check_tx` (mempool admission) never writes state; `apply_block` is FinalizeBlock
(begin-block round bookkeeping, deliver every tx, end-block expiry) and returns the new
state and the app hash, which the next block's header commits to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from r3mes.chain.codes import Code
from r3mes.chain.disputes import expire_disputes
from r3mes.chain.errors import BlockInvalid, TxDecodeError, TxInvalid
from r3mes.chain.handlers import admit, close_attestations, handle
from r3mes.chain.ledger import BlockContext, Event, account, event, invalid
from r3mes.chain.msgs import SubmitGradient, validate_basic
from r3mes.chain.pow import pow_ok
from r3mes.chain.state import Round, State, WorkingState
from r3mes.chain.tx import SignedTx, decode_tx, tx_hash


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    last_block_hash: str
    app_hash: str
    """App hash after the previous block (CometBFT convention)."""
    data_hash: str
    proposer: str = ""

    @property
    def hash(self) -> str:
        encoded = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[bytes, ...] = ()

    @property
    def hash(self) -> str:
        return self.header.hash


@dataclass(frozen=True)
class TxResult:
    code: int
    log: str = ""
    events: tuple[Event, ...] = ()
    hash: str = ""
    signer: str = ""
    sequence: int = 0


@dataclass(frozen=True)
class BlockResult:
    height: int
    app_hash: str
    tx_results: tuple[TxResult, ...]
    begin_events: tuple[Event, ...] = field(default=())
    end_events: tuple[Event, ...] = field(default=())


def data_hash(txs: Sequence[bytes]) -> str:
    h = hashlib.sha256(b"r3mes-data-v1")
    for raw in txs:
        h.update(hashlib.sha256(raw).digest())
    return h.hexdigest()


def make_block(
    state: State,
    *,
    txs: Sequence[bytes],
    time_ms: int,
    proposer: str = "",
    app_hash: str | None = None,
) -> Block:
    """The next block on top of `state` (time never goes backwards); pass `app_hash` when
    the caller already knows the state's hash, to skip recomputing it."""
    header = Header(
        chain_id=state.chain_id,
        height=state.height + 1,
        time_ms=max(time_ms, state.last_block_time_ms),
        last_block_hash=state.last_block_hash,
        app_hash=app_hash or state.app_hash(),
        data_hash=data_hash(txs),
        proposer=proposer,
    )
    return Block(header=header, txs=tuple(txs))


def _decode(raw: bytes) -> SignedTx:
    try:
        return decode_tx(raw)
    except TxDecodeError as exc:
        raise invalid(Code.DECODE, str(exc)) from exc


def _authenticate(
    state: State | WorkingState, tx: SignedTx, *, expected_sequence: int | None
) -> None:
    """Stateless message checks, signer, sequence, then the signature (the costly part)."""
    for msg in tx.msgs:
        validate_basic(msg)
    signer = tx.signer
    if any(msg.creator != signer for msg in tx.msgs):
        raise invalid(Code.UNAUTHORIZED, "every message's creator must be the signer")
    acc = state.accounts.get(signer)
    number = acc.number if acc else 0
    expected = expected_sequence if expected_sequence is not None else (acc.sequence if acc else 0)
    if tx.sequence != expected:
        raise invalid(
            Code.WRONG_SEQUENCE,
            f"account sequence mismatch: expected {expected}, got {tx.sequence}",
        )
    if not tx.verify(chain_id=state.chain_id, account_number=number):
        raise invalid(
            Code.UNAUTHORIZED,
            "signature verification failed (wrong key, chain id or account number)",
        )


def check_tx(state: State, raw: bytes, *, pending: Mapping[str, int] | None = None) -> TxResult:
    """Mempool admission; `pending` maps signer -> next sequence counting queued txs.

    Decoding, signature, sequence and proof of work, then the ante checks (`admit`): a tx
    that can already be seen to fail is refused here, so it never uses a sequence number.
    """
    digest = tx_hash(raw) if isinstance(raw, bytes) else ""
    try:
        tx = _decode(raw)
        _authenticate(state, tx, expected_sequence=(pending or {}).get(tx.signer))
        for msg in tx.msgs:
            if isinstance(msg, SubmitGradient) and not pow_ok(
                msg, chain_id=state.chain_id, difficulty=state.params.pow_difficulty
            ):
                raise invalid(Code.BAD_POW, "proof of work does not meet the difficulty")
        admit(state, tx.signer, tx.msgs)
    except TxInvalid as exc:
        return TxResult(code=exc.code, log=exc.log, hash=digest)
    return TxResult(code=0, hash=digest, signer=tx.signer, sequence=tx.sequence)


def simulate_tx(
    state: State, raw: bytes, *, time_ms: int, pending: Mapping[str, int] | None = None
) -> TxResult:
    """What the ledger would answer if `raw` were delivered in the next block; writes nothing.

    check_tx first (decoding, signature, sequence, proof of work, ante checks), then the
    next block's begin-block bookkeeping (a round may open or close) and the message
    handlers, each on a throw-away overlay of `state`. Clients ask this instead of copying
    the handlers' rules (roles, rounds, shards, authority).
    """
    checked = check_tx(state, raw, pending=pending)
    if checked.code:
        return checked
    tx = decode_tx(raw)
    ctx = BlockContext(
        chain_id=state.chain_id,
        height=state.height + 1,
        time_ms=max(time_ms, state.last_block_time_ms),
    )
    work = state.overlay()
    begin_block(work, ctx, state.last_block_hash)
    acc = account(work, tx.signer)  # as deliver_tx does before the handlers run
    work.accounts[tx.signer] = replace(acc, sequence=acc.sequence + 1, pubkey=tx.pubkey.hex())
    events: list[Event] = [event("message", sender=tx.signer)]
    try:
        if tx.timeout_height and ctx.height > tx.timeout_height:
            raise invalid(Code.EXPIRED, f"tx timed out at height {tx.timeout_height}")
        for msg in tx.msgs:
            events.extend(handle(work, msg, ctx))
    except TxInvalid as exc:
        return TxResult(exc.code, exc.log, (), checked.hash, tx.signer, tx.sequence)
    return TxResult(0, "", tuple(events), checked.hash, tx.signer, tx.sequence)


def deliver_tx(state: WorkingState, raw: bytes, ctx: BlockContext) -> TxResult:
    """Apply one tx to `state` (a block's working overlay). The sequence bump survives a
    failing message; the messages' writes apply all together or not at all."""
    digest = tx_hash(raw)
    try:
        tx = _decode(raw)
        _authenticate(state, tx, expected_sequence=None)
        if tx.timeout_height and ctx.height > tx.timeout_height:
            raise invalid(Code.EXPIRED, f"tx timed out at height {tx.timeout_height}")
    except TxInvalid as exc:
        return TxResult(code=exc.code, log=exc.log, hash=digest)
    acc = account(state, tx.signer)
    state.accounts[tx.signer] = replace(acc, sequence=acc.sequence + 1, pubkey=tx.pubkey.hex())
    child = state.overlay()
    events: list[Event] = [event("message", sender=tx.signer)]
    try:
        for msg in tx.msgs:
            events.extend(handle(child, msg, ctx))
    except TxInvalid as exc:
        # Only typed rejections are results; any other exception is a bug in a handler and
        # propagates (apply_block is pure, so nothing was committed).
        return TxResult(exc.code, exc.log, tuple(events[:1]), digest, tx.signer, tx.sequence)
    state.absorb(child)
    return TxResult(0, "", tuple(events), digest, tx.signer, tx.sequence)


def begin_block(state: WorkingState, ctx: BlockContext, last_block_hash: str) -> list[Event]:
    """Close the previous round and open the next one when a round boundary is reached."""
    length = state.params.round_length
    if (ctx.height - 1) % length:
        return []
    number = (ctx.height - 1) // length + 1
    events = []
    previous = state.rounds.get(number - 1)
    if previous is not None and previous.status == "open":
        state.rounds[number - 1] = replace(previous, status="closed")
        events.append(event("round_closed", round=number - 1))
    model = state.artifacts.get(state.active.get("model", ""))
    dataset = state.artifacts.get(state.active.get("dataset", ""))
    adapter = state.artifacts.get(state.active.get("adapter", ""))
    state.rounds[number] = Round(
        number=number,
        open_height=ctx.height,
        close_height=ctx.height + length - 1,
        seed=last_block_hash,
        base_model_id=model.spec.id if model else "",
        base_model_version=model.spec.version if model else 0,
        base_model_cid=model.spec.cid if model else "",
        dataset_id=dataset.spec.id if dataset else "",
        dataset_version=dataset.spec.version if dataset else 0,
        dataset_cid=dataset.spec.cid if dataset else "",
        adapter_version=adapter.spec.version if adapter else 0,
        adapter_cid=adapter.spec.cid if adapter else "",
        first_submission_id=state.next_submission_id,
    )
    events.append(event("round_opened", round=number, seed=last_block_hash))
    closing = number - state.params.attestation_rounds - 1
    if closing >= 1:
        events.extend(close_attestations(state, closing))
    return events


def end_block(state: WorkingState, ctx: BlockContext) -> list[Event]:
    """Drop serving nodes whose last heartbeat is older than the configured age; decide
    disputes whose current move missed its deadline."""
    events = expire_disputes(state, ctx)
    limit = state.params.serving_stale_after_ms
    for key in sorted(k for k in state.nodes if k.startswith("serving/")):
        node = state.nodes[key]
        if node.active and ctx.time_ms - node.last_heartbeat_ms > limit:
            state.nodes[key] = replace(node, active=False)
            events.append(event("serving_node_stale", address=node.address))
    return events


def validate_header(state: State, block: Block) -> None:
    h = block.header
    checks = [
        (h.chain_id == state.chain_id, f"chain id {h.chain_id!r} is not {state.chain_id!r}"),
        (h.height == state.height + 1, f"height {h.height} does not follow {state.height}"),
        (h.last_block_hash == state.last_block_hash, "last_block_hash does not match"),
        (h.app_hash == state.app_hash(), "app_hash does not match the current state"),
        (h.time_ms >= state.last_block_time_ms, "block time goes backwards"),
        (h.data_hash == data_hash(block.txs), "data_hash does not match the transactions"),
        (len(block.txs) <= state.params.max_block_txs, "too many transactions in the block"),
    ]
    for ok, why in checks:
        if not ok:
            raise BlockInvalid(f"block {h.height} rejected: {why}")


def apply_block(state: State, block: Block) -> tuple[State, BlockResult]:
    """Pure: the state after `block` and its results. `state` itself is not modified."""
    validate_header(state, block)
    h = block.header
    ctx = BlockContext(chain_id=state.chain_id, height=h.height, time_ms=h.time_ms)
    work = state.overlay()
    begin = begin_block(work, ctx, h.last_block_hash)
    results = tuple(deliver_tx(work, raw, ctx) for raw in block.txs)
    end = end_block(work, ctx)
    work.height, work.last_block_hash, work.last_block_time_ms = h.height, block.hash, h.time_ms
    new = work.seal(state)
    return new, BlockResult(h.height, new.app_hash(), results, tuple(begin), tuple(end))
