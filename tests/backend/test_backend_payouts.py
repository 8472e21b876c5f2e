"""Operator payouts on a real devnet: shares sent as MsgTransferCredits with the payout id in
the memo, exactly once, even when the job crashed between broadcast and recording."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select
from support.net import free_port

from r3mes.backend.db.chat import ChatPayout, ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.services import billing, credits
from r3mes.backend.services.billing import Usage
from r3mes.backend.services.payouts import MEMO_PREFIX, PayoutJob
from r3mes.backend.settings import BackendSettings
from r3mes.chain.client import AsyncBlockchainClient, BlockchainClient
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.msgs import TransferCredits
from r3mes.paths import Home

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TREASURY = SigningKey(secret=bytes([21]) * 32)
OPERATOR_A = SigningKey(secret=bytes([22]) * 32).address
OPERATOR_B = SigningKey(secret=bytes([23]) * 32).address


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    init_devnet(home, devnet_genesis(accounts={TREASURY.address: 1_000_000}))
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.1))
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def db(settings: BackendSettings) -> AsyncIterator[Database]:
    database = Database(settings)
    await migrate(database)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def job(db: Database, devnet: DevnetNode) -> AsyncIterator[PayoutJob]:
    async with httpx.AsyncClient() as http:
        chain = AsyncBlockchainClient(devnet.url)
        yield PayoutJob(
            db=db, chain=chain, http=http, rpc_url=devnet.url, key=TREASURY, share_bps=8000
        )
        await chain.aclose()


async def charge(db: Database, account_id: int, node: str, amount: int) -> None:
    """One served request: a hold captured for `node` and its chat_requests row."""
    rid = uuid.uuid4().hex
    async with db.write() as s, s.begin():
        hold = await credits.hold(
            s, account_id=account_id, amount=amount, idempotency_key=f"{rid}:h", ttl_s=60
        )
        await credits.capture(
            s, hold_id=hold.id, amount=amount, idempotency_key=f"{rid}:c", node=node
        )
        await billing.record(
            s,
            request_id=rid,
            account_id=account_id,
            key_id=None,
            model="r3mes-adapter",
            node=node,
            status="ok",
            usage=Usage(3, amount),
            credits=amount,
            latency_ms=5,
        )


async def ledger_balance(devnet: DevnetNode, address: str) -> int:
    def read() -> int:
        with BlockchainClient(devnet.url, timeout_s=5, retries=1) as client:
            return client.account(address).balance

    return await asyncio.to_thread(read)


async def test_shares_paid_once_with_the_id_in_the_memo(
    db: Database, devnet: DevnetNode, job: PayoutJob
) -> None:
    async with db.write() as s, s.begin():
        user = await credits.ensure_account(s, address=SigningKey.generate().address)
        await credits.deposit(s, account_id=user, amount=10_000, idempotency_key="dep")
    for amount in (100, 250):
        await charge(db, user, OPERATOR_A, amount)
    await charge(db, user, OPERATOR_B, 1)  # 80% of 1 rounds to 0: waits for more
    before_a = await ledger_balance(devnet, OPERATOR_A)

    sent = await job.run(height=100)
    assert len(sent) == 1
    async with db.read() as s:
        (payout,) = (await s.scalars(select(ChatPayout))).all()
        unpaid = (await s.scalars(select(ChatRequest).where(ChatRequest.payout_id.is_(None)))).all()
    assert (payout.operator, payout.gross, payout.amount, payout.requests) == (
        OPERATOR_A,
        350,
        280,
        2,
    )
    assert payout.status == "sent" and payout.memo.startswith(f"{MEMO_PREFIX}{payout.id}:")
    assert [r.node for r in unpaid] == [OPERATOR_B]
    assert await ledger_balance(devnet, OPERATOR_A) == before_a + 280
    assert await job.find_memo(payout.memo) == payout.tx_hash

    # nothing new owed: a second run pays nothing
    assert await job.run(height=200) == []
    assert await ledger_balance(devnet, OPERATOR_A) == before_a + 280


async def test_crash_between_broadcast_and_recording_never_pays_twice(
    db: Database, devnet: DevnetNode, job: PayoutJob, client: httpx.AsyncClient
) -> None:
    async with db.write() as s, s.begin():
        user = await credits.ensure_account(s, address=SigningKey.generate().address)
        await credits.deposit(s, account_id=user, amount=10_000, idempotency_key="dep")
    await charge(db, user, OPERATOR_B, 500)
    before = await ledger_balance(devnet, OPERATOR_B)
    (payout_id,) = await job.record(height=300)
    async with db.read() as s:
        payout = await s.get(ChatPayout, payout_id)
    assert payout is not None and payout.status == "pending" and payout.amount == 400
    # the job broadcast the transfer, then crashed before marking the payout sent
    msg = TransferCredits(creator=TREASURY.address, to=OPERATOR_B, amount=400)
    await job.chain.sign_and_broadcast(TREASURY, [msg], memo=payout.memo)
    assert await ledger_balance(devnet, OPERATOR_B) == before + 400
    # the restarted job finds the memo on the ledger and only records it
    assert await job.run(height=400) == [payout_id]
    assert await ledger_balance(devnet, OPERATOR_B) == before + 400
    async with db.read() as s:
        again = await s.get(ChatPayout, payout_id)
    assert again is not None and again.status == "sent" and again.tx_hash

    history = (await client.get("/api/serving/payouts")).json()
    assert history["share_bps"] == 8000
    assert [(p["id"], p["operator"], p["amount"], p["status"]) for p in history["payouts"]] == [
        (payout_id, OPERATOR_B, 400, "sent")
    ]
    filtered = await client.get("/api/serving/payouts", params={"operator": OPERATOR_A})
    assert filtered.json()["payouts"] == []


async def test_two_backends_sharing_a_database_pay_once(
    db: Database, devnet: DevnetNode, job: PayoutJob, settings: BackendSettings
) -> None:
    """Two payout jobs (two backend processes on one database) never both send a payout,
    even when the second searched the ledger for the memo before the first one committed."""
    async with db.write() as s, s.begin():
        user = await credits.ensure_account(s, address=SigningKey.generate().address)
        await credits.deposit(s, account_id=user, amount=10_000, idempotency_key="dep")
    operator = SigningKey.generate().address
    await charge(db, user, operator, 1000)
    before = await ledger_balance(devnet, operator)
    (payout_id,) = await job.record(height=500)

    other_db = Database(settings)
    first_done = asyncio.Event()
    searching = asyncio.Event()
    try:
        async with httpx.AsyncClient() as http:
            chain = AsyncBlockchainClient(devnet.url)
            other = PayoutJob(
                db=other_db,
                chain=chain,
                http=http,
                rpc_url=devnet.url,
                key=TREASURY,
                share_bps=8000,
            )
            searched = other.find_memo

            async def slow_search(memo: str) -> str | None:
                found = await searched(memo)  # not there yet ...
                searching.set()
                await first_done.wait()  # ... and meanwhile the other process paid it
                return found

            other.find_memo = slow_search  # type: ignore[method-assign]

            async def first() -> list[int]:
                async with asyncio.timeout(120):
                    await searching.wait()  # the other job is in its memo search now
                try:
                    return await job.run(height=600)
                finally:
                    first_done.set()

            results = await asyncio.gather(first(), other.run(height=600))
            await chain.aclose()
    finally:
        await other_db.dispose()
    assert sorted(results[0] + results[1]) == [payout_id]
    assert await ledger_balance(devnet, operator) == before + 800
    async with db.read() as s:
        payout = await s.get(ChatPayout, payout_id)
    assert payout is not None and payout.status == "sent" and payout.tx_hash
