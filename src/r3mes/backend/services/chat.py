"""One paid chat request, start to end: check, limit, hold, forward, relay, capture.

    parse body -> rate limits (key and IP buckets) -> model known? -> Idempotency-Key claim
    + credit hold (one transaction) -> Gateway.open (fail-over before the first byte)
    -> answer (JSON, or a relayed stream) -> capture the reported usage, release the rest,
    record the request (one transaction) -> give back unused rate-limit tokens

The two transactions are synchronous jobs run by `Database.transact`: on SQLite, concurrent
requests' jobs share one group commit on the database's thread (`db/writer.py`); the hold is
committed before the request is forwarded.

Every response, errors included, carries the six `x-ratelimit-*` headers once the limits
were checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.background import BackgroundTask
from starlette.responses import Response

from r3mes.backend.db.chat import ChatIdempotency
from r3mes.backend.db.engine import Database
from r3mes.backend.errors import (
    BackendError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
)
from r3mes.backend.services import billing, holds
from r3mes.backend.services.billing import Usage
from r3mes.backend.services.gateway import Gateway, Opened, Relay, RelayResponse, Tally
from r3mes.backend.services.limits import Bucket, Limiter, rate_headers
from r3mes.backend.services.metrics import GatewayMetrics
from r3mes.backend.services.nodes import ModelRef, NodeDirectory
from r3mes.backend.settings import BackendSettings

log = logging.getLogger(__name__)

Kind = Literal["chat", "text"]
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "text": "/v1/completions"}


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(frozen=True)
class Caller:
    """Who pays and how they are limited (from the authenticated principal)."""

    account_id: int
    key_id: int | None
    tier: str
    ip: str


SETTLE_ATTEMPTS = 3
SETTLE_RETRY_S = 0.1
"""Settling a request's bill retries a transaction the database refused (busy, connection
lost) this many times, waiting this long times the attempt number in between."""
SETTLE_MARGIN_S = 60.0
"""Hold lifetime beyond the longest a request can run (see `ChatService.hold_ttl_s`)."""


@dataclass(frozen=True)
class ChatRequestBody:
    """What the gateway needs from an OpenAI request body (the node validates the rest)."""

    doc: dict[str, Any]
    model: ModelRef
    stream: bool
    wants_usage: bool
    max_tokens: int
    prompt_bound: int

    @classmethod
    def parse(cls, raw: bytes, *, kind: Kind, settings: BackendSettings) -> ChatRequestBody:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest("the body is not valid JSON") from exc
        except RecursionError as exc:  # "[[[[..." nests deeper than the parser recurses
            raise InvalidRequest("the body's JSON nests too deeply") from exc
        if not isinstance(doc, dict):
            raise InvalidRequest("the body must be a JSON object")
        if b"\\ud" in raw or b"\\uD" in raw:  # escapes may name half a surrogate pair
            try:
                json.dumps(doc, ensure_ascii=False).encode()
            except UnicodeEncodeError as exc:
                raise InvalidRequest(
                    "the body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)"
                ) from exc
        model = doc.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= 160:
            raise InvalidRequest("model must be a model name (see GET /v1/models)")
        value = doc.get("messages" if kind == "chat" else "prompt")
        if kind == "chat" and not (
            isinstance(value, list) and value and all(isinstance(m, dict) for m in value)
        ):
            raise InvalidRequest("messages must be a non-empty list of message objects")
        if kind == "text" and not isinstance(value, str | list):
            raise InvalidRequest("prompt must be a string (or a list of one string)")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("stream must be true or false")
        options = doc.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        asked_field = "max_completion_tokens" if "max_completion_tokens" in doc else "max_tokens"
        asked = doc.get(asked_field)
        if asked is not None and (
            not isinstance(asked, int) or isinstance(asked, bool) or asked < 1
        ):
            raise InvalidRequest(f"{asked_field} must be a positive integer")
        max_tokens = min(asked or settings.chat_default_max_tokens, settings.chat_max_tokens_cap)
        forwarded = dict(doc)
        forwarded.pop("max_completion_tokens", None)
        forwarded["max_tokens"] = max_tokens
        if stream:
            # usage on every chunk: a stream cut short pays its exact prompt and the
            # tokens delivered (vLLM's option; R3MES serving nodes answer it too)
            forwarded["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        ref = ModelRef.parse(model)
        forwarded["model"] = ref.name
        return cls(
            doc=forwarded,
            model=ref,
            stream=stream,
            wants_usage=wants_usage,
            max_tokens=max_tokens,
            prompt_bound=billing.prompt_token_bound(doc),
        )


@dataclass
class ChatService:
    """Everything a chat request needs; one per app (in `runtime.services["chat"]`)."""

    settings: BackendSettings
    db: Database
    directory: NodeDirectory
    gateway: Gateway
    limiter: Limiter
    metrics: GatewayMetrics

    @property
    def hold_ttl_s(self) -> float:
        """How long a chat request's hold lives: `hold_ttl_s`, but never shorter than the
        longest request can run (every attempt's wait for a first byte, the whole answer,
        and a minute to settle). A hold the sweeper released first could not be captured:
        the request would be served for free."""
        st = self.settings
        longest = st.chat_attempts * st.chat_first_byte_timeout_s + st.chat_upstream_timeout_s
        return max(float(st.hold_ttl_s), longest + SETTLE_MARGIN_S)

    async def complete(
        self, *, kind: Kind, raw: bytes, caller: Caller, idempotency_key: str | None
    ) -> Response:
        body = ChatRequestBody.parse(raw, kind=kind, settings=self.settings)
        buckets = self._buckets(caller, body.prompt_bound + body.max_tokens)
        decision = await self.limiter.take(buckets)
        headers = rate_headers(decision.levels[0], decision.levels[1])
        if not decision.allowed:
            scope = "ip" if (decision.short or "").startswith("ip:") else "key"
            self.metrics.rate_limited.labels(scope=scope).inc()
            raise _rate_limited(decision.retry_after_s, scope, headers)
        try:
            return await self._run(kind, body, caller, buckets, idempotency_key, headers)
        except BackendError as exc:
            await self.limiter.refund(buckets)
            exc.headers = {**headers, **exc.headers}
            raise

    def _buckets(self, caller: Caller, tokens: int) -> list[Bucket]:
        tier = self.settings.rate_tiers.get(caller.tier) or self.settings.rate_tiers["default"]
        who = f"key:{caller.key_id}" if caller.key_id is not None else f"acct:{caller.account_id}"
        ip = self.settings.ip_rate
        return [
            Bucket(f"{who}:req", tier.requests_per_min, 1),
            Bucket(f"{who}:tok", tier.tokens_per_min, tokens),
            Bucket(f"ip:{caller.ip}:req", ip.requests_per_min, 1),
            Bucket(f"ip:{caller.ip}:tok", ip.tokens_per_min, tokens),
        ]

    def _check_model(self, model: ModelRef) -> None:
        if self.directory.known_model(model):
            return
        if not any(n.probed_ok for n in self.directory.nodes.values()):
            raise Unavailable(
                "no serving node is online now; retry shortly", headers={"retry-after": "5"}
            )
        raise ModelNotFound(
            f"the model {str(model)!r} does not exist on any live serving node; "
            "GET /v1/models lists what is served"
        )

    async def _run(
        self,
        kind: Kind,
        body: ChatRequestBody,
        caller: Caller,
        buckets: list[Bucket],
        idempotency_key: str | None,
        headers: dict[str, str],
    ) -> Response:
        self._check_model(body.model)
        request_id = uuid.uuid4().hex
        price = billing.price_of(self.settings, str(body.model))
        most = billing.cost(price, Usage(body.prompt_bound, body.max_tokens))
        key = idempotency_key if not body.stream else None
        digest = billing.request_hash(billing.canonical_json(body.doc).encode()) if key else ""
        if key is not None and not 0 < len(key) <= 200:
            raise InvalidRequest("Idempotency-Key must be 1 to 200 characters")
        ttl_s = self.hold_ttl_s

        def claim_and_hold(conn: Connection) -> StoredAnswer | holds.Hold:
            if key is not None:
                stored = _claim(conn, caller.account_id, key, digest, abandoned_after_s=ttl_s)
                if stored is not None:
                    return stored
            return holds.hold_in(
                conn,
                account_id=caller.account_id,
                amount=max(1, most),
                idempotency_key=f"chat:{request_id}:hold",
                ttl_s=ttl_s,
                ref=f"chat:{request_id}",
            )

        hold = await self.db.transact(claim_and_hold, key=caller.account_id)
        if isinstance(hold, StoredAnswer):
            return _replay(hold, headers)
        self.metrics.credits.labels(stage="held").inc(hold.amount)
        bill = Bill(self, body, caller, request_id, hold.id, hold.amount, buckets, key)
        payload = json.dumps(body.doc, separators=(",", ":")).encode()
        try:
            opened = await self.gateway.open(
                path=PATHS[kind], payload=payload, model=body.model, stream=body.stream
            )
        except BaseException as exc:
            await bill.settle(None, None, "error", error=exc)
            raise
        headers = {**headers, **opened.headers, "x-request-id": request_id}
        if body.stream:
            return RelayResponse(
                Relay(
                    self.gateway,
                    opened,
                    client_wants_usage=body.wants_usage,
                    deadline_s=self.settings.chat_upstream_timeout_s,
                    settle=lambda tally, status: bill.settle(opened, tally, status),
                ),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        return await bill.answer(opened, headers)


def _rate_limited(wait_s: float, scope: str, headers: dict[str, str]) -> RateLimited:
    if wait_s == float("inf"):
        message = "this request needs more tokens than your per-minute limit allows"
        retry = 60
    else:
        message = f"rate limit reached for this {'address' if scope == 'ip' else 'key'}"
        retry = max(1, int(wait_s + 0.999))
    return RateLimited(
        f"{message}; retry after {retry} s", headers={**headers, "retry-after": str(retry)}
    )


@dataclass
class Bill:
    """The money side of one request: settle once, with what was delivered."""

    service: ChatService
    body: ChatRequestBody
    caller: Caller
    request_id: str
    hold_id: int
    held: int
    buckets: list[Bucket]
    idempotency_key: str | None
    started: float = 0.0
    settled: bool = False

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    async def answer(self, opened: Opened, headers: dict[str, str]) -> Response:
        """A non-streamed answer: bill the reported usage, store it for idempotent retries."""
        svc = self.service
        doc = json.loads(opened.first)
        usage = billing.usage_from(doc) or Usage(0, 0)
        svc.gateway.finished(opened, failed=None)
        await opened.response.aclose()
        await self.settle(opened, Tally(usage=usage, done=True), "ok", body=opened.first)
        return Response(
            opened.first,
            media_type="application/json",
            headers=headers,
            background=BackgroundTask(self.refund_tokens, usage),
        )

    async def refund_tokens(self, usage: Usage) -> None:
        unused = max(0, self.body.prompt_bound + self.body.max_tokens - usage.total)
        refund = [
            Bucket(b.name, b.capacity, unused if b.name.endswith(":tok") else 0)
            for b in self.buckets
        ]
        try:
            await self.service.limiter.refund(refund)
        except Exception as exc:
            log.warning("could not return unused rate-limit tokens: %s", type(exc).__name__)

    async def settle(
        self,
        opened: Opened | None,
        tally: Tally | None,
        status: str,
        *,
        body: bytes | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Capture what was delivered (release the rest) and record the request, once."""
        if self.settled:
            return
        self.settled = True
        svc = self.service
        model = opened.model if opened is not None else str(self.body.model)
        usage = tally.delivered() if tally is not None else Usage(0, 0)
        price = billing.price_of(svc.settings, str(self.body.model))
        charge = min(self.held, billing.cost(price, usage)) if opened is not None else 0
        node = opened.node.operator if opened is not None else None
        latency_ms = int((time.monotonic() - self.started) * 1000)
        ref = f"chat:{self.request_id}"
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                await self._write_settlement(
                    opened, ref, node, model, status, usage, charge, latency_ms, body
                )
                break
            except DBAPIError as exc:
                # A busy or briefly lost database: the transaction committed nothing, and
                # capture/release are idempotent by key, so trying again is safe. Giving up
                # here would leave the hold to expire: the request would be free.
                if isinstance(exc, IntegrityError) or attempt == SETTLE_ATTEMPTS:
                    log.exception("settling chat request %s failed (the hold expires)", ref)
                    return
                log.warning(
                    "settling chat request %s: database error (%s); retrying",
                    ref,
                    type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                )
                await asyncio.sleep(SETTLE_RETRY_S * attempt)
            except Exception:
                log.exception("settling chat request %s failed (the hold expires on its own)", ref)
                return
        self._observe(opened, model, status, usage, charge, latency_ms)
        if body is None and error is None and tally is not None:
            await self.refund_tokens(usage)

    async def _write_settlement(
        self,
        opened: Opened | None,
        ref: str,
        node: str | None,
        model: str,
        status: str,
        usage: Usage,
        charge: int,
        latency_ms: int,
        body: bytes | None,
    ) -> None:
        """One transaction: capture (or release) the hold, the request's row, the claim."""
        account_id, key = self.caller.account_id, self.idempotency_key

        def settlement(conn: Connection) -> None:
            if opened is not None:
                holds.capture_in(
                    conn,
                    hold_id=self.hold_id,
                    amount=charge,
                    idempotency_key=f"{ref}:capture",
                    node=node,
                    ref=ref,
                )
            else:
                holds.release_in(conn, hold_id=self.hold_id, idempotency_key=f"{ref}:release")
            billing.record_in(
                conn,
                request_id=self.request_id,
                account_id=account_id,
                key_id=self.caller.key_id,
                model=model,
                node=node,
                status=status,
                usage=usage,
                credits=charge,
                latency_ms=latency_ms,
            )
            if key is not None:
                _finish_claim(conn, account_id, key, body)

        await self.service.db.transact(settlement, key=account_id)

    def _observe(
        self,
        opened: Opened | None,
        model: str,
        status: str,
        usage: Usage,
        charge: int,
        latency_ms: int,
    ) -> None:
        metrics = self.service.metrics
        node_label = opened.node.key if opened is not None else "none"
        metrics.requests.labels(model=model, node=node_label, status=status).inc()
        metrics.credits.labels(stage="captured").inc(charge)
        metrics.credits.labels(stage="released").inc(self.held - charge)
        metrics.tokens.labels(model=model, kind="prompt").inc(usage.prompt_tokens)
        metrics.tokens.labels(model=model, kind="completion").inc(usage.completion_tokens)
        if opened is not None:
            metrics.ttft.labels(model=model).observe(opened.first_byte_s)
        metrics.latency.labels(model=model).observe(latency_ms / 1000)


@dataclass(frozen=True)
class StoredAnswer:
    """The stored answer of a finished request with the same Idempotency-Key."""

    status_code: int
    body: str


def _claim(
    conn: Connection, account_id: int, key: str, digest: str, *, abandoned_after_s: float
) -> StoredAnswer | None:
    """Claim `key` for this request; a finished earlier request with it is returned.

    A claim still unanswered after `abandoned_after_s` (longer than any request runs) was
    left by a backend that died mid-request: this request takes it over, else the key
    would answer "still running" forever."""
    t = ChatIdempotency
    now = datetime.now(UTC)
    insert_of = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    claimed = conn.scalar(
        insert_of(t)
        .values(
            account_id=account_id,
            key=key,
            request_hash=digest,
            status_code=None,
            body="",
            headers="{}",
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "key"])
        .returning(t.id)
    )
    if claimed is not None:
        return None
    found = conn.execute(
        select(t.id, t.request_hash, t.status_code, t.body).where(
            t.account_id == account_id, t.key == key
        )
    ).one_or_none()
    if found is None:  # claimed and given up (deleted) by a request that just ended
        raise Conflict("a request with this Idempotency-Key is still running; retry when it ends")
    if found.status_code is None:
        taken = conn.execute(
            update(t)
            .where(
                t.id == found.id,
                t.status_code.is_(None),
                t.created_at < now - timedelta(seconds=abandoned_after_s),
            )
            .values(request_hash=digest, created_at=now)
        )
        if taken.rowcount == 1:
            return None
    if found.request_hash != digest:
        raise Conflict("this Idempotency-Key was used with a different request body")
    if found.status_code is None:
        raise Conflict("a request with this Idempotency-Key is still running; retry when it ends")
    return StoredAnswer(int(found.status_code), str(found.body))


def _finish_claim(conn: Connection, account_id: int, key: str, body: bytes | None) -> None:
    where = (ChatIdempotency.account_id == account_id, ChatIdempotency.key == key)
    if body is None:
        conn.execute(delete(ChatIdempotency).where(*where))
    else:
        conn.execute(
            update(ChatIdempotency).where(*where).values(status_code=200, body=body.decode())
        )


def _replay(stored: StoredAnswer, headers: dict[str, str]) -> Response:
    return Response(
        stored.body.encode(),
        status_code=stored.status_code or 200,
        media_type="application/json",
        headers={**headers, "idempotent-replayed": "true"},
    )
