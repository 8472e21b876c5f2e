"""GET /metrics on the ledger RPC: Prometheus text with height, block times, txs, mempool
and store commit latency, read from a real devnet node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chain.chain_harness import CHAIN_ID, DATASET, MODEL, key, make_genesis
from prometheus_client.parser import text_string_to_metric_families
from support.net import free_port

from r3mes.chain.client import BlockchainClient
from r3mes.chain.codes import Code
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.errors import TxRejected
from r3mes.chain.msgs import Attest, TransferCredits
from r3mes.chain.store import BlockStore
from r3mes.chain.tx import build_tx
from r3mes.paths import Home

A, B = key(1), key(2)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    init_devnet(home, devnet_genesis(accounts={A.address: 1000}, artifacts=[MODEL, DATASET]))
    devnet = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.1))
    devnet.start()
    yield devnet
    devnet.stop()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_report_height_txs_mempool_and_commit_latency(node: DevnetNode) -> None:
    with BlockchainClient(node.url, timeout_s=5, retries=0) as client:
        client.sign_and_broadcast(A, [TransferCredits(creator=A.address, to=B.address, amount=3)])
        with pytest.raises(TxRejected) as refused:  # refused at admission
            client.sign_and_broadcast(
                A, [TransferCredits(creator=A.address, to=B.address, amount=10**9)]
            )
        assert refused.value.code == Code.INSUFFICIENT_FUNDS
        with pytest.raises(TxRejected) as failed:  # admitted, fails when delivered
            client.sign_and_broadcast(
                A, [Attest(creator=A.address, submission_id=1, verdict="accept")]
            )
        assert failed.value.code == Code.NOT_PERMITTED
        height = client.status().height
    samples = _samples(node.url)
    assert samples[("r3mes_ledger_height", ())] >= height
    assert samples[("r3mes_ledger_block_time_seconds", ())] > 1.6e9
    ok = (("result", "ok"), ("type", "TransferCredits"))
    assert samples[("r3mes_ledger_txs_total", ok)] == 1
    not_permitted = (("result", "not_permitted"), ("type", "Attest"))
    assert samples[("r3mes_ledger_txs_total", not_permitted)] == 1
    assert samples[("r3mes_ledger_check_tx_total", (("result", "insufficient_funds"),))] == 1
    assert samples[("r3mes_ledger_check_tx_total", (("result", "ok"),))] == 2
    assert samples[("r3mes_ledger_mempool_size", ())] == 0
    commits = samples[("r3mes_ledger_store_commit_seconds_count", ())]
    assert commits >= height - 1 and samples[("r3mes_ledger_store_commit_seconds_sum", ())] > 0
    assert samples[("r3mes_ledger_block_interval_seconds_count", ())] >= 1


def test_mempool_size_is_read_at_scrape_time(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "c.db")
    store.init_genesis(make_genesis())
    engine = DevnetEngine(store, EngineConfig())  # no block thread: the tx stays queued
    msg = TransferCredits(creator=A.address, to=B.address, amount=1)
    assert (
        engine.submit(build_tx([msg], key=A, chain_id=CHAIN_ID, account_number=1, sequence=0)).code
        == 0
    )
    assert b"r3mes_ledger_mempool_size 1.0" in engine.metrics.render()
    engine.produce_block()
    assert b"r3mes_ledger_mempool_size 0.0" in engine.metrics.render()
    assert b"r3mes_ledger_height 1.0" in engine.metrics.render()
