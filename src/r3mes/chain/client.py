"""BlockchainClient: what every node uses to talk to a ledger node over HTTP.

JSON-RPC methods (status, tx, broadcast_tx_sync, ...) go as POST JSON-RPC 2.0 requests, so
a transaction of any allowed size travels in the body, never in a URL; REST queries are
GETs. Retries with exponential backoff on network errors and 5xx answers only; never on
4xx or on a rejected transaction (those raise at once). Every request has a timeout, and
every failure, a malformed URL or answer included, is a ClientError.
`AsyncBlockchainClient` offers the same methods as coroutines.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import httpx

from r3mes.chain.artifact_record import ArtifactRecord, InvalidArtifactRecord
from r3mes.chain.client_types import (
    PREFIX,
    AccountInfo,
    BroadcastResult,
    ChainStatus,
    LeaderboardEntry,
    NodeInfo,
    ProposalInfo,
    RoundInfo,
    SubmissionInfo,
    from_json,
)
from r3mes.chain.codes import Code
from r3mes.chain.crypto import SigningKey
from r3mes.chain.errors import ClientError, GenesisError, NotFound, TxRejected
from r3mes.chain.genesis import Params
from r3mes.chain.msgs import Msg, SubmitGradient
from r3mes.chain.pow import solve_pow
from r3mes.chain.tx import build_tx
from r3mes.spec.shards import round_shard

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:26657"
T = TypeVar("T")


def _parsed(what: str, parse: Callable[[], T]) -> T:
    """Run `parse` over a node's answer; a missing or mistyped field is a ClientError."""
    try:
        return parse()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClientError(f"node answered a malformed {what}: {type(exc).__name__} {exc}") from exc


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
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ClientError(f"ledger URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        try:
            url = httpx.URL(self.base_url)
            url.port  # noqa: B018 - parsing the port is what validates it
            if not url.host:
                raise ValueError("no host")
            self._http = httpx.Client(base_url=url, timeout=timeout_s, transport=transport)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ClientError(
                f"ledger URL {base_url!r} is not valid ({exc}); use http://HOST:PORT"
            ) from exc
        self._ids = itertools.count(1)
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
        return self._send("GET", path, params=clean)

    def _get_field(self, key: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """`key` of the JSON object a GET of `path` answers."""
        doc = self._get(path, params)
        if not isinstance(doc, dict) or key not in doc:
            raise ClientError(f"{path}: node answered without {key!r}")
        return doc[key]

    def _get_list(self, key: str, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        docs = self._get_field(key, path, params)
        if not isinstance(docs, list):
            raise ClientError(f"{path}: node answered a {key!r} that is not a list")
        return docs

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        retries: int | None = None,
    ) -> Any:
        what = f"{path} {body['method']}" if body and "method" in body else path
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                response = self._http.request(method, path, params=params, json=body)
            except httpx.TransportError as exc:
                error: Exception = exc
            except (httpx.InvalidURL, ValueError) as exc:
                raise ClientError(f"cannot send {what} to {self.base_url}: {exc}") from exc
            else:
                if response.status_code < 500:
                    return _decode(response, what)
                error = ClientError(f"{what}: node answered {response.status_code}")
            if attempt == retries:
                raise ClientError(
                    f"ledger node {self.base_url} unreachable for {what} after "
                    f"{retries + 1} tries: {error}; is `r3mes devnet start` running?"
                ) from error
            delay = self.backoff_s * (2**attempt)
            log.warning("ledger request %s failed (%s); retrying in %.2f s", what, error, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _rpc(self, method: str, *, retries: int | None = None, **params: Any) -> Any:
        """One JSON-RPC 2.0 call, POSTed (large params such as a tx stay out of the URL)."""
        request = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": {k: v for k, v in params.items() if v is not None},
        }
        doc = self._send("POST", "/", body=request, retries=retries)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            # CometBFT's JSON-RPC error (HTTP 200): "tx (HASH) not found" is a NotFound
            text = _message(doc)
            if "not found" in text.lower() and doc["error"].get("code") != -32601:
                raise NotFound(f"{method}: {text}")
            raise ClientError(f"{method}: {text}")
        if not isinstance(doc, dict) or "result" not in doc:
            raise ClientError(f"{method}: node answered without a result: {_message(doc)}")
        return doc["result"]

    # -- queries ----------------------------------------------------------------------

    def wait_ready(
        self,
        *,
        timeout_s: float,
        alive: Callable[[], bool] | None = None,
        patience_s: float = 10.0,
        poll_s: float = 0.1,
    ) -> ChainStatus:
        """Poll `status` until a ledger that is still starting answers; returns its status.

        A refused connection while a server comes up is expected, not a failure: nothing
        is logged until the wait passes `patience_s` (then one line says what it waits
        for), and only the timeout raises. `alive` (e.g. "the process has not exited")
        ends the wait early with a ClientError.
        """
        started = time.monotonic()
        warned = False
        while True:
            try:
                return self._status(retries=0)
            except ClientError as exc:
                error = exc
            waited = time.monotonic() - started
            if alive is not None and not alive():
                raise ClientError(f"the ledger at {self.base_url} stopped before it answered")
            if waited >= timeout_s:
                raise ClientError(
                    f"ledger node {self.base_url} did not answer within {timeout_s:g} s: {error}"
                ) from error
            if waited >= patience_s and not warned:
                log.warning("still waiting for the ledger at %s (%.0f s)", self.base_url, waited)
                warned = True
            time.sleep(poll_s)

    def status(self) -> ChainStatus:
        return self._status(retries=None)

    def _status(self, *, retries: int | None) -> ChainStatus:
        result = self._rpc("status", retries=retries)

        def parse() -> ChainStatus:
            sync = result["sync_info"]
            return ChainStatus(
                chain_id=str(result["node_info"]["network"]),
                height=int(sync["latest_block_height"]),
                app_hash=str(sync["latest_app_hash"]),
                block_hash=str(sync["latest_block_hash"]),
                block_time=str(sync["latest_block_time"]),
            )

        return _parsed("status", parse)

    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = self.status().chain_id
        return self._chain_id

    def account(self, address: str) -> AccountInfo:
        return from_json(AccountInfo, self._get_field("account", f"{PREFIX}/accounts/{address}"))

    def params(self) -> Params:
        doc = _parsed("params", lambda: dict(self._get_field("params", f"{PREFIX}/params")))
        known = {f.name for f in fields(Params)}
        try:
            return Params(**{k: v for k, v in doc.items() if k in known})
        except GenesisError as exc:
            raise ClientError(f"node answered invalid params: {exc}") from exc

    def current_round(self) -> RoundInfo:
        return from_json(RoundInfo, self._get_field("round", f"{PREFIX}/rounds/current"))

    def round(self, number: int) -> RoundInfo:
        return from_json(RoundInfo, self._get_field("round", f"{PREFIX}/rounds/{int(number)}"))

    def tasks(self, round_number: int | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = self._get(f"{PREFIX}/tasks", {"round": round_number})
        return doc

    def submissions(self, round_number: int | None = None) -> list[SubmissionInfo]:
        docs = self._get_list("submissions", f"{PREFIX}/submissions", {"round": round_number})
        return [from_json(SubmissionInfo, d) for d in docs]

    def proposal(self, round_number: int) -> ProposalInfo | None:
        """The adapter version proposed for a round (None: none was)."""
        try:
            doc = self._get_field("proposal", f"{PREFIX}/proposals/{int(round_number)}")
        except NotFound:
            return None
        return from_json(ProposalInfo, doc)

    def dispute(self, dispute_id: int) -> dict[str, Any] | None:
        """A dispute by id (the disputed submission's id); None when there is none. The
        ledger's JSON: parties, steps, lo/hi and digests, query step, referees, status."""
        try:
            doc = self._get_field("dispute", f"{PREFIX}/disputes/{int(dispute_id)}")
        except NotFound:
            return None
        if not isinstance(doc, dict):
            raise ClientError("node answered a malformed dispute: not an object")
        return doc

    def open_disputes(self) -> list[dict[str, Any]]:
        """Disputes not resolved yet (JSON as `dispute` answers each)."""
        docs = self._get_list("disputes", f"{PREFIX}/disputes")
        return [d for d in docs if isinstance(d, dict)]

    def stake(self, address: str) -> dict[str, Any]:
        """Bonded stake per role and unbonding entries of `address` (JSON as the ledger
        answers it: address, bonded, unbonding, total)."""
        doc = self._get_field("stake", f"{PREFIX}/stake/{address}")
        if not isinstance(doc, dict):
            raise ClientError("node answered a malformed stake: not an object")
        return doc

    def submission(self, sid: int) -> SubmissionInfo:
        """One submission by id; NotFound when the ledger holds none."""
        doc = self._get_field("submission", f"{PREFIX}/submissions/{int(sid)}")
        return from_json(SubmissionInfo, doc)

    def nodes(self, role: str | None = None) -> list[NodeInfo]:
        docs = self._get_list("nodes", f"{PREFIX}/nodes", {"role": role})
        return [from_json(NodeInfo, d) for d in docs]

    def approved_artifacts(self, kind: str | None = None) -> list[ArtifactRecord]:
        query = {"kind": kind, "status": "approved"}
        docs = self._get_list("artifacts", f"{PREFIX}/artifacts", query)
        return [_artifact(d) for d in docs]

    def leaderboard(self, limit: int = 100) -> list[LeaderboardEntry]:
        docs = self._get_list("leaderboard", f"{PREFIX}/leaderboard", {"limit": limit})
        return [from_json(LeaderboardEntry, d) for d in docs]

    def tx(self, tx_hash: str) -> BroadcastResult | None:
        """A committed tx's result, or None if it is not (yet) in a block."""
        try:
            doc = self._rpc("tx", hash=tx_hash)
        except NotFound:
            return None

        def parse() -> BroadcastResult:
            res = doc["tx_result"]
            return BroadcastResult(
                str(doc["hash"]),
                int(res["code"]),
                str(res["log"]),
                int(doc["height"]),
                tuple(res["events"]),
            )

        return _parsed("tx", parse)

    # -- transactions -----------------------------------------------------------------

    def broadcast(self, raw: bytes) -> BroadcastResult:
        """broadcast_tx_sync; raises TxRejected if check_tx refuses the tx."""
        encoded = base64.b64encode(raw).decode()
        result = self._rpc("broadcast_tx_sync", tx=encoded)
        code, log_line, digest = _parsed(
            "broadcast_tx_sync answer",
            lambda: (int(result["code"]), str(result["log"]), str(result["hash"])),
        )
        if code == Code.DUPLICATE and "mempool" in log_line:
            return BroadcastResult(digest, 0, "already queued")  # a retried broadcast
        if code != 0:
            raise TxRejected(code, log_line, digest)
        return BroadcastResult(digest, 0, log_line)

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

    def simulate(self, key: SigningKey, msgs: Sequence[Msg], *, memo: str = "") -> BroadcastResult:
        """Sign `msgs` as `sign_and_broadcast` would and ask the ledger what delivering them
        in the next block would answer (code, log, events); nothing is sent or committed."""
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
        result = self._rpc("simulate_tx", tx=base64.b64encode(raw).decode())

        def parse() -> BroadcastResult:
            return BroadcastResult(
                hash=str(result["hash"]),
                code=int(result["code"]),
                log=str(result["log"]),
                events=tuple(dict(e) for e in result["events"]),
            )

        return _parsed("simulate_tx", parse)

    def submit_gradient(
        self,
        key: SigningKey,
        *,
        round_number: int,
        cid: str,
        digest: str,
        shard: int | None = None,
        wait: bool = True,
        residual_cid: str = "",
        residual_digest: str = "",
        base_submission_id: int = 0,
        trace_cid: str = "",
        trace_root: str = "",
    ) -> BroadcastResult:
        """Solve the anti-spam proof of work for this submission and send it.

        `shard` defaults to the one the ledger assigns `key` in that round (the only one
        it accepts); see r3mes.spec.shards.
        """
        if shard is None:
            shard = round_assigned_shard(self.round(round_number), key.address)
        msg = SubmitGradient(
            creator=key.address,
            round=round_number,
            shard=shard,
            cid=cid,
            digest=digest,
            residual_cid=residual_cid,
            residual_digest=residual_digest,
            base_submission_id=base_submission_id,
            trace_cid=trace_cid,
            trace_root=trace_root,
        )
        solved = solve_pow(msg, chain_id=self.chain_id(), difficulty=self.params().pow_difficulty)
        return self.sign_and_broadcast(key, [solved], wait=wait)


def round_assigned_shard(rnd: RoundInfo, miner: str) -> int:
    """The shard `miner` must take in `rnd`, given the claims the round shows."""
    claimed = _parsed("round claims", lambda: {int(c["shard"]) for c in rnd.claims})
    try:
        return round_shard(
            seed_hex=rnd.seed, miner=miner, n_shards=rnd.shards_per_round, claimed=claimed
        )
    except ValueError as exc:
        raise ClientError(f"round {rnd.number} has an unusable seed or shard count: {exc}") from exc


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


def _artifact(doc: Any) -> ArtifactRecord:
    try:
        return ArtifactRecord.from_ledger(doc)
    except InvalidArtifactRecord as exc:
        raise ClientError(f"node answered a malformed artifact: {exc}") from exc


def _message(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):  # CometBFT's fixed message, then what went wrong
            return ": ".join(str(err[k]) for k in ("message", "data") if err.get(k))
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

    async def approved_artifacts(self, kind: str | None = None) -> list[ArtifactRecord]:
        return await asyncio.to_thread(self.sync.approved_artifacts, kind)

    async def leaderboard(self, limit: int = 100) -> list[LeaderboardEntry]:
        return await asyncio.to_thread(self.sync.leaderboard, limit)

    async def chain_id(self) -> str:
        return await asyncio.to_thread(self.sync.chain_id)

    async def tasks(self, round_number: int | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.tasks, round_number)

    async def tx(self, tx_hash: str) -> BroadcastResult | None:
        return await asyncio.to_thread(self.sync.tx, tx_hash)

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        return await asyncio.to_thread(self.sync.broadcast, raw)

    async def wait_for_tx(
        self, tx_hash: str, *, timeout_s: float = 30.0, poll_s: float = 0.2
    ) -> BroadcastResult:
        """Poll until the tx is in a block without blocking the event loop between polls."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = await self.tx(tx_hash)
            if found is not None:
                if found.code != 0:
                    raise TxRejected(found.code, found.log, tx_hash)
                return found
            if time.monotonic() >= deadline:
                raise ClientError(f"tx {tx_hash} not included within {timeout_s} s")
            await asyncio.sleep(poll_s)

    async def sign_and_broadcast(
        self, key: SigningKey, msgs: Sequence[Msg], **kw: Any
    ) -> BroadcastResult:
        return await asyncio.to_thread(lambda: self.sync.sign_and_broadcast(key, msgs, **kw))

    async def submit_gradient(self, key: SigningKey, **kw: Any) -> BroadcastResult:
        return await asyncio.to_thread(lambda: self.sync.submit_gradient(key, **kw))
