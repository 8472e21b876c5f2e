"""The test-chain faucet: credits for an address, on devnets and testnets only.

Refusals, each with its own clear error: a chain not declared devnet/testnet
(`network_kind`), no faucet key configured, a malformed address, an amount over the cap,
and a cooldown per address and per client IP (429 with Retry-After). The cooldown check and
the grant's record happen in one write transaction (serialised per database), so concurrent
requests cannot slip past it; a send the ledger refuses is marked failed and does not count.
The payout is the ledger's own message, signed by the faucet key: `MsgFaucet` when the ledger
is a devnet (it mints), `MsgTransferCredits` from the faucet's balance otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update

from r3mes.backend.db.engine import Database
from r3mes.backend.db.index import IxFaucetGrant
from r3mes.backend.errors import Forbidden, InvalidRequest, RateLimited, Unavailable
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey, validate_address
from r3mes.chain.errors import AddressError, ChainError, ClientError, TxRejected
from r3mes.chain.msgs import Faucet, Msg, TransferCredits

log = logging.getLogger(__name__)
FAUCET_LOCK_ID = 0x52334D4546  # "R3MEF": one faucet decision at a time on PostgreSQL


@dataclass(frozen=True)
class Grant:
    address: str
    amount: int
    tx_hash: str
    height: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "amount": self.amount,
            "tx_hash": self.tx_hash,
            "height": self.height,
            "message": self.message,
        }


class FaucetService:
    def __init__(self, settings: BackendSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._key: SigningKey | None = None
        self._client: Any = None
        self._send_lock = asyncio.Lock()

    def _check_enabled(self) -> None:
        if self.settings.network_kind not in ("devnet", "testnet"):
            raise Forbidden(
                "the faucet is disabled: this chain is not marked as a devnet or testnet "
                "(network_kind is mainnet)"
            )
        if not self.settings.faucet_passphrase.get_secret_value():
            raise Unavailable(
                "the faucet is not configured on this backend (no faucet key passphrase); "
                "ask the operator to set R3MES_FAUCET_PASSPHRASE"
            )

    def check_request(self, address: object, amount: object) -> tuple[str, int]:
        """(canonical address, amount) or the error that refuses the request."""
        self._check_enabled()
        if not isinstance(address, str):
            raise InvalidRequest("address must be a remes1... address string")
        try:
            canonical = validate_address(address)
        except AddressError as exc:
            raise InvalidRequest(f"address: {exc}") from exc
        value = self.settings.faucet_amount if amount is None else amount
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest("amount must be a positive integer number of credits")
        if value > self.settings.faucet_max_amount:
            raise InvalidRequest(
                f"amount {value} is over the faucet's cap of {self.settings.faucet_max_amount}"
            )
        return canonical, value

    async def request(self, *, address: object, amount: object, ip: str) -> Grant:
        canonical, value = self.check_request(address, amount)
        grant_id = await self._reserve(canonical, value, ip)
        try:
            tx_hash, height, message = await self._send(canonical, value)
        except BaseException:
            await self._finish(grant_id, status="failed", tx_hash="")
            raise
        await self._finish(grant_id, status="sent", tx_hash=tx_hash)
        return Grant(canonical, value, tx_hash, height, message)

    async def _reserve(self, address: str, amount: int, ip: str) -> int:
        now = int(time.time() * 1000)
        s_ = self.settings
        async with self.db.write() as s, s.begin():
            if not self.db.is_sqlite:
                await s.execute(text(f"SELECT pg_advisory_xact_lock({FAUCET_LOCK_ID})"))
            for column, value, cooldown, what in (
                (IxFaucetGrant.address, address, s_.faucet_address_cooldown_s, "this address"),
                (IxFaucetGrant.ip, ip, s_.faucet_ip_cooldown_s, "your IP address"),
            ):
                last = await s.scalar(
                    select(func.max(IxFaucetGrant.created_at_ms)).where(
                        column == value,
                        IxFaucetGrant.status != "failed",
                        IxFaucetGrant.created_at_ms > now - cooldown * 1000,
                    )
                )
                if last is not None:
                    wait_s = max(1, (int(last) + cooldown * 1000 - now + 999) // 1000)
                    raise RateLimited(
                        f"the faucet already paid {what} recently; try again in {wait_s} s",
                        headers={"Retry-After": str(wait_s)},
                    )
            grant = IxFaucetGrant(
                address=address,
                ip=ip,
                amount=amount,
                status="pending",
                tx_hash="",
                created_at_ms=now,
            )
            s.add(grant)
            await s.flush()
            return int(grant.id)

    async def _finish(self, grant_id: int, *, status: str, tx_hash: str) -> None:
        async with self.db.write() as s, s.begin():
            await s.execute(
                update(IxFaucetGrant)
                .where(IxFaucetGrant.id == grant_id)
                .values(status=status, tx_hash=tx_hash)
            )

    def _load(self) -> tuple[SigningKey, Any]:
        from r3mes.chain.client import BlockchainClient
        from r3mes.chain.keystore import Keystore
        from r3mes.paths import Home

        if self._key is None:
            store = Keystore(Home(root=self.settings.home).keys)
            try:
                self._key = store.load(
                    self.settings.faucet_key,
                    passphrase=self.settings.faucet_passphrase.get_secret_value(),
                )
            except (ChainError, OSError) as exc:
                raise Unavailable(
                    f"the faucet key {self.settings.faucet_key!r} cannot be loaded: {exc}"
                ) from exc
            self._client = BlockchainClient(self.settings.chain_rpc, timeout_s=10, retries=2)
        return self._key, self._client

    async def _send(self, address: str, amount: int) -> tuple[str, int, str]:
        async with self._send_lock:  # one signer: sequences must not race
            return await asyncio.to_thread(self._send_sync, address, amount)

    def _send_sync(self, address: str, amount: int) -> tuple[str, int, str]:
        key, client = self._load()
        try:
            params = client.params()
            msg: Msg
            if params.devnet:
                if amount > params.faucet_max_amount:
                    raise InvalidRequest(
                        f"amount is over the ledger's faucet limit {params.faucet_max_amount}"
                    )
                msg = Faucet(creator=key.address, to=address, amount=amount)
            else:
                msg = TransferCredits(creator=key.address, to=address, amount=amount)
            result = client.sign_and_broadcast(key, [msg], wait=True, timeout_s=30)
        except TxRejected as exc:
            raise Unavailable(f"the ledger refused the faucet transfer: {exc.log}") from exc
        except ClientError as exc:
            raise Unavailable(f"the ledger cannot be reached for the faucet: {exc}") from exc
        kind = "minted" if isinstance(msg, Faucet) else "sent"
        return result.hash, result.height, f"{kind} {amount} credits to {address}"


def ip_bucket(ip: str) -> str:
    """IPv6 clients are limited per /64 (one host holds many addresses); IPv4 per address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an IP (a test transport's name): its own bucket
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
