"""The chain follower and deposits against a real devnet, on SQLite and PostgreSQL.

A `MsgTransferCredits` to the deposit address is credited exactly once: across follower
restarts, a block applied twice, the handler run twice on the same block, and a crash in
the middle of a block's transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from support.net import free_port

from r3mes.backend.db.accounts import Account, ChainCursor, Deposit
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.services import credits, deposits
from r3mes.backend.services.chain_follower import ChainBlock, ChainFollower, ChainRpc
from r3mes.backend.settings import BackendSettings
from r3mes.chain.client import BlockchainClient
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.msgs import TransferCredits
from r3mes.paths import Home

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USER = SigningKey(secret=bytes([7]) * 32)
OTHER = SigningKey(secret=bytes([8]) * 32)
TREASURY = SigningKey(secret=bytes([9]) * 32)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    genesis = devnet_genesis(accounts={USER.address: 10_000, OTHER.address: 10_000})
    init_devnet(home, genesis)
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


def send(devnet: DevnetNode, key: SigningKey, to: str, amount: int) -> tuple[str, int]:
    with BlockchainClient(devnet.url, timeout_s=5, retries=1) as client:
        sent = client.sign_and_broadcast(
            key, [TransferCredits(creator=key.address, to=to, amount=amount)]
        )
    return sent.hash, sent.height


def follower(db: Database, http: httpx.AsyncClient, url: str, start: int) -> ChainFollower:
    """A follower of the deposits handler from height `start` (the devnet is shared by tests)."""
    f = ChainFollower(db=db, rpc=ChainRpc(url, http), websocket=False)
    f.register(deposits.HANDLER_NAME, deposits.handler(TREASURY.address), start_height=start)
    return f


def next_height(devnet: DevnetNode) -> int:
    with BlockchainClient(devnet.url, timeout_s=5, retries=1) as client:
        return client.status().height + 1


async def credited(db: Database, address: str) -> int:
    async with db.read() as s:
        account_id = await s.scalar(select(Account.id).where(Account.address == address))
        if account_id is None:
            return 0
        return (await credits.balance(s, account_id=account_id)).available


async def caught_up(f: ChainFollower, height: int) -> None:
    while f.applied < height:
        await f.step()
        await asyncio.sleep(0.05)


async def test_deposit_credited_exactly_once_across_restarts_and_replays(
    db: Database, devnet: DevnetNode
) -> None:
    start = next_height(devnet)
    tx1, h1 = await asyncio.to_thread(send, devnet, USER, TREASURY.address, 120)
    await asyncio.to_thread(send, devnet, OTHER, USER.address, 5)  # not a deposit
    async with httpx.AsyncClient() as http:
        first = follower(db, http, devnet.url, start)
        await caught_up(first, h1)
        assert await credited(db, USER.address) == 120

        # A new follower (a restarted process) resumes from the cursor: no second credit.
        second = follower(db, http, devnet.url, start)
        tx2, h2 = await asyncio.to_thread(send, devnet, USER, TREASURY.address, 30)
        await caught_up(second, h2)
        assert await credited(db, USER.address) == 150

        # The same block delivered again (a repeated event) is skipped by the cursor ...
        block = await ChainRpc(devnet.url, http).block(h1)
        assert await second.apply(block) is False
        # ... and the handler itself, run again on it, credits nothing twice.
        async with db.write() as s, s.begin():
            assert await deposits.apply_block(s, block, address=TREASURY.address) == []
    assert await credited(db, USER.address) == 150
    async with db.read() as s:
        hashes = (await s.scalars(select(Deposit.tx_hash).order_by(Deposit.height))).all()
        assert hashes == [tx1, tx2]
        assert await credits.journal_imbalance(s) == 0
        assert await credits.book_mismatches(s) == []


async def test_crash_inside_a_block_rolls_back_credit_and_cursor(
    db: Database, devnet: DevnetNode
) -> None:
    start = next_height(devnet)
    _, height = await asyncio.to_thread(send, devnet, OTHER, TREASURY.address, 44)

    async def crash_at(s: object, block: ChainBlock) -> None:
        if block.height == height:
            raise RuntimeError("process died mid-block")

    async with httpx.AsyncClient() as http:
        crashing = follower(db, http, devnet.url, start)
        crashing.register("after", crash_at, start_height=start)
        with pytest.raises(RuntimeError):
            await caught_up(crashing, height)
        assert await credited(db, OTHER.address) == 0
        async with db.read() as s:
            cursors = dict((await s.execute(select(ChainCursor.name, ChainCursor.height))).all())
        assert cursors[deposits.HANDLER_NAME] == height - 1

        restarted = follower(db, http, devnet.url, start)
        await caught_up(restarted, height)
    assert await credited(db, OTHER.address) == 44
    async with db.read() as s:
        assert await s.scalar(select(func.count()).select_from(Deposit)) == 1


async def test_two_followers_racing_on_one_database_credit_once(
    db: Database, devnet: DevnetNode, settings: BackendSettings
) -> None:
    start = next_height(devnet)
    _, height = await asyncio.to_thread(send, devnet, USER, TREASURY.address, 9)
    async with httpx.AsyncClient() as http:
        a, b = follower(db, http, devnet.url, start), follower(db, http, devnet.url, start)
        await asyncio.gather(caught_up(a, height), caught_up(b, height))
    assert await credited(db, USER.address) == 9


def test_deposit_address_falls_back_to_the_treasury_key(tmp_path: Path) -> None:
    from r3mes.chain.keystore import Keystore

    settings = BackendSettings(home=tmp_path, treasury_key="t")
    assert deposits.deposit_address(settings) is None
    info = Keystore(Home(root=tmp_path).keys).import_secret(
        "t", secret_hex=TREASURY.secret.hex(), passphrase="pw-123456"
    )
    assert deposits.deposit_address(settings) == info.address == TREASURY.address


async def test_running_backend_credits_a_deposit_woken_by_the_websocket(
    tmp_path: Path, database_url: str, devnet: DevnetNode
) -> None:
    """The whole wiring: create_app's workers start the follower with the deposits handler;
    polling is slowed to 120 s, so only the NewBlock subscription can wake it in time."""
    from support.accounts import login_headers
    from support.backend import make_settings, running

    from r3mes.backend.app import create_app
    from r3mes.backend.services.chain_follower import chain_follower

    settings = make_settings(
        tmp_path,
        database_url=database_url,
        follow_chain=True,
        chain_rpc=devnet.url,
        deposit_address=TREASURY.address,
    )
    # As if this backend had followed the (shared, fast) devnet up to now.
    db = Database(settings)
    await migrate(db)
    async with db.write() as s, s.begin():
        s.add(ChainCursor(name=deposits.HANDLER_NAME, height=next_height(devnet) - 1))
    await db.dispose()
    app = create_app(settings)
    async with asyncio.timeout(240), running(app) as client:
        follower = chain_follower(app.state.runtime)
        follower.poll_s = 120.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while not follower.connected or not follower.latest_seen:
            assert loop.time() < deadline, "follower did not connect"
            await asyncio.sleep(0.1)
        # caught up with the ledger as it was when the follower connected (the devnet makes
        # ten blocks a second: on a loaded box the follower may trail the newest one)
        target = follower.latest_seen - 1
        while follower.applied < target:
            assert loop.time() < deadline, f"follower did not reach {target}"
            await asyncio.sleep(0.1)
        before = await credited(app.state.runtime.db, OTHER.address)
        _, height = await asyncio.to_thread(send, devnet, OTHER, TREASURY.address, 13)
        headers = await login_headers(client, OTHER)
        deadline = (
            loop.time() + 90
        )  # polling is every 120 s: only the subscription wakes it in time
        while True:
            me = (await client.get("/api/me", headers=headers)).json()
            if me["available"] == before + 13:
                break
            assert loop.time() < deadline, me
            await asyncio.sleep(0.1)
        assert me["ledger"]["balance"] is not None
        health = (await client.get("/health")).json()["checks"]["chain"]
        assert health["websocket"] is True and health["height"] >= height
