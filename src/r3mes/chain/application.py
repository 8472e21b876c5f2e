"""The ledger as an ABCI 2.0 application: Info, InitChain, CheckTx, PrepareProposal,
ProcessProposal, FinalizeBlock, Commit and Query, in CometBFT's order and meaning.

The embedded devnet engine drives this object itself (it is its own single-validator
consensus); a CometBFT ABCI socket server would call the same methods. FinalizeBlock only
computes (it is `apply_block`); Commit is the one step that persists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from r3mes.chain import abci
from r3mes.chain.errors import BlockInvalid, ChainError
from r3mes.chain.genesis import Genesis
from r3mes.chain.state import State
from r3mes.chain.store import BlockStore
from r3mes.chain.transition import (
    Block,
    BlockResult,
    TxResult,
    apply_block,
    check_tx,
    simulate_tx,
    validate_header,
)
from r3mes.chain.tx import MAX_TX_BYTES

log = logging.getLogger(__name__)
APP_VERSION = 1


@dataclass(frozen=True)
class AppInfo:
    """ResponseInfo: what CometBFT asks on start to decide which blocks to replay."""

    app_version: int
    last_block_height: int
    last_block_app_hash: str


class LedgerApplication:
    """Committed state plus at most one finalized-but-uncommitted block."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._state = store.load_state()
        self._app_hash = self._state.app_hash()
        self._pending: tuple[Block, State, BlockResult] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def app_hash(self) -> str:
        return self._app_hash

    def info(self) -> AppInfo:
        return AppInfo(APP_VERSION, self._state.height, self._app_hash)

    def init_chain(self, genesis: Genesis) -> str:
        """Record genesis (idempotent for the same document); returns the genesis app hash."""
        self._state = self.store.init_genesis(genesis)
        self._app_hash = self._state.app_hash()
        return self._app_hash

    def check_tx(self, raw: bytes, *, pending: Mapping[str, int] | None = None) -> TxResult:
        """Mempool admission against the last committed state."""
        return check_tx(self._state, raw, pending=pending)

    def simulate(
        self, raw: bytes, *, time_ms: int, pending: Mapping[str, int] | None = None
    ) -> TxResult:
        """The result delivering `raw` in the next block would have (nothing is written)."""
        return simulate_tx(self._state, raw, time_ms=time_ms, pending=pending)

    def prepare_proposal(
        self, txs: Iterable[bytes], *, max_txs: int, max_bytes: int
    ) -> list[bytes]:
        """Take txs in mempool order while they fit the count and byte budgets."""
        chosen: list[bytes] = []
        used = 0
        for raw in txs:
            if len(chosen) >= max_txs or used + len(raw) > max_bytes:
                break
            if len(raw) <= MAX_TX_BYTES:
                chosen.append(raw)
                used += len(raw)
        return chosen

    def process_proposal(self, block: Block) -> bool:
        """ACCEPT iff the header follows the committed state and every tx fits the size limit."""
        try:
            validate_header(self._state, block)
        except BlockInvalid as exc:
            log.warning("rejecting proposal: %s", exc)
            return False
        return all(len(raw) <= MAX_TX_BYTES for raw in block.txs)

    def finalize_block(self, block: Block) -> BlockResult:
        """Execute `block` on the committed state; nothing is persisted until `commit`."""
        new_state, result = apply_block(self._state, block)
        self._pending = (block, new_state, result)
        return result

    def commit(self) -> int:
        """Persist the finalized block atomically; returns retain_height (0: keep all)."""
        if self._pending is None:
            raise ChainError("commit called without a finalized block")
        block, new_state, result = self._pending
        self.store.commit(block, result, new_state)
        self._state, self._app_hash, self._pending = new_state, result.app_hash, None
        return 0

    def query(self, path: str, data: bytes) -> bytes:
        return abci.query(self._state, path, data)
