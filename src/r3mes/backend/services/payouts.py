"""Paying serving operators their share of what their nodes earned, on the ledger.

Every `payout_every_blocks` blocks the job (1) records, in one transaction, a pending payout
per operator covering that operator's captured, not yet paid chat requests (`gross`; the
payout `amount` is `gross * share_bps // 10000`), marks those requests with the payout id
and moves the amount from revenue to payouts in the credit ledger; then (2) sends each
pending payout as one `MsgTransferCredits` from the treasury key with memo
`r3mes-payout:<id>:<random>`.

Idempotent across crashes: before sending, it searches the treasury's transactions on the
ledger (`tx_search message.sender=...`) for that memo; found, the payout is marked sent with
that transaction and nothing is broadcast. A crash between broadcast and recording therefore
never pays twice (and a transaction still in the mempool holds the treasury's sequence
number, so a re-broadcast could not commit a second time either). Several backend processes
sharing one database each run the job: a payout is claimed (`pending` -> `sending`, one
guarded UPDATE) before its memo search, so only one of them sends it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import and_, func, or_, select, update

from r3mes.backend.db.chat import ChatPayout, ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.services import credits
from r3mes.backend.services.metrics import GatewayMetrics
from r3mes.chain.errors import ChainError
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.tx import decode_tx

if TYPE_CHECKING:
    from r3mes.chain.client import AsyncBlockchainClient
    from r3mes.chain.crypto import SigningKey

log = logging.getLogger(__name__)

MEMO_PREFIX = "r3mes-payout:"
RPC_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
SEARCH_PAGE = 100
SEND_LEASE_S = 600
"""A payout being sent is `sending` (its `sent_at` the claim time) for this long: other
backend processes sharing the database leave it alone, and take it over (memo search first)
only if its sender died. Far longer than one memo search plus broadcast."""


@dataclass
class PayoutJob:
    """Records and sends payouts (see the module docstring)."""

    db: Database
    chain: AsyncBlockchainClient
    http: httpx.AsyncClient
    rpc_url: str
    key: SigningKey
    share_bps: int
    metrics: GatewayMetrics | None = None

    async def run(self, height: int) -> list[int]:
        """Record what is owed at `height`, then send every pending payout; ids sent."""
        await self.record(height)
        sent = []
        async with self.db.read() as s:
            pending = (
                await s.scalars(
                    select(ChatPayout).where(_claimable(datetime.now(UTC))).order_by(ChatPayout.id)
                )
            ).all()
        for payout in pending:
            if not await self.claim(payout.id):
                continue  # another backend process is sending it (or sent it)
            try:
                await self.send(payout)
            except BaseException as exc:
                await self.unclaim(payout.id)
                if not isinstance(exc, ChainError | httpx.HTTPError):
                    raise
                log.warning("payout %d not sent yet: %s", payout.id, exc)
                continue
            sent.append(payout.id)
        return sent

    async def claim(self, payout_id: int) -> bool:
        """Take `payout_id` for sending; False if another process holds or finished it."""
        now = datetime.now(UTC)
        async with self.db.write() as s, s.begin():
            taken = await s.execute(
                update(ChatPayout)
                .where(ChatPayout.id == payout_id, _claimable(now))
                .values(status="sending", sent_at=now)
                .execution_options(synchronize_session=False)
            )
        return int(getattr(taken, "rowcount", 0)) == 1

    async def unclaim(self, payout_id: int) -> None:
        """Give a claimed payout back (its send failed): the next run tries it again."""
        async with self.db.write() as s, s.begin():
            await s.execute(
                update(ChatPayout)
                .where(ChatPayout.id == payout_id, ChatPayout.status == "sending")
                .values(status="pending", sent_at=None)
                .execution_options(synchronize_session=False)
            )

    async def record(self, height: int) -> list[int]:
        """One pending payout per operator with unpaid captured credits (one transaction)."""
        created = []
        async with self.db.write() as s, s.begin():
            owed = (
                await s.execute(
                    select(ChatRequest.node, func.max(ChatRequest.id))
                    .where(
                        ChatRequest.payout_id.is_(None),
                        ChatRequest.node.is_not(None),
                        ChatRequest.credits > 0,
                    )
                    .group_by(ChatRequest.node)
                    .order_by(ChatRequest.node)
                )
            ).all()
            for operator, last_id in owed:
                payout_id = await self._record_one(s, str(operator), int(last_id), height)
                if payout_id is not None:
                    created.append(payout_id)
        return created

    async def _record_one(self, s: Any, operator: str, last_id: int, height: int) -> int | None:
        now = datetime.now(UTC)
        row = ChatPayout(
            operator=operator,
            amount=0,
            gross=0,
            requests=0,
            status="pending",
            memo=f"unassigned:{uuid.uuid4().hex}",
            height=height,
            created_at=now,
        )
        nested = await s.begin_nested()
        s.add(row)
        await s.flush()
        paid = (
            await s.execute(
                update(ChatRequest)
                .where(
                    ChatRequest.payout_id.is_(None),
                    ChatRequest.node == operator,
                    ChatRequest.credits > 0,
                    ChatRequest.id <= last_id,
                )
                .values(payout_id=row.id)
                .returning(ChatRequest.credits)
            )
        ).all()
        gross = sum(int(c) for (c,) in paid)
        amount = gross * self.share_bps // 10_000
        if amount <= 0:
            await nested.rollback()  # too little yet: the requests wait for the next run
            return None
        row.gross, row.amount, row.requests = gross, amount, len(paid)
        # The id names the payout; the random tail keeps memos unique when several databases
        # (a reset, a second deployment) pay from one treasury key.
        row.memo = f"{MEMO_PREFIX}{row.id}:{uuid.uuid4().hex[:12]}"
        await credits.payout(
            s, node=operator, amount=amount, idempotency_key=f"payout:{row.id}", ref=row.memo
        )
        await nested.commit()
        return int(row.id)

    async def send(self, payout: ChatPayout) -> None:
        """Put `payout` on the ledger unless it already is (memo search first)."""
        found = await self.find_memo(payout.memo)
        if found is None:
            msg = TransferCredits(
                creator=self.key.address, to=payout.operator, amount=payout.amount
            )
            result = await self.chain.sign_and_broadcast(self.key, [msg], memo=payout.memo)
            found = result.hash
            log.info("paid %d credits to %s (%s)", payout.amount, payout.operator, payout.memo)
            if self.metrics is not None:
                self.metrics.payouts.inc(payout.amount)
        async with self.db.write() as s, s.begin():
            await s.execute(
                update(ChatPayout)
                .where(ChatPayout.id == payout.id)
                .values(status="sent", tx_hash=found, sent_at=datetime.now(UTC))
            )

    async def find_memo(self, memo: str) -> str | None:
        """The hash of a committed, successful treasury tx with this memo."""
        page = 1
        while True:
            result = await self.rpc(
                "tx_search",
                query=f"message.sender='{self.key.address}'",
                page=str(page),
                per_page=str(SEARCH_PAGE),
                order_by="desc",
            )
            txs = result.get("txs", [])
            for tx in txs:
                if int(tx.get("tx_result", {}).get("code", 1)) != 0:
                    continue
                try:
                    decoded = decode_tx(base64.b64decode(tx["tx"]))
                except (ChainError, ValueError, KeyError):
                    continue
                if decoded.memo == memo:
                    return str(tx["hash"])
            if len(txs) < SEARCH_PAGE or page * SEARCH_PAGE >= int(result.get("total_count", 0)):
                return None
            page += 1

    async def rpc(self, method: str, **params: str) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        response = await self.http.post(
            f"{self.rpc_url.rstrip('/')}/", json=body, timeout=RPC_TIMEOUT
        )
        response.raise_for_status()
        doc = response.json()
        if "result" not in doc:
            raise ChainError(f"{method}: {doc.get('error', 'no result')}")
        result: dict[str, Any] = doc["result"]
        return result


def _claimable(now: datetime) -> Any:
    """Pending, or claimed by a sender that has held it past the lease (it died)."""
    return or_(
        ChatPayout.status == "pending",
        and_(
            ChatPayout.status == "sending",
            ChatPayout.sent_at < now - timedelta(seconds=SEND_LEASE_S),
        ),
    )


async def payout_loop(job: PayoutJob, *, every_blocks: int, poll_s: float) -> None:
    """Forever: run the job whenever the ledger height enters a new `every_blocks` window."""
    last_window = -1
    while True:
        try:
            status = await job.rpc("status")
            height = int(status["sync_info"]["latest_block_height"])
            window = height // every_blocks
            if window != last_window:
                await job.run(height)
                last_window = window
        except (ChainError, httpx.HTTPError, KeyError, ValueError) as exc:
            log.warning("payout job: ledger not reachable (%s)", type(exc).__name__)
        await asyncio.sleep(poll_s)
