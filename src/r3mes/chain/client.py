"""BlockchainClient: what every node uses to talk to a ledger node over HTTP.

Retries with exponential backoff on network errors and 5xx answers only; never on 4xx or
on a rejected transaction (those raise at once). Every request has a timeout.
`AsyncBlockchainClient` offers the same methods as coroutines.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from r3mes.chain.client_types import (
    AccountInfo,
    ArtifactInfo,
    BroadcastResult,
    ChainStatus,
    LeaderboardEntry,
    NodeInfo,
    RoundInfo,
    SubmissionInfo,
    from_json,
)
from r3mes.chain.codes import Code
from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import ClientError, NotFound, TxRejected
from r3mes.chain.genesis import Params
from r3mes.chain.msgs import Msg, SubmitGradient
from r3mes.chain.pow import solve_pow
from r3mes.chain.rest import PREFIX
from r3mes.chain.tx import build_tx

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:26657"


class BlockchainClient:
    """Synchronous client; thread-safe (one httpx.Client, a lock around sequences)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ClientError(f"ledger URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._chain_id: str | None = None
        self._next_sequence: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BlockchainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(self.retries + 1):
            try:
                response = self._http.get(path, params=clean)
            except httpx.TransportError as exc:
                error: Exception = exc
            else:
                if response.status_code < 500:
                    return _decode(response, path)
                error = ClientError(f"{path}: node answered {response.status_code}")
            if attempt == self.retries:
                raise ClientError(
                    f"ledger node {self.base_url} unreachable for {path} after "
                    f"{self.retries + 1} tries: {error}; is `r3mes devnet start` running?"
                ) from error
            delay = self.backoff_s * (2**attempt)
            log.warning("ledger request %s failed (%s); retrying in %.2f s", path, error, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _rpc(self, method: str, **params: Any) -> Any:
        return self._get(f"/{method}", params)["result"]

    # -- queries ----------------------------------------------------------------------

    def status(self) -> ChainStatus:
        result = self._rpc("status")
        sync = result["sync_info"]
        return ChainStatus(
            chain_id=result["node_info"]["network"],
            height=int(sync["latest_block_height"]),
            app_hash=sync["latest_app_hash"],
            block_hash=sync["latest_block_hash"],
            block_time=sync["latest_block_time"],
        )

    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = self.status().chain_id
        return self._chain_id

    def account(self, address: str) -> AccountInfo:
        return from_json(AccountInfo, self._get(f"{PREFIX}/accounts/{address}")["account"])

    def params(self) -> Params:
        doc = dict(self._get(f"{PREFIX}/params")["params"])
        doc.pop("chain_id", None)
        return Params(**doc)

    def current_round(self) -> RoundInfo:
        return from_json(RoundInfo, self._get(f"{PREFIX}/rounds/current")["round"])

    def round(self, number: int) -> RoundInfo:
        return from_json(RoundInfo, self._get(f"{PREFIX}/rounds/{int(number)}")["round"])

    def tasks(self, round_number: int | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = self._get(f"{PREFIX}/tasks", {"round": round_number})
        return doc

    def submissions(self, round_number: int | None = None) -> list[SubmissionInfo]:
        docs = self._get(f"{PREFIX}/submissions", {"round": round_number})["submissions"]
        return [from_json(SubmissionInfo, d) for d in docs]

    def nodes(self, role: str | None = None) -> list[NodeInfo]:
        docs = self._get(f"{PREFIX}/nodes", {"role": role})["nodes"]
        return [from_json(NodeInfo, d) for d in docs]

    def approved_artifacts(self, kind: str | None = None) -> list[ArtifactInfo]:
        docs = self._get(f"{PREFIX}/artifacts", {"kind": kind, "status": "approved"})["artifacts"]
        return [from_json(ArtifactInfo, d) for d in docs]

    def leaderboard(self, limit: int = 100) -> list[LeaderboardEntry]:
        docs = self._get(f"{PREFIX}/leaderboard", {"limit": limit})["leaderboard"]
        return [from_json(LeaderboardEntry, d) for d in docs]

    def tx(self, tx_hash: str) -> BroadcastResult | None:
        """A committed tx's result, or None if it is not (yet) in a block."""
        try:
            doc = self._rpc("tx", hash=tx_hash)
        except NotFound:
            return None
        res = doc["tx_result"]
        return BroadcastResult(
            doc["hash"], res["code"], res["log"], int(doc["height"]), tuple(res["events"])
        )

    # -- transactions -----------------------------------------------------------------

    def broadcast(self, raw: bytes) -> BroadcastResult:
        """broadcast_tx_sync; raises TxRejected if check_tx refuses the tx."""
        encoded = base64.b64encode(raw).decode()
        result = self._rpc("broadcast_tx_sync", tx=encoded)
        if result["code"] == Code.DUPLICATE and "mempool" in result["log"]:
            return BroadcastResult(result["hash"], 0, "already queued")  # a retried broadcast
        if result["code"] != 0:
            raise TxRejected(result["code"], result["log"], result["hash"])
        return BroadcastResult(result["hash"], 0, result["log"])

    def wait_for_tx(
        self, tx_hash: str, *, timeout_s: float = 30.0, poll_s: float = 0.2
    ) -> BroadcastResult:
        """Poll until the tx is in a block; raises TxRejected if it failed there."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.tx(tx_hash)
            if found is not None:
                if found.code != 0:
                    raise TxRejected(found.code, found.log, tx_hash)
                return found
            if time.monotonic() >= deadline:
                raise ClientError(f"tx {tx_hash} not included within {timeout_s} s")
            time.sleep(poll_s)

    def sign_and_broadcast(
        self,
        key: SigningKey,
        msgs: Sequence[Msg],
        *,
        wait: bool = True,
        memo: str = "",
        timeout_s: float = 30.0,
    ) -> BroadcastResult:
        """Build, sign and broadcast `msgs` from `key`; by default wait for inclusion."""
        with self._lock:
            acc = self.account(key.address)
            sequence = max(acc.sequence, self._next_sequence.get(key.address, 0))
            raw = build_tx(
                list(msgs),
                key=key,
                chain_id=self.chain_id(),
                account_number=acc.account_number,
                sequence=sequence,
                memo=memo,
            )
            try:
                sent = self.broadcast(raw)
            except TxRejected:
                self._next_sequence.pop(key.address, None)
                raise
            self._next_sequence[key.address] = sequence + 1
        return self.wait_for_tx(sent.hash, timeout_s=timeout_s) if wait else sent

    def submit_gradient(
        self,
        key: SigningKey,
        *,
        round_number: int,
        shard: int,
        cid: str,
        digest: str,
        wait: bool = True,
    ) -> BroadcastResult:
        """Solve the anti-spam proof of work for this submission and send it."""
        msg = SubmitGradient(
            creator=key.address, round=round_number, shard=shard, cid=cid, digest=digest
        )
        solved = solve_pow(msg, chain_id=self.chain_id(), difficulty=self.params().pow_difficulty)
        return self.sign_and_broadcast(key, [solved], wait=wait)


def _decode(response: httpx.Response, path: str) -> Any:
    try:
        doc = response.json()
    except ValueError as exc:
        raise ClientError(f"{path}: node answered non-JSON ({response.status_code})") from exc
    if response.status_code == 404:
        raise NotFound(_message(doc) or f"{path}: not found")
    if response.status_code >= 400:
        raise ClientError(f"{path}: {_message(doc) or response.status_code}")
    return doc


def _message(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return str(err.get("message", ""))
        return str(doc.get("message") or doc.get("detail") or "")
    return ""


class AsyncBlockchainClient:
    """The same API as coroutines (each call runs the sync client in a worker thread)."""

    def __init__(self, base_url: str = DEFAULT_URL, **kwargs: Any) -> None:
        self.sync = BlockchainClient(base_url, **kwargs)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def status(self) -> ChainStatus:
        return await asyncio.to_thread(self.sync.status)

    async def account(self, address: str) -> AccountInfo:
        return await asyncio.to_thread(self.sync.account, address)

    async def params(self) -> Params:
        return await asyncio.to_thread(self.sync.params)

    async def current_round(self) -> RoundInfo:
        return await asyncio.to_thread(self.sync.current_round)

    async def round(self, number: int) -> RoundInfo:
        return await asyncio.to_thread(self.sync.round, number)

    async def submissions(self, round_number: int | None = None) -> list[SubmissionInfo]:
        return await asyncio.to_thread(self.sync.submissions, round_number)

    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        return await asyncio.to_thread(self.sync.nodes, role)

    async def approved_artifacts(self, kind: str | None = None) -> list[ArtifactInfo]:
        return await asyncio.to_thread(self.sync.approved_artifacts, kind)

    async def leaderboard(self, limit: int = 100) -> list[LeaderboardEntry]:
        return await asyncio.to_thread(self.sync.leaderboard, limit)

    async def sign_and_broadcast(
        self, key: SigningKey, msgs: Sequence[Msg], **kw: Any
    ) -> BroadcastResult:
        return await asyncio.to_thread(lambda: self.sync.sign_and_broadcast(key, msgs, **kw))

    async def submit_gradient(self, key: SigningKey, **kw: Any) -> BroadcastResult:
        return await asyncio.to_thread(lambda: self.sync.submit_gradient(key, **kw))
