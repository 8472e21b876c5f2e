"""The faucet against a real devnet (MsgFaucet) and a real non-devnet chain
(MsgTransferCredits), and its refusals: a chain not marked as a test chain, repeated
requests, many addresses from one IP, malformed addresses, amounts over the cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.backend import make_settings
from support.net import free_port

from r3mes.backend.app import create_app
from r3mes.chain.client import BlockchainClient
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.keystore import Keystore
from r3mes.paths import Home

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAUCET = SigningKey(secret=bytes([41]) * 32)
PASS = "faucet-test-passphrase"


def address(n: int) -> str:
    return SigningKey(secret=(5000 + n).to_bytes(32, "big")).address


def _chain(root: Path, *, devnet: bool) -> DevnetNode:
    home = Home(root=root)
    params: dict[str, Any] = {} if devnet else {"devnet": False, "pow_difficulty": 16}
    init_devnet(home, devnet_genesis(accounts={FAUCET.address: 1_000_000}, **params))
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.05))
    node.start()
    return node


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    node = _chain(tmp_path_factory.mktemp("devnet"), devnet=True)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    node = _chain(tmp_path_factory.mktemp("testnet"), devnet=False)
    yield node
    node.stop()


@asynccontextmanager
async def backend(
    tmp_path: Path, database_url: str, chain_url: str, **overrides: Any
) -> AsyncIterator[Any]:
    store = Keystore(Home(root=tmp_path).keys, scrypt_n=2**14)
    store.import_secret("backend-faucet", secret_hex=FAUCET.secret.hex(), passphrase=PASS)
    values: dict[str, Any] = {
        "database_url": database_url,
        "chain_rpc": chain_url,
        "network_kind": "devnet",
        "faucet_passphrase": PASS,
        "faucet_amount": 700,
        "faucet_max_amount": 5000,
    }
    values.update(overrides)
    app = create_app(make_settings(tmp_path, **values))
    async with app.router.lifespan_context(app):

        def client(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(ip, 50000))
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        yield client


def balance(url: str, who: str) -> int:
    with BlockchainClient(url, timeout_s=5, retries=1) as c:
        return c.account(who).balance


async def test_devnet_faucet_mints_and_cooldowns_refuse_repeats(
    devnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    # The devnet is shared by both database runs: compare balances before and after.
    before = [await asyncio.to_thread(balance, devnet.url, address(n)) for n in (1, 2)]
    async with backend(tmp_path, database_url, devnet.url) as client:
        async with client("10.0.0.1") as a, client("10.0.0.2") as b:
            first = await a.post("/api/faucet", json={"address": address(1)})
            assert first.status_code == 200, first.text
            body = first.json()
            assert body["amount"] == 700 and body["height"] > 0 and len(body["tx_hash"]) == 64
            assert "minted" in body["message"]
            assert await asyncio.to_thread(balance, devnet.url, address(1)) == before[0] + 700
            # The same address again, from the same IP and from another IP.
            for c in (a, b):
                again = await c.post("/api/faucet", json={"address": address(1)})
                assert again.status_code == 429, again.text
                assert again.json()["error"]["code"] == "rate_limit_exceeded"
                assert "this address" in again.json()["error"]["message"]
                assert int(again.headers["retry-after"]) > 3000
            # Many addresses from one IP: only the first is paid.
            for n in range(2, 6):
                other = await a.post("/api/faucet", json={"address": address(n), "amount": 5})
                assert other.status_code == 429
                assert "your IP address" in other.json()["error"]["message"]
            assert await asyncio.to_thread(balance, devnet.url, address(2)) == before[1]


async def test_concurrent_requests_from_one_ip_pay_once(
    devnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    async with backend(tmp_path, database_url, devnet.url) as client:
        async with client("10.0.0.9") as c:
            answers = await asyncio.gather(
                *(c.post("/api/faucet", json={"address": address(20 + n)}) for n in range(6))
            )
    assert sorted(r.status_code for r in answers) == [200] + [429] * 5


async def test_malformed_addresses_and_amounts_are_clear_errors(
    devnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    async with backend(tmp_path, database_url, devnet.url) as client:
        async with client("10.0.1.1") as c:
            cosmos = "cosmos1" + address(1).removeprefix("remes1")
            for bad in ("", "remes1", "remes1qqqqqqqq", cosmos, address(1).upper()[:-1] + "X"):
                r = await c.post("/api/faucet", json={"address": bad})
                assert r.status_code == 400, (bad, r.text)
                assert r.json()["error"]["message"].startswith("address:")
            long = await c.post("/api/faucet", json={"address": "remes1" + "q" * 300})
            assert long.status_code == 422 and long.json()["error"]["param"] == "address"
            for body in ({"address": 5}, {"address": address(1), "amount": 0}, {}):
                r = await c.post("/api/faucet", json=body)
                assert r.status_code == 422, (body, r.text)
            over = await c.post("/api/faucet", json={"address": address(1), "amount": 5001})
            assert over.status_code == 400 and "cap of 5000" in over.json()["error"]["message"]
            # None of these counted: a good request from this IP still works.
            ok = await c.post("/api/faucet", json={"address": address(30), "amount": 5000})
            assert ok.status_code == 200, ok.text


async def test_a_chain_not_marked_as_a_test_chain_has_no_faucet(
    devnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    async with backend(tmp_path, database_url, devnet.url, network_kind="mainnet") as client:
        async with client("10.0.2.1") as c:
            r = await c.post("/api/faucet", json={"address": address(40)})
    assert r.status_code == 403
    assert "not marked as a devnet or testnet" in r.json()["error"]["message"]
    assert await asyncio.to_thread(balance, devnet.url, address(40)) == 0


async def test_no_faucet_key_and_an_unreachable_ledger_refuse_without_cooldown(
    devnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    async with backend(tmp_path, database_url, devnet.url, faucet_passphrase="") as client:
        async with client("10.0.3.1") as c:
            r = await c.post("/api/faucet", json={"address": address(50)})
    assert r.status_code == 503 and "not configured" in r.json()["error"]["message"]
    dead = f"http://127.0.0.1:{free_port()}"
    async with backend(tmp_path / "b", database_url, dead) as client:
        async with client("10.0.3.2") as c:
            r = await c.post("/api/faucet", json={"address": address(51)})
            assert r.status_code == 503 and "cannot be reached" in r.json()["error"]["message"]
            again = await c.post("/api/faucet", json={"address": address(51)})
            assert again.status_code == 503  # the failed send did not start a cooldown


async def test_testnet_faucet_transfers_from_its_own_balance(
    testnet: DevnetNode, tmp_path: Path, database_url: str
) -> None:
    before = await asyncio.to_thread(balance, testnet.url, FAUCET.address)
    got = await asyncio.to_thread(balance, testnet.url, address(60))
    async with backend(tmp_path, database_url, testnet.url, network_kind="testnet") as client:
        async with client("10.0.4.1") as c:
            r = await c.post("/api/faucet", json={"address": address(60), "amount": 1234})
    assert r.status_code == 200, r.text
    assert r.json()["message"].startswith("sent 1234")
    assert await asyncio.to_thread(balance, testnet.url, address(60)) == got + 1234
    assert await asyncio.to_thread(balance, testnet.url, FAUCET.address) == before - 1234


def test_ipv6_clients_share_a_cooldown_per_64() -> None:
    from r3mes.backend.services.faucet import ip_bucket

    assert ip_bucket("2001:db8::1") == ip_bucket("2001:db8:0:0:ffff::2") == "2001:db8::/64"
    assert ip_bucket("2001:db8:0:1::1") != ip_bucket("2001:db8::1")
    assert ip_bucket("10.0.0.1") == "10.0.0.1" != ip_bucket("10.0.0.2")
