"""Paged KV cache for continuous batching: fixed-size blocks, one block table per sequence.

Every layer's keys (and values) live in one pool tensor of (n_kv_heads, blocks,
BLOCK_TOKENS, head_dim). A sequence holds the blocks listed in its table, in order:
position p is slot p % BLOCK_TOKENS of block table[p // BLOCK_TOKENS]. A sequence takes a
new block only when it fills its last one, and its blocks go back to the free list the
moment it leaves, so the cache holds what is live plus at most one partly filled block per
sequence: no sequence pays for another one's length, as rows of a left-padded rectangle do
(`r3mes.serve.kv.BatchKV`).

The pool grows on demand (an eighth more than needed) up to `max_blocks`, the configured
budget less the one buffer a reallocation holds twice, and shrinks once it holds a quarter
more than is used (blocks in use past the new end move into free ones below it first).
`nbytes` counts the whole pool, free blocks included.

Attention (`attend`, decode steps only): the step's key/value of every sequence is written
into its slot, then each sequence's blocks are gathered into a (n_kv_heads, B, blocks x
BLOCK_TOKENS, head_dim) scratch and attended with a mask that hides the slots past each
sequence's length. The scratch is one layer's, freed before the next layer runs.
"""

from __future__ import annotations

import heapq

import torch
import torch.nn.functional as F

from r3mes.model.kv_cache import KVCache
from r3mes.serve.errors import CacheBudgetExceeded, ServeError
from r3mes.serve.kv import SequenceKV, kv_token_bytes

BLOCK_TOKENS = 16
"""Positions per block."""
MIN_SPARE_BLOCKS = 2
"""Fewest free blocks added when the pool grows (growth costs a full copy)."""


def blocks_for(tokens: int, block_tokens: int = BLOCK_TOKENS) -> int:
    """Blocks that hold `tokens` positions."""
    return -(-tokens // block_tokens)


class PagedKV(KVCache):
    """Block-table cache over a shared pool (see the module docstring)."""

    def __init__(
        self,
        num_layers: int,
        *,
        n_kv_heads: int,
        head_dim: int,
        max_rows: int,
        max_length: int,
        max_bytes: int | None = None,
        block_tokens: int = BLOCK_TOKENS,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        """`max_rows` sequences of at most `max_length` positions, in at most `max_bytes`
        (default: room for exactly that many)."""
        super().__init__(num_layers, max_length=max_length)
        if max_rows < 1 or max_length < 1 or block_tokens < 1:
            raise ServeError("a paged KV cache needs at least one row, position and block size")
        self._shape = (n_kv_heads, head_dim)
        self._dtype = dtype
        self._device = torch.device(device)
        self.max_rows = max_rows
        self.block_tokens = block_tokens
        self.kv_bytes = kv_token_bytes(
            num_layers=num_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, dtype=dtype
        )
        """Bytes of one cached token's keys and values (all layers)."""
        self.block_bytes = block_tokens * self.kv_bytes
        """Pool bytes per block (all layers, keys and values)."""
        buffers = 2 * num_layers  # a reallocation holds one of these twice for a moment
        ceiling = max_rows * blocks_for(max_length, block_tokens)
        if max_bytes is None:
            self.max_blocks = ceiling
            self.max_bytes = -(-self.max_blocks * self.block_bytes * (buffers + 1) // buffers)
        else:
            self.max_bytes = max_bytes
            self.max_blocks = min(ceiling, max_bytes * buffers // (buffers + 1) // self.block_bytes)
        self.buffer_limit = self.max_blocks * self.block_bytes
        """The most bytes the pool holds between reallocations."""
        if self.max_blocks < blocks_for(max_length, block_tokens):
            one = blocks_for(max_length, block_tokens) * self.block_bytes
            raise ServeError(
                f"a KV cache budget of {self.max_bytes} bytes cannot hold one sequence of "
                f"{max_length} tokens ({one} bytes in blocks of {block_tokens}, plus "
                f"{100 // buffers} % while the cache reallocates)"
            )
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._free: list[int] = []  # heap of free block ids below the pool's capacity
        self.tables: list[list[int]] = []
        """Per sequence (row), its blocks in position order."""
        self.lengths: list[int] = []
        """Per sequence, the positions cached."""
        self._step: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None
        self.peak_nbytes = 0
        """The most bytes the pool held at once, reallocations' overlap included."""
        self.peak_live_nbytes = 0
        """The most bytes of real tokens' keys and values cached at once."""
        self._resize(0, moves={})

    # ---- what the model and the scheduler read ---------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        """The longest sequence's cached positions."""
        return max(self.lengths, default=0)

    @property
    def seq_length(self) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        """Blocks in the pool, used or free."""
        return int(self._k[0].shape[1]) if self._k else 0

    @property
    def used_blocks(self) -> int:
        return sum(len(t) for t in self.tables)

    def attention_mask(self) -> None:
        """None: the paged cache masks by its own block tables (see `bias`)."""
        return None

    def position_ids(self) -> torch.Tensor:
        """(B, 1): the position of each row's next token."""
        return torch.tensor(self.lengths, dtype=torch.long, device=self._device).unsqueeze(1)

    def nbytes(self) -> int:
        """Bytes the pool holds now (every block, used or free)."""
        return self.capacity * self.block_bytes

    def live_nbytes(self) -> int:
        """Bytes of the keys and values of the tokens cached now."""
        return sum(self.lengths) * self.kv_bytes

    def fits(self, rows: list[tuple[int, int]]) -> bool:
        """Whether sequences of (cached length, decode steps left) can all run to the end
        within the pool's budget.

        At decode step s a sequence of length n writes position n + s - 1, so it holds
        blocks_for(n + s) blocks while s <= left. Between two sequences leaving the total
        only grows, so the peak is at some sequence's last step.
        """
        peak = 0
        for _, last in rows:
            need = sum(blocks_for(n + last, self.block_tokens) for n, left in rows if left >= last)
            peak = max(peak, need)
        return peak <= self.max_blocks

    # ---- the decode step -------------------------------------------------------------------

    def bias(
        self,
        attention_mask: torch.Tensor | None,
        *,
        batch: int,
        new: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Prepare one decode step: a block for every sequence whose next position starts
        one, the slots the step writes, the gather index and the (1, B, 1, S) mask."""
        if attention_mask is not None or new != 1 or batch != self.rows:
            raise ServeError(
                f"the paged cache decodes one token for each of its {self.rows} sequences "
                f"without an attention mask, got batch {batch} x {new} tokens"
            )
        bt = self.block_tokens
        if self.max_length is not None and self.length + 1 > self.max_length:
            raise ServeError(
                f"a sequence would need {self.length + 1} positions; the limit is {self.max_length}"
            )
        starting = [r for r, n in enumerate(self.lengths) if n // bt >= len(self.tables[r])]
        for row, block in zip(starting, self._allocate(len(starting)), strict=True):
            self.tables[row].append(block)
        width = max(len(t) for t in self.tables)
        gather = [t + [t[0]] * (width - len(t)) for t in self.tables]  # padding is masked
        index = torch.tensor(gather, dtype=torch.long).flatten()
        blocks = torch.tensor([t[n // bt] for t, n in zip(self.tables, self.lengths, strict=True)])
        slots = torch.tensor([n % bt for n in self.lengths])
        self._step = (index.to(device), blocks.to(device), slots.to(device), width * bt)
        positions = torch.arange(width * bt, device=device)[None, :]
        lengths = torch.tensor(self.lengths, device=device)[:, None]
        hidden = positions > lengths  # the new token sits at position `length`
        out = torch.zeros(hidden.shape, dtype=torch.float32, device=device)
        out = out.masked_fill(hidden, torch.finfo(torch.float32).min)
        return out[None, :, None, :]  # (1, B, 1, S)

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Write this step's (B, n_kv, 1, D) keys/values into their slots and attend
        (B, n_heads, 1, D) queries over each sequence's blocks; (B, 1, n_heads * D)."""
        if self._step is None or keys.shape[0] != self.rows or keys.shape[2] != 1:
            raise ServeError(
                f"paged cache: {tuple(keys.shape)} keys outside a prepared decode step "
                f"of {self.rows} sequences"
            )
        index, blocks, slots, width = self._step
        b, heads, _, dim = q.shape
        kv_heads = keys.shape[1]
        pool_k, pool_v = self._k[layer], self._v[layer]
        pool_k[:, blocks, slots] = keys[:, :, 0].transpose(0, 1)
        pool_v[:, blocks, slots] = values[:, :, 0].transpose(0, 1)
        k = pool_k.index_select(1, index).view(kv_heads, b, width, dim)
        v = pool_v.index_select(1, index).view(kv_heads, b, width, dim)
        groups = heads // kv_heads  # query head h reads key/value head h // groups
        qg = q.view(b, kv_heads, groups, dim).transpose(0, 1)  # (n_kv, B, groups, D)
        scores = torch.matmul(qg, k.transpose(2, 3)) * dim**-0.5  # (n_kv, B, groups, S)
        scores = scores + bias
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v)  # (n_kv, B, groups, D)
        return out.permute(1, 0, 2, 3).reshape(b, 1, heads * dim)

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise ServeError("the paged cache attends through `attend`, not dense `update`")

    def advance(self) -> None:
        """Commit the position written by the step that just ran."""
        self._step = None
        self.lengths = [n + 1 for n in self.lengths]
        self.peak_live_nbytes = max(self.peak_live_nbytes, self.live_nbytes())

    # ---- joining and leaving ---------------------------------------------------------------

    def reserve(self, rows: int) -> None:
        """Check that `rows` sequences may run together (blocks are taken as they fill)."""
        if rows > self.max_rows:
            raise ServeError(f"the batch holds at most {self.max_rows} rows, asked for {rows}")

    def add(self, seq: SequenceKV, *, row: int = 0, length: int | None = None) -> int:
        """Copy row `row` of a finished prefill into fresh blocks as a new last sequence;
        return its row. `length` is that row's real token count when the prefill was left
        padded."""
        total = seq.keys[0].shape[2]
        n = total if length is None else length
        if self.rows >= self.max_rows:
            raise ServeError(f"the batch already holds its {self.max_rows} rows")
        if n < 1 or (self.max_length is not None and n >= self.max_length):
            raise ServeError(f"a sequence of {n} tokens cannot join (limit {self.max_length})")
        table = self._allocate(blocks_for(n, self.block_tokens))
        bt = self.block_tokens
        flat = torch.tensor(
            [table[p // bt] * bt + p % bt for p in range(n)], dtype=torch.long, device=self._device
        )
        for layer in range(self.num_layers):
            for pool, src in ((self._k, seq.keys), (self._v, seq.values)):
                h, blocks, _, d = pool[layer].shape
                tokens = pool[layer].view(h, blocks * bt, d)
                tokens[:, flat] = src[layer][row, :, total - n :].to(self._dtype)
        self.tables.append(table)
        self.lengths.append(n)
        self.peak_live_nbytes = max(self.peak_live_nbytes, self.live_nbytes())
        return self.rows - 1

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order); the others' blocks go back to the pool, and the
        pool shrinks once it holds far more than is used."""
        kept = set(rows)
        for r, table in enumerate(self.tables):
            if r not in kept:
                for block in table:
                    heapq.heappush(self._free, block)
        self.tables = [self.tables[r] for r in rows]
        self.lengths = [self.lengths[r] for r in rows]
        self._step = None
        self.trim()

    def trim(self) -> None:
        """Shrink the pool to what is used plus an eighth, once it holds a quarter more
        (nothing at all once no sequence is left)."""
        used = self.used_blocks
        if used == 0:
            if not self.capacity:
                return
            target = 0
        elif self.capacity <= used + max(2 * MIN_SPARE_BLOCKS, used // 4):
            return
        else:
            target = min(self.max_blocks, used + max(MIN_SPARE_BLOCKS, used // 8))
        free_low = sorted(b for b in self._free if b < target)
        movers = sorted(b for t in self.tables for b in t if b >= target)
        moves = dict(zip(movers, free_low, strict=False))
        self.tables = [[moves.get(b, b) for b in t] for t in self.tables]
        self._resize(target, moves=moves)

    # ---- the pool --------------------------------------------------------------------------

    def _allocate(self, n: int) -> list[int]:
        """`n` free blocks, lowest ids first, growing the pool if it has too few."""
        if n > len(self._free):
            used = self.used_blocks
            need = used + n
            if need > self.max_blocks:
                raise CacheBudgetExceeded(
                    needed=need * self.block_bytes, budget=self.max_blocks * self.block_bytes
                )
            self._resize(min(self.max_blocks, need + max(MIN_SPARE_BLOCKS, need // 8)), moves={})
        return [heapq.heappop(self._free) for _ in range(n)]

    def _resize(self, blocks: int, *, moves: dict[int, int]) -> None:
        """New pool tensors of `blocks` blocks holding the old ones' first blocks, with
        block `old` copied to `new` for each of `moves` (blocks past the new end that are in
        use). Buffers are swapped one at a time: the old and new pools overlap by one."""
        h, d = self._shape
        old = self.capacity
        one_buffer = max(old, blocks) * self.block_bytes // (2 * self.num_layers)
        self.peak_nbytes = max(self.peak_nbytes, max(old, blocks) * self.block_bytes + one_buffer)
        keep = min(old, blocks)
        src = torch.tensor(list(moves), dtype=torch.long, device=self._device)
        dst = torch.tensor(list(moves.values()), dtype=torch.long, device=self._device)
        shape = (h, blocks, self.block_tokens, d)
        fresh = not self._k
        for layer in range(self.num_layers):
            for bufs in (self._k, self._v):
                new = torch.zeros(shape, dtype=self._dtype, device=self._device)
                if fresh:
                    bufs.append(new)
                    continue
                if keep:
                    new[:, :keep] = bufs[layer][:, :keep]
                if moves:
                    new[:, dst] = bufs[layer][:, src]
                bufs[layer] = new  # the old buffer is freed here
        in_use = {b for t in self.tables for b in t}
        self._free = [b for b in range(blocks) if b not in in_use]
        heapq.heapify(self._free)
