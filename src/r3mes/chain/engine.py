"""The embedded single-node engine: mempool with check_tx, block production, commit.

This is the shell around the pure state machine: it owns the clock (block time), the
mempool and the store. It produces a block every `block_interval_s`, empty or not, so
rounds advance by height. Everything is guarded by one lock; waiters are woken through a
condition variable after each commit.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from r3mes.chain.application import LedgerApplication
from r3mes.chain.codes import Code
from r3mes.chain.errors import ChainError
from r3mes.chain.metrics import LedgerMetrics
from r3mes.chain.state import State
from r3mes.chain.store import BlockStore, StoredTx
from r3mes.chain.transition import Block, BlockResult, TxResult, make_block
from r3mes.chain.tx import MAX_TX_BYTES, tx_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    block_interval_s: float = 1.0
    """Seconds between blocks (empty blocks included)."""
    max_mempool_txs: int = 10_000
    """check_tx refuses new transactions once this many are queued."""
    proposer: str = ""
    """Address recorded as every block's proposer."""
    max_block_bytes: int = 8 * 1024 * 1024
    """Byte budget of one block's transactions (PrepareProposal's max_tx_bytes)."""

    def __post_init__(self) -> None:
        if not 0.01 <= self.block_interval_s <= 3600:  # also refuses nan
            raise ChainError(
                f"block_interval_s must be in [0.01, 3600], not {self.block_interval_s}"
            )
        if self.max_mempool_txs < 1:
            raise ChainError("max_mempool_txs must be >= 1")


Listener = Callable[[Block, BlockResult], None]


class DevnetEngine:
    """Mempool + block producer over a BlockStore; safe to call from many threads."""

    def __init__(
        self,
        store: BlockStore,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self._clock = clock
        self._lock = threading.RLock()
        self._committed = threading.Condition(self._lock)
        self.app = LedgerApplication(store)
        self._mempool: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self.metrics = LedgerMetrics(mempool_size=self.mempool_size)
        self.metrics.height.set(self.app.state.height)
        self.metrics.block_time.set(self.app.state.last_block_time_ms / 1000)
        info = self.app.info()
        log.info(
            "engine ready at height %d app_hash %s",
            info.last_block_height,
            info.last_block_app_hash,
        )

    @property
    def state(self) -> State:
        """The last committed state (never mutated; replaced on each commit)."""
        with self._lock:
            return self.app.state

    def snapshot(self) -> tuple[State, str]:
        """The last committed state and its app hash, read together."""
        with self._lock:
            return self.app.state, self.app.app_hash

    @property
    def app_hash(self) -> str:
        with self._lock:
            return self.app.app_hash

    def mempool_size(self) -> int:
        with self._lock:
            return len(self._mempool)

    def mempool_bytes(self) -> int:
        with self._lock:
            return sum(len(raw) for raw in self._mempool.values())

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def submit(self, raw: bytes) -> TxResult:
        """check_tx and, if it passes, queue the transaction for the next block."""
        if len(raw) > MAX_TX_BYTES:
            return TxResult(code=Code.TOO_LARGE, log=f"tx exceeds {MAX_TX_BYTES} bytes")
        with self._lock:
            digest = tx_hash(raw)
            if digest in self._mempool:
                return TxResult(code=Code.DUPLICATE, log="tx already in mempool", hash=digest)
            if len(self._mempool) >= self.config.max_mempool_txs:
                return TxResult(
                    code=Code.MEMPOOL_FULL, log="mempool is full; retry later", hash=digest
                )
            result = self.app.check_tx(raw, pending=self._pending)
            self.metrics.observe_check(result.code)
            if result.code == 0:
                self._mempool[digest] = raw
                self._pending[result.signer] = result.sequence + 1
            return result

    def check(self, raw: bytes) -> TxResult:
        """What `submit` would answer for `raw`, without queueing it (RPC `check_tx`)."""
        if len(raw) > MAX_TX_BYTES:
            return TxResult(code=Code.TOO_LARGE, log=f"tx exceeds {MAX_TX_BYTES} bytes")
        with self._lock:
            digest = tx_hash(raw)
            if digest in self._mempool:
                return TxResult(code=Code.DUPLICATE, log="tx already in mempool", hash=digest)
            return self.app.check_tx(raw, pending=self._pending)

    def unconfirmed(self, limit: int) -> list[bytes]:
        """The first `limit` queued txs, in the order blocks will take them."""
        with self._lock:
            return list(self._mempool.values())[: max(limit, 0)]

    def simulate(self, raw: bytes) -> TxResult:
        """What `raw` would answer in the next block, counting the queued txs' sequences."""
        if len(raw) > MAX_TX_BYTES:
            return TxResult(code=Code.TOO_LARGE, log=f"tx exceeds {MAX_TX_BYTES} bytes")
        with self._lock:
            now_ms = int(self._clock() * 1000)
            return self.app.simulate(raw, time_ms=now_ms, pending=self._pending)

    def produce_block(self) -> BlockResult:
        """Take queued txs (up to the block limit), apply, commit, recheck the rest."""
        with self._lock:
            state = self.app.state
            txs = self.app.prepare_proposal(
                self._mempool.values(),
                max_txs=state.params.max_block_txs,
                max_bytes=self.config.max_block_bytes,
            )
            block = make_block(
                state,
                txs=txs,
                time_ms=int(self._clock() * 1000),
                proposer=self.config.proposer,
                app_hash=self.app.app_hash,
            )
            result = self.app.finalize_block(block)
            started = time.perf_counter()
            self.app.commit()
            commit_s = time.perf_counter() - started
            self.metrics.observe_commit(
                block, result, commit_s=commit_s, previous_time_ms=state.last_block_time_ms
            )
            for raw in txs:
                self._mempool.pop(tx_hash(raw), None)
            self._recheck()
            self._committed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(block, result)
            except Exception:  # a broken subscriber must not stop the chain
                log.exception("block listener failed")
        return result

    def _recheck(self) -> None:
        """Re-run check_tx on what is left in the mempool against the new state."""
        remaining = list(self._mempool.items())
        self._mempool.clear()
        self._pending.clear()
        for digest, raw in remaining:
            result = self.app.check_tx(raw, pending=self._pending)
            if result.code == 0:
                self._mempool[digest] = raw
                self._pending[result.signer] = result.sequence + 1

    def wait_for_tx(self, digest: str, timeout_s: float) -> StoredTx | None:
        """Block until tx `digest` is committed (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        with self._committed:
            while True:
                found = self.store.tx(digest)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._committed.wait(remaining)

    def wait_for_height(self, height: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._committed:
            while self.app.state.height < height:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._committed.wait(remaining)
            return True

    def run(self, stop: threading.Event) -> None:
        """Produce a block every interval until `stop` is set."""
        interval = self.config.block_interval_s
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += interval
            try:
                self.produce_block()
            except (ChainError, OSError, sqlite3.Error):
                # Nothing was committed (commit is atomic); keep the chain alive and retry.
                log.exception("block production failed; retrying next interval")
            stop.wait(max(0.0, next_at - time.monotonic()))
