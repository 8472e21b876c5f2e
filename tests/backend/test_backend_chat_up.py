"""The whole product path on `r3mes up`: a wallet logs in, deposits on the devnet, creates an
API key, chats with the adapter through the `openai` client (streamed), and its balance falls
by exactly the price of the usage the serving node reported. Every piece is a real process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser.harness import Network, running_network

from r3mes.backend import wallet_login
from r3mes.backend.services.billing import Usage, cost
from r3mes.backend.settings import ChatPrice
from r3mes.chain.crypto import SigningKey

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]

ADAPTER = "r3mes-adapter"
DEPOSIT = 900


def me(net: Network, token: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(
        f"{net.backend}/api/me", headers={"authorization": f"Bearer {token}"}, timeout=10
    ).json()
    return doc


def wait(condition: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def serving_routable(net: Network) -> bool:
    checks = httpx.get(f"{net.backend}/health", timeout=5).json()["checks"]
    return bool(checks.get("serving_nodes", {}).get("ok"))


async def test_wallet_deposits_chats_and_pays_exactly_the_price(tmp_path: Path) -> None:
    from openai import AsyncOpenAI

    with running_network(tmp_path) as net:
        wallet = SigningKey.generate()
        await asyncio.to_thread(net.fund, wallet, 5_000)
        tokens = await asyncio.to_thread(wallet_login.login, net.backend, wallet)
        access = str(tokens["access_token"])
        await asyncio.to_thread(net.deposit, wallet, DEPOSIT)
        wait(lambda: me(net, access)["available"] == DEPOSIT, "deposit not credited")
        created = httpx.post(
            f"{net.backend}/api/keys",
            json={"name": "e2e", "scopes": ["chat", "read"]},
            headers={"authorization": f"Bearer {access}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        wait(lambda: serving_routable(net), "the serving node never became routable", 300)

        client = AsyncOpenAI(api_key=key, base_url=f"{net.backend}/v1", max_retries=0)
        try:
            models = {m.id for m in (await client.models.list()).data}
            assert ADAPTER in models
            stream = await client.chat.completions.create(
                model=ADAPTER,
                messages=[{"role": "user", "content": "Write a line of Python."}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    usage = chunk.usage
        finally:
            await client.close()
        assert text and usage is not None and usage.completion_tokens > 0
        prices = httpx.get(f"{net.backend}/v1/pricing", timeout=10).json()
        price = ChatPrice(**prices["models"].get(ADAPTER, prices["default"]))
        charged = cost(price, Usage(usage.prompt_tokens, usage.completion_tokens))
        after = me(net, access)
        assert (after["available"], after["held"]) == (DEPOSIT - charged, 0), net.logs()
