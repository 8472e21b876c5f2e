"""The ledger node's Prometheus metrics, in its own `CollectorRegistry` (no global state).

    r3mes_ledger_height                       committed height
    r3mes_ledger_block_time_seconds           time of the last committed block (unix seconds)
    r3mes_ledger_block_interval_seconds       histogram of block time minus the previous one
    r3mes_ledger_txs_total{type,result}       committed txs, by message type and result code
    r3mes_ledger_check_tx_total{result}       admission (check_tx) answers by result code
    r3mes_ledger_mempool_size                 txs waiting for a block (read at scrape time)
    r3mes_ledger_store_commit_seconds         histogram of the store's commit latency

`type` is the tx's message class (`TransferCredits`; several joined by `+`), `result` the
lower-case name of its `Code` (`ok`, `insufficient_funds`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from r3mes.chain.codes import Code
from r3mes.chain.errors import TxDecodeError
from r3mes.chain.transition import Block, BlockResult
from r3mes.chain.tx import decode_tx

CONTENT_TYPE = CONTENT_TYPE_LATEST
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_INTERVAL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def result_label(code: int) -> str:
    try:
        return Code(code).name.lower()
    except ValueError:
        return f"code_{int(code)}"


def tx_type_label(raw: bytes) -> str:
    """The message classes of a committed tx, for the `type` label."""
    try:
        msgs = decode_tx(raw).msgs
    except TxDecodeError:
        return "undecodable"
    return "+".join(sorted({type(m).__name__ for m in msgs})) or "empty"


class LedgerMetrics:
    """What the engine reports after each check_tx and commit; served at GET /metrics."""

    def __init__(self, *, mempool_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("r3mes_ledger_height", "Committed block height", registry=r)
        self.block_time = Gauge(
            "r3mes_ledger_block_time_seconds",
            "Time of the last committed block (unix seconds)",
            registry=r,
        )
        self.block_interval = Histogram(
            "r3mes_ledger_block_interval_seconds",
            "Block time minus the previous block's time",
            buckets=_INTERVAL_BUCKETS,
            registry=r,
        )
        self.txs = Counter(
            "r3mes_ledger_txs",
            "Committed transactions by message type and result",
            ["type", "result"],
            registry=r,
        )
        self.checks = Counter(
            "r3mes_ledger_check_tx", "Mempool admission answers by result", ["result"], registry=r
        )
        self.mempool = Gauge(
            "r3mes_ledger_mempool_size", "Transactions waiting for a block", registry=r
        )
        self.mempool.set_function(lambda: float(mempool_size()))
        self.commit_latency = Histogram(
            "r3mes_ledger_store_commit_seconds",
            "Latency of committing one block to the store",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )

    def observe_check(self, code: int) -> None:
        self.checks.labels(result=result_label(code)).inc()

    def observe_commit(
        self, block: Block, result: BlockResult, *, commit_s: float, previous_time_ms: int
    ) -> None:
        self.height.set(block.header.height)
        self.block_time.set(block.header.time_ms / 1000)
        if block.header.height > 1:
            self.block_interval.observe(max(0, block.header.time_ms - previous_time_ms) / 1000)
        self.commit_latency.observe(commit_s)
        self._count_txs(block.txs, [r.code for r in result.tx_results])

    def _count_txs(self, txs: Sequence[bytes], codes: Sequence[int]) -> None:
        for raw, code in zip(txs, codes, strict=True):
            self.txs.labels(type=tx_type_label(raw), result=result_label(code)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
