"""One engine step at a time: admit waiting requests, prefill them, decode the batch.

All of this runs on the engine thread and is the only code that touches the model.
Every decode step is one forward pass over all running sequences, whatever adapter each
uses: the LoRA term is gathered per row from slot-indexed weights (`LoraSlots`). At most
`max_loras` adapters live in the model's slots at once; a request whose adapter cannot get
a slot waits until a running adapter goes idle.

Admission order is earliest virtual deadline first: a request of n generated tokens ranks
as if it had arrived `n * size_priority_s_per_token` seconds later, so a short request
passes long ones queued shortly before it, and no request waits forever behind shorter
ones. A request is admitted only if the batch, with it, can never need more KV cache than
the budget: the worst case (every sequence running to its max_tokens) is projected before
it joins. A request still waiting after `max_queue_wait_s` finishes as "rejected" (HTTP 429).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from r3mes.model.modeling import BitNetForCausalLM
from r3mes.serve.adapters import AdapterCache, AdapterEntry
from r3mes.serve.errors import ServeError
from r3mes.serve.kv import BatchKV, SequenceKV
from r3mes.serve.lora_slots import LoraSlots
from r3mes.serve.paged_kv import PagedKV
from r3mes.serve.sampling import IncrementalText, choose_token
from r3mes.serve.types import (
    EngineEvent,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    Sink,
    TokenEvent,
)

log = logging.getLogger(__name__)

Placement = Literal["ready", "wait", "failed"]
KVLayout = Literal["paged", "dense"]


@dataclass
class Pending:
    """A submitted request, resolved to an adapter version, not yet running."""

    handle: RequestHandle
    request: GenerationRequest
    entry: AdapterEntry | None
    sink: Sink
    submitted: float = field(default_factory=time.monotonic)
    rank: float = 0.0
    """Admission order, smallest first: the arrival time pushed back by the request's size."""


@dataclass
class Running:
    """A sequence in the batch."""

    pending: Pending
    generator: torch.Generator
    text: IncrementalText
    next_token: int
    generated: int = 1

    @property
    def key(self) -> str | None:
        entry = self.pending.entry
        return entry.model_key if entry is not None else None


class Scheduler:
    """The running batch, the waiting line and the adapters resident in the model."""

    def __init__(
        self,
        model: BitNetForCausalLM,
        *,
        adapters: AdapterCache,
        decode: Callable[[list[int]], str],
        eos_ids: frozenset[int],
        max_batch_size: int,
        max_loras: int,
        max_lora_rank: int,
        max_model_len: int,
        max_prefills_per_step: int,
        kv_cache_bytes: int | None = None,
        max_queue_wait_s: float = 30.0,
        size_priority_s_per_token: float = 0.1,
        kv_layout: KVLayout = "paged",
    ) -> None:
        """`kv_cache_bytes` caps the batch's KV cache (None: room for max_batch_size
        sequences of max_model_len tokens), laid out as `kv_layout` (`PagedKV` blocks or
        a left-padded `BatchKV` rectangle); see the module docstring for the queue."""
        self.model = model
        self.adapters = adapters
        self._decode_text = decode
        self._eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.max_prefills_per_step = max_prefills_per_step
        self.max_queue_wait_s = max_queue_wait_s
        self.size_priority_s_per_token = size_priority_s_per_token
        cfg = model.config
        self.device = model.model.embed_tokens.weight.device
        layout = PagedKV if kv_layout == "paged" else BatchKV
        self.kv: PagedKV | BatchKV = layout(
            cfg.num_hidden_layers,
            n_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            max_rows=max_batch_size,
            max_length=max_model_len,
            max_bytes=kv_cache_bytes,
            dtype=torch.float32,  # activations are float32 whatever the embedding is held in
            device=self.device,
        )
        self.waiting: deque[Pending] = deque()
        self.admitting: list[Pending] = []  # popped from `waiting`, being prefilled
        self.running: list[Running] = []
        self.slots = LoraSlots(model, slots=max_loras, max_rank=max_lora_rank)
        self.resident: dict[str, int] = {}  # model key -> slot, least recently used first
        self.tokens_generated = 0
        self.step_s = 0.01  # moving average of a decode step's wall time, for Retry-After

    # ---- sizes and estimates (read from other threads too: copies, no locks) ----------------

    def limit(self, request: GenerationRequest) -> int:
        """Most tokens `request` can generate: its max_tokens, within the model's length."""
        return min(request.params.max_tokens, self.max_model_len - len(request.prompt_ids))

    def rank(self, request: GenerationRequest, submitted: float) -> float:
        """Admission key of a request submitted at `submitted` (monotonic seconds)."""
        return submitted + self.limit(request) * self.size_priority_s_per_token

    def retry_after_s(self) -> int:
        """Seconds until the work now running and queued is likely done (1 to 600)."""
        running = [self.limit(s.pending.request) - s.generated for s in list(self.running)]
        queued = [self.limit(p.request) for p in list(self.waiting)]
        steps = (sum(running) + sum(queued)) / self.max_batch_size
        return int(min(600, max(1, math.ceil(steps * self.step_s))))

    # ---- one step -------------------------------------------------------------------------

    def step(self) -> None:
        """Drop cancelled work, admit what fits, then decode one token for every sequence.

        Call under `torch.inference_mode()` (the engine thread does).
        """
        self._drop_cancelled()
        self._admit()
        if self.running:
            self._decode_step()

    def fail_running(self, message: str) -> None:
        """Finish the batch (and any prefill in flight) with an error after a model failure."""
        for seq in self.running:
            self._finish(seq.pending, "error", seq.generated, error=message)
        for pending in self.admitting:
            self._finish(pending, "error", 0, error=message)
        self.running.clear()
        self.admitting = []
        self.kv.keep_rows([])

    def fail_all(self, message: str) -> None:
        """Finish every request, running or waiting, with an error (engine shutdown)."""
        self.fail_running(message)
        for pending in self.waiting:
            self._finish(pending, "error", 0, error=message)
        self.waiting.clear()

    def active_adapters(self) -> int:
        return len({s.key for s in self.running if s.key is not None})

    # ---- admission and prefill -------------------------------------------------------------

    def _admit(self) -> None:
        self._expire_waiting(time.monotonic())
        admitted: list[Pending] = []
        still_waiting: deque[Pending] = deque()
        free_rows = self.max_batch_size - len(self.running)
        held = False  # once the budget holds a request back, nothing ranked after it passes
        for pending in sorted(self.waiting, key=lambda p: p.rank):
            # a one-token request finishes at its prefill and never takes a batch row
            row = self.limit(pending.request) > 1
            full = len(admitted) >= self.max_prefills_per_step or (row and free_rows < 1)
            if held or full:
                still_waiting.append(pending)
                continue
            if not self._fits(pending, admitted):
                held = True
                still_waiting.append(pending)
                continue
            verdict = self._place(pending, admitted)
            if verdict == "wait":
                still_waiting.append(pending)
            elif verdict == "ready":
                admitted.append(pending)
                free_rows -= row
        self.waiting = still_waiting
        if admitted:
            self.admitting = admitted
            self._prefill(admitted)
            self.admitting = []

    def _fits(self, pending: Pending, admitted: list[Pending]) -> bool:
        """Whether the batch plus `admitted` and `pending` stays within the KV budget even
        if every sequence runs to its limit (the cache projects its own peak)."""
        rows = [
            (self.kv.lengths[i], self.limit(s.pending.request) - s.generated)
            for i, s in enumerate(self.running)
        ]
        for p in (*admitted, pending):
            left = self.limit(p.request) - 1  # the prefill generates the first token
            if left > 0:  # a one-token request never enters the batch cache
                rows.append((len(p.request.prompt_ids), left))
        return self.kv.fits(rows)

    def _expire_waiting(self, now: float) -> None:
        """Refuse requests that waited longer than max_queue_wait_s (the client retries)."""
        expired = [p for p in self.waiting if now - p.submitted > self.max_queue_wait_s]
        if not expired:
            return
        retry = self.retry_after_s()
        for pending in expired:
            self.waiting.remove(pending)
            waited = now - pending.submitted
            message = (
                f"the server is busy: the request waited {waited:.1f} s without a free batch "
                f"slot (limit {self.max_queue_wait_s:g} s)"
            )
            self._finish(pending, "rejected", 0, error=message, retry_after_s=retry)

    def _place(self, pending: Pending, admitted: list[Pending]) -> Placement:
        """Make sure the request's adapter is in the model, or say why not."""
        entry = pending.entry
        if entry is None:
            return "ready"
        if entry.model_key in self.resident:
            self.resident[entry.model_key] = self.resident.pop(entry.model_key)  # mark recent
            return "ready"
        if len(self.resident) >= self.max_loras and not self._evict_idle(admitted):
            return "wait"
        key = entry.model_key
        slot = min(set(range(1, self.max_loras + 1)) - set(self.resident.values()))
        try:
            weights = self.adapters.weights(entry)
            self.slots.load(slot, weights.state, weights.config)
        except Exception as exc:  # any failure must leave no half adapter in the slot
            self.slots.clear(slot)
            self._finish(pending, "error", 0, error=f"cannot load adapter {entry.name!r}: {exc}")
            log.warning("adapter %s failed to load into the model: %s", entry.name, exc)
            return "failed"
        self.resident[key] = slot
        log.info("adapter in model name=%s key=%s slot=%d", entry.name, key, slot)
        return "ready"

    def _evict_idle(self, admitted: list[Pending]) -> bool:
        busy = {s.key for s in self.running}
        busy |= {p.entry.model_key for p in admitted if p.entry is not None}
        for key in list(self.resident):  # oldest first
            if key not in busy:
                self._remove_from_model(key)
                return True
        return False

    def collect_stale(self) -> None:
        """Take adapter versions out of the model once nothing uses them and they were replaced."""
        if not self.resident:
            return
        busy = {s.key for s in self.running} | {
            p.entry.model_key for p in self.waiting if p.entry is not None
        }
        current = set()
        for name in self.adapters.names():
            try:
                current.add(self.adapters.entry(name).model_key)
            except ServeError:
                continue
        for key in list(self.resident):
            if key not in busy and key not in current:
                self._remove_from_model(key)

    def _remove_from_model(self, key: str) -> None:
        slot = self.resident.pop(key, None)
        if slot is not None:
            self.slots.clear(slot)

    def _prefill(self, batch: list[Pending]) -> None:
        """Run the prompts of `batch` together (left padded) and take their first tokens."""
        lengths = [len(p.request.prompt_ids) for p in batch]
        width = max(lengths)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - lengths[row] :] = torch.tensor(p.request.prompt_ids)
            mask[row, width - lengths[row] :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = SequenceKV(self.model.config.num_hidden_layers)
        self.kv.reserve(len(self.running) + sum(self.limit(p.request) > 1 for p in batch))
        self._select_rows([p.entry.model_key if p.entry else None for p in batch])
        logits = self.model(
            ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            kv_cache=cache,
            last_only=True,  # only the next token is sampled: no (B, T, V) logits
        )[:, -1]  # (B, V)
        for row, pending in enumerate(batch):
            params = pending.request.params
            seq = Running(
                pending=pending,
                generator=params.make_generator(),
                text=IncrementalText(self._decode_text, params.stop),
                next_token=0,
                generated=0,
            )
            if self._accept(seq, choose_token(logits[row], params, seq.generator)):
                self.kv.add(cache, row=row, length=lengths[row])
                self.running.append(seq)
        self.kv.trim()  # rows reserved for requests that finished at their first token

    # ---- decoding --------------------------------------------------------------------------

    def _decode_step(self) -> None:
        started = time.monotonic()
        tokens = torch.tensor(
            [[s.next_token] for s in self.running], dtype=torch.long, device=self.device
        )
        self._select_rows([s.key for s in self.running])
        mask = self.kv.attention_mask()  # None for the paged cache: it masks by block tables
        logits = self.model(
            tokens,
            attention_mask=mask.to(self.device) if mask is not None else None,
            position_ids=self.kv.position_ids(),
            kv_cache=self.kv,
        )[:, -1]  # (B, V)
        self.kv.advance()
        keep = []
        for row, seq in enumerate(self.running):
            params = seq.pending.request.params
            if self._accept(seq, choose_token(logits[row], params, seq.generator)):
                keep.append(row)
        if len(keep) != len(self.running):
            self.running = [self.running[r] for r in keep]
            self.kv.keep_rows(keep)
        self.step_s = 0.9 * self.step_s + 0.1 * (time.monotonic() - started)

    def _select_rows(self, keys: list[str | None]) -> None:
        """Per-row adapter slots for the next forward (0: the base model)."""
        self.slots.select([self.resident[k] if k is not None else 0 for k in keys])

    def _accept(self, seq: Running, token: int) -> bool:
        """Record a sampled token; emit text; return False if the sequence just finished."""
        params = seq.pending.request.params
        seq.generated += 1
        self.tokens_generated += 1
        prompt_len = len(seq.pending.request.prompt_ids)
        if (token in self._eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return self._done(seq, "stop")
        self._emit(seq.pending, TokenEvent(token_id=token, text=seq.text.add(token)))
        if seq.text.stopped:
            return self._done(seq, "stop")
        if seq.generated >= params.max_tokens or prompt_len + seq.generated >= self.max_model_len:
            return self._done(seq, "length")
        seq.next_token = token
        return True

    def _done(self, seq: Running, reason: FinishReason) -> bool:
        self._finish(seq.pending, reason, seq.generated, text=seq.text.flush())
        return False

    def _drop_cancelled(self) -> None:
        keep = [r for r, s in enumerate(self.running) if not s.pending.handle.cancelled]
        if len(keep) != len(self.running):
            for seq in self.running:
                if seq.pending.handle.cancelled:
                    self._finish(seq.pending, "cancelled", seq.generated)
            self.running = [self.running[r] for r in keep]
            self.kv.keep_rows(keep)
        for pending in [p for p in self.waiting if p.handle.cancelled]:
            self.waiting.remove(pending)
            self._finish(pending, "cancelled", 0)

    def _finish(
        self,
        pending: Pending,
        reason: FinishReason,
        generated: int,
        *,
        text: str = "",
        error: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        event = FinishEvent(
            reason=reason,
            prompt_tokens=len(pending.request.prompt_ids),
            completion_tokens=generated,
            text=text,
            error=error,
            retry_after_s=retry_after_s,
        )
        self._emit(pending, event)

    def _emit(self, pending: Pending, event: EngineEvent) -> None:
        try:
            pending.sink(event)
        except Exception as exc:  # a dead consumer (closed loop) cancels its request
            log.debug("request %s sink failed (%s); cancelling", pending.handle.id, exc)
            pending.handle.cancel()
