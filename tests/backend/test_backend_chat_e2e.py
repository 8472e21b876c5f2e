"""Paid chat end to end on a real devnet with two real serving nodes (`r3mes serving-node
start` of the shipped model, as processes): the backend finds them on the ledger, a wallet
deposits on the ledger, chats through the `openai` client (streamed) and pays exactly the
price of the reported usage; one node is killed and the other serves; operators are paid
their share on the ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.chat import BackendServer, balance, funded_key, serving_backend
from support.devnet import running_devnet

from r3mes.backend.services.billing import Usage, cost
from r3mes.backend.settings import ChatPrice
from r3mes.chain.client import BlockchainClient
from r3mes.chain.keystore import Keystore
from r3mes.chain.msgs import TransferCredits
from r3mes.node.localnet.setup import NetworkSpec, ensure_keys, passphrase, prepare_genesis
from r3mes.paths import Home

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(600)]

ADAPTER = "r3mes-adapter"
PRICE = ChatPrice(prompt_per_1k=50, completion_per_1k=500)
EXTRA_KEYS = ("serving-2", "wallet")  # the spec's own keys include backend-treasury


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Home, str, dict[str, str]]]:
    spec = NetworkSpec(home=Home(root=tmp_path), miners=1, round_blocks=10, dataset_chars=20_000)
    addresses = ensure_keys(spec)
    store = Keystore(spec.home.keys, scrypt_n=2**14)
    for name in EXTRA_KEYS:
        info, _ = store.create(name, passphrase=passphrase(spec.home))
        addresses[name] = info.address
    prepare_genesis(spec, addresses)
    with running_devnet(spec, block_interval_s=0.3) as (home, url):
        yield home, url, addresses


def start_serving_node(home: Home, url: str, key: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "r3mes.cli.main", "serving-node", "start", "--key", key]
    cmd += ["--chain", url, "--home", str(home.root), "--heartbeat", "1", "--name", key]
    env = {**os.environ, "R3MES_PASSPHRASE": passphrase(home)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_routable(backend: BackendServer, nodes: set[str], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        checks = backend.health()["checks"]
        found = checks.get("serving_nodes", {}).get("nodes", {})  # type: ignore[attr-defined]
        if {k for k, n in found.items() if n["ok"]} >= nodes:
            return
        assert time.monotonic() < deadline, f"serving nodes not routable: {found}"
        time.sleep(0.5)


async def test_paid_chat_across_real_serving_nodes(
    network: tuple[Home, str, dict[str, str]],
) -> None:
    home, url, addresses = network
    procs = [start_serving_node(home, url, key) for key in ("serving-1", "serving-2")]
    operators = {addresses["serving-1"], addresses["serving-2"]}
    from support.backend import make_settings

    settings = make_settings(
        home.root,
        chain_rpc=url,
        follow_chain=True,
        treasury_key="backend-treasury",
        treasury_passphrase=passphrase(home),
        payout_every_blocks=5,
        chat_prices={ADAPTER: PRICE},
        node_probe_interval_s=0.5,
        node_cooldown_s=2.0,
        node_failures_to_trip=2,
    )
    try:
        with serving_backend(settings) as backend:
            wait_routable(backend, operators)
            await chat_and_check(backend, url, home, addresses, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(20)


async def chat_and_check(
    backend: BackendServer,
    url: str,
    home: Home,
    addresses: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
) -> None:
    from openai import AsyncOpenAI

    # the wallet's key (its account is the wallet's address), funded by a ledger deposit
    wallet = Keystore(home.keys, scrypt_n=2**14).load("wallet", passphrase=passphrase(home))
    funded = await funded_key(backend.settings, 0, address=wallet.address)
    await asyncio.to_thread(deposit, url, wallet, addresses["backend-treasury"], 900)
    await wait_balance(backend, funded.account_id, 900)

    client = AsyncOpenAI(api_key=funded.key, base_url=f"{backend.url}/v1", max_retries=0)
    try:
        models = {m.id for m in (await client.models.list()).data}
        assert ADAPTER in models and f"{ADAPTER}@1" in models
        stream = await client.chat.completions.create(
            model=ADAPTER,
            messages=[{"role": "user", "content": "Say something about code."}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage
        assert text and usage is not None and usage.completion_tokens > 0
    finally:
        await client.close()
    have = await balance(backend.settings, funded.account_id)
    price = cost(PRICE, Usage(usage.prompt_tokens, usage.completion_tokens))
    assert (have.available, have.held) == (900 - price, 0)

    # both nodes take traffic (turns among equally loaded nodes, so even requests that do not
    # overlap on a slow box spread); kill one and the other keeps serving
    await asyncio.to_thread(
        wait_routable, backend, {addresses["serving-1"], addresses["serving-2"]}
    )
    served = await spread(backend, funded.key, 6)
    assert served == {addresses["serving-1"], addresses["serving-2"]}
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(20)
    after = await spread(backend, funded.key, 4)
    assert after == {addresses["serving-2"]}

    # operators are paid their share on the ledger, with the payout id in the memo
    paid = await wait_payouts(backend, 2)
    assert {p["operator"] for p in paid} == {addresses["serving-1"], addresses["serving-2"]}
    for payout in paid:
        gross = payout["gross"]
        assert isinstance(gross, int)
        assert payout["amount"] == gross * backend.settings.operator_share_bps // 10_000
    health = backend.health()
    assert health["checks"]["ledger"]["ok"] is True  # type: ignore[index]
    metrics = httpx.get(f"{backend.url}/metrics", timeout=5).text
    assert f'r3mes_gateway_requests_total{{model="{ADAPTER}"' in metrics


def deposit(url: str, wallet: object, treasury: str, amount: int) -> None:
    with BlockchainClient(url, timeout_s=10, retries=2) as chain:
        msg = TransferCredits(creator=wallet.address, to=treasury, amount=amount)  # type: ignore[attr-defined]
        chain.sign_and_broadcast(wallet, [msg])  # type: ignore[arg-type]


async def wait_balance(backend: BackendServer, account_id: int, amount: int) -> None:
    deadline = time.monotonic() + 60
    while (await balance(backend.settings, account_id)).available != amount:
        assert time.monotonic() < deadline, "the ledger deposit was not credited"
        await asyncio.sleep(0.3)


async def spread(backend: BackendServer, key: str, n: int) -> set[str]:
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=backend.url, timeout=120) as c:
        answers = await asyncio.gather(
            *(
                c.post("/v1/chat/completions", json=body, headers={"x-api-key": key})
                for _ in range(n)
            )
        )
    assert [a.status_code for a in answers] == [200] * n, [a.text for a in answers]
    return {a.headers["x-r3mes-node"] for a in answers}


async def wait_payouts(backend: BackendServer, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while True:
        doc = httpx.get(f"{backend.url}/api/serving/payouts", timeout=5).json()
        sent = [p for p in doc["payouts"] if p["status"] == "sent"]
        if len({p["operator"] for p in sent}) >= count:
            return sent
        assert time.monotonic() < deadline, f"payouts not sent: {doc}"
        await asyncio.sleep(0.5)
