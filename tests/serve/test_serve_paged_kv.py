"""The paged KV cache decodes exactly like each sequence alone and like the dense batch,
holds blocks in proportion to the live tokens (not to the longest one), and stays within
its budget."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
import torch

from r3mes.model.kv_cache import KVCache
from r3mes.model.tiny import make_tiny_model
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.errors import CacheBudgetExceeded, InvalidRequest, ServeError
from r3mes.serve.kv import BatchKV, SequenceKV
from r3mes.serve.paged_kv import PagedKV, blocks_for
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, TokenEvent

PROMPTS = [[1, 5, 9], [1, 7, 7, 7, 7, 7, 3, 4], [1, 20], [1, 30, 31, 32, 33]]
EngineFactory = Callable[..., ServingEngine]


def paged(*, max_rows: int = 4, max_length: int = 128, max_bytes: int | None = None) -> PagedKV:
    """A 2-layer cache in blocks of 4 positions (tiny model shapes)."""
    return PagedKV(
        2,
        n_kv_heads=2,
        head_dim=8,
        max_rows=max_rows,
        max_length=max_length,
        max_bytes=max_bytes,
        block_tokens=4,
    )


def alone(model: torch.nn.Module, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Greedy logits per step with the model's own dense KVCache, batch 1."""
    cache = KVCache(2)
    logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
    out = [logits]
    for _ in range(steps):
        logits = model(torch.tensor([[int(logits.argmax())]]), kv_cache=cache)[0, -1]
        out.append(logits)
    return out


def prefill(model: torch.nn.Module, kv: PagedKV, prompt: list[int]) -> int:
    cache = SequenceKV(2)
    logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
    kv.add(cache)
    return int(logits.argmax())


def step(model: torch.nn.Module, kv: PagedKV, tokens: list[int]) -> torch.Tensor:
    logits: torch.Tensor = model(
        torch.tensor([[t] for t in tokens]),
        position_ids=kv.position_ids(),
        kv_cache=kv,
    )[:, -1]
    kv.advance()
    return logits


@torch.inference_mode()
def test_join_leave_and_growth_match_single_sequence_decoding() -> None:
    model = make_tiny_model(0)
    steps = 70  # 18 blocks of 4 for the longest: the pool grows many times
    refs = [alone(model, p, steps) for p in PROMPTS]
    kv = paged()
    live = [0, 1]  # rows hold these prompts; 2 and 3 join later, 0 leaves early
    tokens = [prefill(model, kv, PROMPTS[i]) for i in live]
    done = dict.fromkeys(live, 0)
    for n in range(1, steps):
        if n == 5:
            live.append(2)
            tokens.append(prefill(model, kv, PROMPTS[2]))
            done[2] = 0
        if n == 9:
            keep = [r for r, i in enumerate(live) if i != 0]
            kv.keep_rows(keep)
            tokens = [tokens[r] for r in keep]
            live = [live[r] for r in keep]
        if n == 12:
            live.append(3)
            tokens.append(prefill(model, kv, PROMPTS[3]))
            done[3] = 0
        logits = step(model, kv, tokens)
        for row, i in enumerate(live):
            done[i] += 1
            ref = refs[i][done[i]]
            assert torch.allclose(logits[row], ref, atol=1e-4), (n, i)
            assert int(logits[row].argmax()) == int(ref.argmax())
        tokens = [int(x) for x in logits.argmax(-1)]
    assert kv.rows == 3
    assert [len(t) for t in kv.tables] == [blocks_for(n, 4) for n in kv.lengths]


def wait_until(read: Callable[[], int], *, expect: int, timeout: float = 60.0) -> bool:
    """Poll `read` (the engine thread frees the cache just after the last finish event)
    until it returns `expect` or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while read() != expect:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run_engine(engine: ServingEngine, jobs: list[tuple[tuple[int, ...], int]]) -> list[list[int]]:
    """Greedy token ids of (prompt, max_tokens) jobs submitted together."""
    out: list[list[int]] = [[] for _ in jobs]
    finished = threading.Semaphore(0)

    def sink(i: int) -> Callable[[EngineEvent], None]:
        def on(event: EngineEvent) -> None:
            if isinstance(event, TokenEvent):
                out[i].append(event.token_id)
            elif isinstance(event, FinishEvent):
                assert event.reason == "length", event
                finished.release()

        return on

    for i, (prompt, max_tokens) in enumerate(jobs):
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        engine.submit(GenerationRequest(prompt_ids=prompt, adapter=None, params=params), sink(i))
    for _ in jobs:
        assert finished.acquire(timeout=120), "a request did not finish"
    return out


def test_the_engine_decodes_the_same_greedy_tokens_paged_and_dense(
    engine_factory: EngineFactory,
) -> None:
    """Sequences of different ages share the batch (they join as rows free up and leave at
    different lengths); every token must equal the dense left-padded batch's, with and
    without adapters."""
    rng = random.Random(3)
    jobs = [
        (tuple(rng.randrange(3, 250) for _ in range(rng.randint(2, 40))), rng.randint(2, 60))
        for _ in range(12)
    ]
    results = {}
    for layout in ("paged", "dense"):
        engine = engine_factory(n_adapters=0, max_batch_size=4, kv_layout=layout)
        results[layout] = run_engine(engine, jobs)
        cache = engine._scheduler.kv
        assert wait_until(cache.nbytes, expect=0)  # all finished: nothing held
    assert results["paged"] == results["dense"]
    assert [len(t) for t in results["paged"]] == [m for _, m in jobs]


def fake_prefill(length: int, fill: float, layers: int = 2) -> SequenceKV:
    """A prefill cache of `length` positions whose every key/value equals `fill`."""
    seq = SequenceKV(layers)
    for layer in range(layers):
        block = torch.full((1, 2, length, 8), fill)
        seq.update(layer, block, block.clone())
    return seq


def fake_step(kv: PagedKV, values: list[float]) -> None:
    """One decode step writing `values[row]` as every key/value of each row."""
    kv.bias(None, batch=kv.rows, new=1, device=torch.device("cpu"))
    for layer in range(kv.num_layers):
        new = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 2, 1, 8)
        kv.attend(layer, torch.zeros(kv.rows, 4, 1, 8), new, new.clone(), torch.zeros(1))
    kv.advance()


def contents(kv: PagedKV, row: int, layer: int = 1) -> list[float]:
    """What row `row` holds at each of its positions, read through its block table."""
    bt = kv.block_tokens
    return [
        float(kv._k[layer][0, kv.tables[row][p // bt], p % bt, 0]) for p in range(kv.lengths[row])
    ]


def test_random_joins_steps_and_leaves_keep_contents_and_follow_the_live_blocks() -> None:
    rng = random.Random(7)
    kv = paged(max_rows=8, max_length=300)
    expected: list[list[float]] = []
    next_fill = 1.0
    for _ in range(400):
        op = rng.random()
        if op < 0.2 and kv.rows < 8:
            n = rng.randint(1, 60)
            kv.reserve(kv.rows + 1)
            kv.add(fake_prefill(n, next_fill))
            expected.append([next_fill] * n)
            next_fill += 1
        elif op < 0.35 and kv.rows:
            keep = sorted(rng.sample(range(kv.rows), rng.randint(0, kv.rows - 1)))
            kv.keep_rows(keep)
            expected = [expected[r] for r in keep]
        elif kv.rows and kv.length + 1 < 300:
            values = [next_fill + r / 100 for r in range(kv.rows)]
            fake_step(kv, values)
            for row, v in enumerate(values):
                expected[row].append(v)
            next_fill += 1
        assert kv.lengths == [len(e) for e in expected]
        used = sum(blocks_for(n, 4) for n in kv.lengths)
        assert kv.used_blocks == used  # one partly filled block per sequence at most
        assert len({b for t in kv.tables for b in t}) == used  # no block shared
        assert kv.capacity <= used + max(4, used // 4)  # freed blocks go back
        for row, values in enumerate(expected):
            assert contents(kv, row) == pytest.approx(values)  # through grows and compactions
    kv.keep_rows([])
    assert kv.nbytes() == 0 and kv.rows == 0


def test_memory_follows_the_live_tokens_not_the_longest_sequence() -> None:
    """One old long sequence and fifteen young short ones: the dense rectangle pads every
    row to the long one, the pool holds each sequence's own blocks."""
    dense = BatchKV(4, n_kv_heads=2, head_dim=8, max_rows=16, max_length=2048)
    pool = PagedKV(4, n_kv_heads=2, head_dim=8, max_rows=16, max_length=2048)
    for kv in (dense, pool):
        kv.add(fake_prefill(400, 1.0, layers=4))
        for i in range(15):
            kv.add(fake_prefill(12, float(i), layers=4))
    live = (400 + 15 * 12) * pool.kv_bytes
    assert pool.live_nbytes() == dense.live_nbytes() == live
    assert dense.peak_nbytes > 10 * live  # 16 rows of 400+ columns
    assert pool.peak_nbytes <= 2 * live  # 25 + 15 blocks of 16, an eighth spare, one overlap
    pool.keep_rows(list(range(1, 16)))  # the long one leaves: its 25 blocks are freed
    assert pool.used_blocks == 15 and pool.nbytes() <= 2 * pool.live_nbytes()


def test_the_pool_never_allocates_past_its_budget() -> None:
    one = paged(max_rows=4, max_length=64)
    budget = 30 * one.block_bytes * 5 // 4  # 30 blocks of 4, a quarter for the overlap
    kv = paged(max_rows=4, max_length=64, max_bytes=budget)
    assert kv.max_blocks == 30
    assert kv.fits([(40, 16)] * 2) and not kv.fits([(40, 16)] * 3)  # 14 blocks each at the end
    for _ in range(3):
        kv.add(fake_prefill(36, 1.0))  # 9 blocks each
    for _ in range(4):
        fake_step(kv, [1.0, 2.0, 3.0])  # 40 positions: 10 blocks each
    assert kv.used_blocks == 30 and kv.capacity == 30
    with pytest.raises(CacheBudgetExceeded, match="budget"):
        fake_step(kv, [1.0, 2.0, 3.0])  # position 41 needs three more blocks
    assert kv.peak_nbytes <= budget
    with pytest.raises(ServeError, match="cannot hold one sequence"):
        paged(max_rows=4, max_length=64, max_bytes=10 * one.block_bytes)


def test_bad_use_is_a_typed_error() -> None:
    kv = paged()
    kv.add(fake_prefill(5, 1.0))
    cpu = torch.device("cpu")
    cpu_bias = torch.zeros(1, 1, 1, 16)
    with pytest.raises(ServeError, match="one token"):
        kv.bias(None, batch=1, new=2, device=cpu)  # prefill goes through SequenceKV
    with pytest.raises(ServeError, match="one token"):
        kv.bias(torch.ones(1, 6), batch=1, new=1, device=cpu)
    with pytest.raises(ServeError, match="prepared"):
        kv.attend(
            0, torch.zeros(1, 4, 1, 8), torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), cpu_bias
        )
    with pytest.raises(ServeError, match="attend"):
        kv.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    with pytest.raises(ServeError, match="cannot join"):
        kv.add(fake_prefill(128, 1.0))  # no room left for a generated token
    with pytest.raises(ServeError, match="at most 4 rows"):
        kv.reserve(5)


def test_an_unknown_kv_layout_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="kv_layout"):
        EngineConfig(kv_layout="ragged")  # type: ignore[arg-type]
    assert EngineConfig().kv_layout == "paged"  # the default serves from blocks
