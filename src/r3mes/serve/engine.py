"""`ServingEngine`: one base model, many LoRA adapters, continuous batching on a thread.

The engine owns the model. Callers `submit` a request with a sink for its events and get a
`RequestHandle` back; the engine thread admits requests between decode steps, decodes all
running sequences in one forward pass per step, and pushes token and finish events into
each request's sink. Nothing here blocks an event loop: the asyncio side wraps the sink
with `loop.call_soon_threadsafe` (see `r3mes.serve.api.streaming`).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from r3mes.model.modeling import BitNetForCausalLM
from r3mes.serve.adapters import AdapterCache, AdapterEntry, AdapterLoader
from r3mes.serve.errors import (
    AdapterNotFound,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
)
from r3mes.serve.scheduler import KVLayout, Pending, Scheduler
from r3mes.serve.types import GenerationRequest, RequestHandle, Sink

log = logging.getLogger(__name__)

RESERVED_AUTO = "auto"
"""The `model` value that asks the semantic router; never an adapter name."""


class TextTokenizer(Protocol):
    """What the engine needs from `r3mes.model.tokenizer.Tokenizer`."""

    @property
    def eos_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class EngineConfig:
    """Limits of one serving engine."""

    max_batch_size: int = 16
    """Most sequences decoded together in one step."""
    max_loras: int = 4
    """Most distinct adapters in the model (and so in one batch) at once."""
    max_lora_rank: int = 64
    """Largest adapter rank accepted (slots are preallocated at this rank)."""
    max_cpu_loras: int = 16
    """Most adapters whose weights stay loaded in host memory (LRU)."""
    max_waiting: int = 256
    """Most queued requests; more are refused with EngineOverloaded (HTTP 429)."""
    max_queue_wait_s: float = 30.0
    """Longest a request waits for a batch slot before it is refused (HTTP 429)."""
    size_priority_s_per_token: float = 0.1
    """Fairness: a request of n tokens queues as if it arrived n times this later, so short
    requests pass long ones queued up to that long before them."""
    kv_cache_mb: int = 1024
    """KV-cache memory budget of the running batch (MiB); requests wait (then get 429)
    rather than grow the cache past it. Never more than max_batch_size x max_model_len
    tokens is allocated, whatever the budget."""
    max_prefills_per_step: int = 4
    """Most new requests prefilled between two decode steps (bounds decode stalls)."""
    max_model_len: int | None = None
    """Prompt plus completion limit; defaults to the model's max_position_embeddings."""
    kv_layout: KVLayout = "paged"
    """KV-cache layout: "paged" (blocks of 16 positions per sequence, memory follows the
    live tokens) or "dense" (one left-padded rectangle, rows as long as the longest)."""

    def __post_init__(self) -> None:
        names = ("max_batch_size", "max_loras", "max_lora_rank", "max_cpu_loras", "max_waiting")
        for name in names:
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be at least 1", param=name)
        if self.max_prefills_per_step < 1:
            raise InvalidRequest("max_prefills_per_step must be at least 1")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise InvalidRequest("max_model_len must be at least 2", param="max_model_len")
        if self.kv_layout not in ("paged", "dense"):
            raise InvalidRequest("kv_layout must be 'paged' or 'dense'", param="kv_layout")
        if self.kv_cache_mb < 1:
            raise InvalidRequest("kv_cache_mb must be at least 1", param="kv_cache_mb")
        if not self.max_queue_wait_s > 0:
            raise InvalidRequest("max_queue_wait_s must be positive", param="max_queue_wait_s")
        if not self.size_priority_s_per_token >= 0:
            raise InvalidRequest(
                "size_priority_s_per_token must be zero or more", param="size_priority_s_per_token"
            )


@dataclass(frozen=True)
class EngineMemory:
    """What the engine holds besides the model (bytes; read from other threads: estimates)."""

    kv_peak: int
    """The most the KV cache held at once (reallocations' overlap included)."""
    adapter_cache: int
    """Adapter weights in the host cache (the LoRA slots refer to these, no copy)."""
    lora_batch: int
    """LoRA weights laid out for the current batch (`r3mes.serve.lora_slots`)."""


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    active_adapters: int
    resident_adapters: int
    cached_adapters: int
    tokens_generated: int


class ServingEngine:
    """Multi-LoRA continuous-batching engine over one frozen `BitNetForCausalLM`."""

    def __init__(
        self,
        model: BitNetForCausalLM,
        tokenizer: TextTokenizer,
        *,
        model_name: str,
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.model = model.eval()
        limit = model.config.max_position_embeddings
        self.max_model_len = min(self.config.max_model_len or limit, limit)
        self.adapters = AdapterCache(max_cpu_loras=self.config.max_cpu_loras)
        eos = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
        self._scheduler = Scheduler(
            model,
            adapters=self.adapters,
            decode=tokenizer.decode,
            eos_ids=frozenset(eos),
            max_batch_size=self.config.max_batch_size,
            max_loras=self.config.max_loras,
            max_lora_rank=self.config.max_lora_rank,
            max_model_len=self.max_model_len,
            max_prefills_per_step=self.config.max_prefills_per_step,
            kv_cache_bytes=self.config.kv_cache_mb * 2**20,
            max_queue_wait_s=self.config.max_queue_wait_s,
            size_priority_s_per_token=self.config.size_priority_s_per_token,
            kv_layout=self.config.kv_layout,
        )
        slots = self._scheduler.slots
        self.adapters.check = lambda adapter: slots.check(adapter.state, adapter.config)
        self._inbox: queue.Queue[Pending | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="r3mes-serve", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still queued or running finish with an error."""
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ServingEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- requests --------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> tuple[int, ...]:
        """Tokenise a prompt, with BOS first when the tokenizer has one."""
        ids = self.tokenizer.encode(text)
        bos = self.tokenizer.bos_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return tuple(ids)

    def submit(self, request: GenerationRequest, sink: Sink) -> RequestHandle:
        """Queue `request`; its events go to `sink` (called on the engine thread)."""
        if self._stopping.is_set() or not self.alive:
            raise EngineClosed()
        n = len(request.prompt_ids)
        if n == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if n >= self.max_model_len:
            raise InvalidRequest(
                f"the prompt has {n} tokens; this model takes at most {self.max_model_len - 1}",
                param="prompt",
            )
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt_ids):
            raise InvalidRequest(f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
        entry = self._entry(request.adapter) if request.adapter is not None else None
        sched = self._scheduler
        if self._inbox.qsize() + len(sched.waiting) >= self.config.max_waiting:
            raise EngineOverloaded(
                f"the server queue is full ({self.config.max_waiting} waiting requests)",
                retry_after_s=sched.retry_after_s(),
            )
        handle = RequestHandle(f"req-{next(self._ids)}")
        pending = Pending(handle=handle, request=request, entry=entry, sink=sink)
        pending.rank = sched.rank(request, pending.submitted)
        self._inbox.put(pending)
        return handle

    def _entry(self, name: str) -> AdapterEntry:
        try:
            return self.adapters.entry(name)
        except AdapterNotFound as exc:
            raise self.model_not_found(name, router=False) from exc

    def model_not_found(self, name: str, *, router: bool) -> ModelNotFound:
        """The error for a request naming `name`, listing what this engine serves."""
        return ModelNotFound(
            name, base=self.model_name, adapters=self.adapters.names(), router=router
        )

    # ---- adapters --------------------------------------------------------------------------

    def load_adapter(self, name: str, directory: Path) -> AdapterEntry:
        """Load (or hot-replace) adapter `name` from a PEFT directory; no restart needed.

        Requests already decoding keep the version they started with; new requests get
        this one. Blocks while reading the files, so call it off the event loop.
        """
        self._check_name(name)
        return self.adapters.register_dir(name, directory)

    def load_adapter_from(
        self, name: str, loader: AdapterLoader, *, origin: str = "loader"
    ) -> AdapterEntry:
        """Like `load_adapter`, with the weights coming from `loader` (e.g. the registry)."""
        self._check_name(name)
        return self.adapters.register(name, loader=loader, origin=origin)

    def _check_name(self, name: str) -> None:
        if name in (self.model_name, RESERVED_AUTO):
            raise InvalidRequest(
                f"adapter name {name!r} is reserved (the base model / the router); pick another",
                param="lora_name",
            )

    def unload_adapter(self, name: str) -> AdapterEntry:
        """Stop serving `name`; requests already using it finish first."""
        return self.adapters.unregister(name)

    def stats(self) -> EngineStats:
        sched = self._scheduler
        return EngineStats(
            waiting=self._inbox.qsize() + len(sched.waiting),
            running=len(sched.running),
            active_adapters=sched.active_adapters(),
            resident_adapters=len(sched.resident),
            cached_adapters=self.adapters.cached_count(),
            tokens_generated=sched.tokens_generated,
        )

    def memory(self) -> EngineMemory:
        sched = self._scheduler
        return EngineMemory(
            kv_peak=sched.kv.peak_nbytes,
            adapter_cache=self.adapters.cached_nbytes(),
            lora_batch=sched.slots.stacked_nbytes(),
        )

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        log.info("serving engine started model=%s", self.model_name)
        with torch.inference_mode():  # every tensor the engine makes stays inference-only
            self._loop()
        log.info("serving engine stopped")

    def _loop(self) -> None:
        sched = self._scheduler
        while not self._stopping.is_set():
            idle = not sched.running
            if not self._drain(block=idle and not sched.waiting):
                break
            try:
                sched.step()
                sched.collect_stale()
            except Exception:  # keep serving: fail this batch, not the server
                log.exception("engine step failed")  # details stay in the server log
                sched.fail_running("internal error in the serving engine; see the server log")
        sched.fail_all("the serving engine stopped")
        self._fail_inbox()

    def _drain(self, *, block: bool) -> bool:
        """Move submissions into the scheduler; False once asked to stop."""
        timeout: float | None = 0.05 if block else None
        while True:
            try:
                item = self._inbox.get(block=timeout is not None, timeout=timeout)
            except queue.Empty:
                return True
            if item is None:
                return False
            self._scheduler.waiting.append(item)
            timeout = None

    def _fail_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._scheduler.waiting.append(item)
                self._scheduler.fail_all("the serving engine stopped")
