"""The indexer against a real devnet and a real backend process, on SQLite and PostgreSQL.

- Correctness: after rounds of activity with a cheating miner (slashed every round), every
  answer of the explorer equals the ledger's own REST/RPC answer at the same height.
- Restart: the backend is SIGKILLed 20 times at random points while blocks arrive; the
  index then has every block exactly once, and still equals the ledger.
- A block replayed into the index is skipped; a gap is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from support.explorer_scenario import (
    CHEAT,
    HONEST,
    PROPOSER,
    SERVING,
    V1,
    V2,
    V3,
    compare,
    play,
    start_devnet,
)
from support.net import free_port

from r3mes.backend.db.engine import Database
from r3mes.backend.db.index import IxBlock, IxDaily, IxMeta, IxTx
from r3mes.backend.db.migrate import migrate
from r3mes.backend.services.chain_follower import ChainRpc
from r3mes.backend.services.indexer import IndexGap, index_block
from r3mes.backend.settings import BackendSettings
from r3mes.chain.devnet import DevnetConfig, DevnetNode
from r3mes.chain.genesis import Genesis
from r3mes.paths import Home

pytestmark = pytest.mark.slow
R3MES = str(Path(sys.executable).with_name("r3mes"))


class Backend:
    """`r3mes backend start` as a child process (what operators run)."""

    def __init__(self, home: Path, chain_url: str, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [R3MES, "backend", "start", "--home", str(home), "--port", str(self.port)]
        self.args += ["--chain", chain_url, "--log-level", "warning"]
        self.env = {**os.environ, "R3MES_DATABASE_URL": database_url}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_height(self, height: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = httpx.get(f"{self.url}/api/network/stats", timeout=2).json().get("height")
            except (httpx.HTTPError, ValueError):
                seen = None
            if seen == height:
                return
            time.sleep(0.2)
        raise AssertionError(f"the explorer reached height {seen}, not {height}")


def ledger_height(url: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "status"}
    doc = httpx.post(url, json=body, timeout=5).json()
    return int(doc["result"]["sync_info"]["latest_block_height"])


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Home, int, list[DevnetNode]]]:
    home, port = Home(root=tmp_path / "chain"), free_port()
    nodes = [start_devnet(home, port)]
    yield home, port, nodes
    nodes[-1].stop()


def freeze(home: Home, port: int, nodes: list[DevnetNode]) -> int:
    """Restart the ledger so that it makes one more block and then none for an hour."""
    nodes[-1].stop()
    nodes.append(DevnetNode(home, DevnetConfig(port=port, block_interval_s=3600)))
    nodes[-1].start()
    return ledger_height(nodes[-1].url)


async def index_counts(database_url: str, home: Path) -> tuple[int, int, int, int, int, int]:
    settings = BackendSettings(home=home, database_url=database_url)
    db = Database(settings)
    try:
        async with db.read() as s:
            blocks = (
                await s.execute(
                    select(func.count(), func.min(IxBlock.height), func.max(IxBlock.height))
                )
            ).one()
            daily = (await s.execute(select(func.sum(IxDaily.blocks), func.sum(IxDaily.txs)))).one()
            txs = await s.scalar(select(func.count()).select_from(IxTx))
        count, low, high = (int(x) for x in blocks)
        return (count, low, high, int(daily[0]), int(daily[1]), int(txs or 0))
    finally:
        await db.dispose()


def test_explorer_equals_the_ledger_after_rounds_with_a_cheater(
    chain: tuple[Home, int, list[DevnetNode]], tmp_path: Path, database_url: str
) -> None:
    home, port, nodes = chain
    backend = Backend(tmp_path / "backend", nodes[-1].url, database_url)
    backend.start()
    try:
        play(nodes[-1].url, 3)
        height = freeze(home, port, nodes)
        backend.wait_height(height)
        counts = compare(nodes[-1].url, backend.url, height)
        slashed = httpx.get(f"{backend.url}/api/leaderboard/miners", timeout=5).json()
        events = httpx.get(
            f"{backend.url}/api/nodes/{SERVING.address}/events?limit=2", timeout=5
        ).json()
        more = httpx.get(
            f"{backend.url}/api/nodes/{SERVING.address}/events?cursor={events['next_cursor']}",
            timeout=5,
        ).json()
        late = httpx.get(f"{backend.url}/api/validators/{V3.address}", timeout=5).json()
        judges = httpx.get(f"{backend.url}/api/leaderboard/validators", timeout=5).json()
        disputes = httpx.get(f"{backend.url}/api/disputes", timeout=5).json()["items"]
        cheater = httpx.get(f"{backend.url}/api/miners/{CHEAT.address}", timeout=5).json()
        proposer = httpx.get(f"{backend.url}/api/stake/{PROPOSER.address}", timeout=5).json()
        honest = httpx.get(f"{backend.url}/api/miners/{HONEST.address}", timeout=5).json()
        first_judge = httpx.get(f"{backend.url}/api/validators/{V1.address}", timeout=5).json()
        overturned = next(
            httpx.get(f"{backend.url}/api/submissions/{d['id']}", timeout=5).json()
            for d in disputes
            if d["miner"] == HONEST.address
        )
        first = min(
            r["number"]
            for r in httpx.get(f"{backend.url}/api/rounds").json()["items"]
            if r["submissions"]
        )
        rnd = httpx.get(f"{backend.url}/api/rounds/{first}", timeout=5).json()
        every_round = [
            p
            for r in sorted(
                httpx.get(f"{backend.url}/api/rounds").json()["items"], key=lambda r: r["number"]
            )
            for p in httpx.get(f"{backend.url}/api/rounds/{r['number']}", timeout=5).json()[
                "proposals"
            ]
        ]
        newest = httpx.get(f"{backend.url}/api/proposals?limit=1", timeout=5).json()
        listed = [newest["items"][0]]
        listed += httpx.get(
            f"{backend.url}/api/proposals?cursor={newest['next_cursor']}", timeout=5
        ).json()["items"]
        rejected = httpx.get(
            f"{backend.url}/api/proposals?status=rejected&proposer={PROPOSER.address}", timeout=5
        ).json()
        nobody = httpx.get(f"{backend.url}/api/proposals?proposer={V1.address}", timeout=5).json()
    finally:
        backend.stop()
    (cheat,) = [m for m in slashed["items"] if m["address"] == CHEAT.address]
    assert cheat["rejected"] and cheat["slashed"] > 0 and cheat["verified"] == 0
    kinds = [e["kind"] for e in events["items"] + more["items"]]
    assert kinds[-1] == "register" and kinds.count("heartbeat") == 4  # one + one per round
    assert counts["submissions"] >= 4 and counts["txs"] >= 30 and counts["accounts"] >= 10
    assert counts["proposals"] >= 2 and counts["disputes"] == 2
    # the window's end penalized the validator that missed one verdict and contradicted one
    assert sorted(p["reason"] for p in late["penalties"]) == ["disagreed", "missed"]
    assert [h["withdrawn_height"] > 0 for h in late["stake"]["history"]] == [True]
    by_miner = {d["miner"]: d for d in disputes}
    # the cheater lost its challenge by deadline: slashed again, its work still rejected
    lost = by_miner[CHEAT.address]
    assert (lost["winner"], lost["loser"], lost["status"]) == (
        "respondent",
        CHEAT.address,
        "resolved",
    )
    assert {"rejected", "dispute"} <= {x["reason"] for x in cheater["slashes"]}
    # V3's dispute, unanswered, overturned the honest update: V1 (the claimant) slashed, the
    # miner slashed, and trust re-judged against the new settled verdict
    won = by_miner[HONEST.address]
    assert (won["respondent"], won["loser"], won["winner"]) == (
        V3.address,
        V1.address,
        "respondent",
    )
    assert overturned["status"] == "rejected"
    assert overturned["settlement"]["agreed"] == [V3.address]
    assert overturned["settlement"]["disagreed"] == sorted([V1.address, V2.address])
    assert "dispute" in {x["reason"] for x in first_judge["slashes"]}
    assert "overturned" in {x["reason"] for x in honest["slashes"]}
    trust = {v["address"]: v["trust_score"] for v in judges["items"]}
    assert trust[V1.address] == trust[V2.address] < 1.0 and trust[V3.address] < 1.0
    # the first round's wrong merge was rejected (proposer slashed, also what was unbonding)
    assert [p["status"] for p in rnd["proposals"]] == ["rejected", "approved"]
    assert rnd["proposal"]["status"] == "approved" and rnd["proposals"][0]["burned"] == 10
    assert proposer["unbonding"] == [] and proposer["bonded"][0]["stake"] == 0
    # every round's proposals, newest first, paged, and filtered by status
    assert [{k: v for k, v in p.items() if k != "id"} for p in reversed(listed)] == every_round
    assert [p["id"] for p in listed] == sorted((p["id"] for p in listed), reverse=True)
    assert rejected["items"] and {p["status"] for p in rejected["items"]} == {"rejected"}
    assert {p["proposer"] for p in rejected["items"]} == {PROPOSER.address}
    assert nobody["items"] == []


def test_twenty_sigkills_while_blocks_arrive_leave_no_gap_and_no_duplicate(
    chain: tuple[Home, int, list[DevnetNode]], tmp_path: Path, database_url: str
) -> None:
    home, port, nodes = chain
    backend = Backend(tmp_path / "backend", nodes[-1].url, database_url)
    rng = random.Random(12)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            play(nodes[-1].url, 4)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    player = threading.Thread(target=drive)
    player.start()
    try:
        for _ in range(20):
            backend.start()
            time.sleep(rng.uniform(0.8, 3.0))  # start-up takes ~1 s: kills land mid-catch-up
            backend.kill()
        player.join(300)
        assert not errors, errors
        height = freeze(home, port, nodes)
        backend.start()
        backend.wait_height(height)
        compare(nodes[-1].url, backend.url, height)
    finally:
        backend.stop()
    count, low, high, daily_blocks, daily_txs, txs = asyncio.run(
        index_counts(database_url, tmp_path / "backend")
    )
    assert (count, low, high) == (height, 1, height)  # every block once, none missing
    assert daily_blocks == height and daily_txs == txs


@pytest.mark.anyio
async def test_a_replayed_block_is_skipped_and_a_gap_refused(
    chain: tuple[Home, int, list[DevnetNode]], settings: BackendSettings
) -> None:
    _, _, nodes = chain
    url = nodes[-1].url
    while ledger_height(url) < 3:
        await asyncio.sleep(0.05)
    db = Database(settings)
    await migrate(db)
    try:
        async with httpx.AsyncClient() as http:
            rpc = ChainRpc(url, http)
            genesis = Genesis.from_json(
                json.dumps((await rpc.call("genesis"))["genesis"]["app_state"])
            )
            b1, b2, b3 = [await rpc.block(h) for h in (1, 2, 3)]
        async with db.write() as s, s.begin():
            assert await index_block(s, b1, genesis=genesis) is not None
        async with db.write() as s, s.begin():
            assert await index_block(s, b1) is None  # replay: nothing counted twice
        async with db.write() as s, s.begin():
            with pytest.raises(IndexGap, match="does not follow"):
                await index_block(s, b3)
        async with db.write() as s, s.begin():
            summary = await index_block(s, b2)
            assert summary is not None and summary.height == 2
        async with db.read() as s:
            meta = await s.get(IxMeta, 1)
            assert meta is not None and meta.height == 2
            assert await s.scalar(select(func.count()).select_from(IxBlock)) == 2
    finally:
        await db.dispose()


def test_explorer_equals_the_ledger_after_r3mes_up_with_a_cheating_miner(
    tmp_path: Path,
) -> None:
    """The whole local network (`r3mes up`: miners, a random-update cheater, validator,
    proposer, serving node) followed by a real backend; then the ledger is frozen at its
    last height and every explorer answer compared with the ledger's own."""
    chain_port = free_port()
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [
            R3MES,
            "up",
            "--headless",
            "--rounds",
            "3",
            "--cheat",
            "random",
            "--base-model",
            "tiny",
            "--chain-port",
            str(chain_port),
            "--backend-port",  # its own backend: on a free port, not the default 8080
            "0",
            "--round-blocks",
            "10",
            "--block-interval",
            "0.5",
            "--home",
            str(tmp_path / "net"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    chain_url = f"http://127.0.0.1:{chain_port}"
    backend = Backend(tmp_path / "backend", chain_url, "")
    backend.start()
    node = None
    try:
        assert up.wait(900) == 0, (tmp_path / "up.log").read_text()[-3000:]
        node = DevnetNode(
            Home(root=tmp_path / "net"), DevnetConfig(port=chain_port, block_interval_s=3600)
        )
        node.start()
        height = ledger_height(chain_url)
        backend.wait_height(height)
        counts = compare(chain_url, backend.url, height)
        miners = httpx.get(f"{backend.url}/api/leaderboard/miners", timeout=5).json()["items"]
        versions = httpx.get(f"{backend.url}/api/adapters", timeout=5).json()["items"]
    finally:
        backend.stop()
        if up.poll() is None:
            up.kill()
        if node is not None:
            node.stop()
    assert counts["submissions"] >= 6 and counts["rounds"] >= 3
    cheater = [m for m in miners if m["rejected"]]
    assert cheater and all(m["verified"] == 0 and m["slashed"] > 0 for m in cheater)
    assert len(versions) >= 3
    assert all(v["lineage"]["submissions"] for v in versions)


@pytest.mark.anyio
async def test_a_block_of_another_chain_is_refused(
    chain: tuple[Home, int, list[DevnetNode]], settings: BackendSettings
) -> None:
    import dataclasses

    url = chain[2][-1].url
    while ledger_height(url) < 2:
        await asyncio.sleep(0.05)
    db = Database(settings)
    await migrate(db)
    try:
        async with httpx.AsyncClient() as http:
            rpc = ChainRpc(url, http)
            genesis = Genesis.from_json(
                json.dumps((await rpc.call("genesis"))["genesis"]["app_state"])
            )
            b1, b2 = [await rpc.block(h) for h in (1, 2)]
        async with db.write() as s, s.begin():
            await index_block(s, b1, genesis=genesis)
        other = dataclasses.replace(b2, chain_id="someone-elses-chain")
        async with db.write() as s, s.begin():
            with pytest.raises(IndexGap, match="someone-elses-chain"):
                await index_block(s, other)
    finally:
        await db.dispose()
