"""Key/value caches for continuous batching.

`SequenceKV` records one sequence's keys and values during its own prefill.
`BatchKV` (the engine's `kv_layout="dense"`; the default is the paged cache of
`r3mes.serve.paged_kv`) holds the running batch in preallocated buffers, one row per
sequence, left padded to a common length: a decode step writes one column in place instead
of concatenating the whole cache, but every row is as long as the longest. Sequences
join (`add`) and leave (`keep_rows`) between steps. Both subclass the model's `KVCache`,
so `BitNetForCausalLM.forward` uses them as is.

Buffer layout per layer: (rows_capacity, n_kv_heads, length_capacity, head_dim). Row `b`
holds its `lengths[b]` real positions in columns `length - lengths[b] .. length`.

Capacity follows what is live. Rows are exactly the running sequences: `reserve` makes
room for a group about to join, `keep_rows` and `trim` give rows back as sequences leave.
Columns grow by an eighth of what is needed (at least `MIN_HEADROOM`), never past
`max_length` (the engine's prompt-plus-completion limit), and shrink when the longest
sequences leave. The buffers never hold more than `buffer_limit`, which leaves room under
`max_bytes` for the one buffer a reallocation holds twice; `rectangle_bytes` is what the
engine uses to keep the batch it admits under that limit.
"""

from __future__ import annotations

import torch

from r3mes.model.kv_cache import KVCache
from r3mes.serve.errors import CacheBudgetExceeded, ServeError

MIN_HEADROOM = 4
"""Fewest spare columns added when the buffers grow (growth costs a full copy)."""
MASK_BYTES = torch.tensor([], dtype=torch.long).element_size()


class SequenceKV(KVCache):
    """A batch-1 cache that keeps every layer's full keys/values readable."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(num_layers)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().update(layer, keys, values)
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer], self.values[layer] = k, v
        return k, v


def kv_token_bytes(*, num_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one cached token: keys and values of every layer."""
    return num_layers * 2 * n_kv_heads * head_dim * dtype.itemsize


class BatchKV(KVCache):
    """Left-padded batched cache with in-place appends (see the module docstring)."""

    def __init__(
        self,
        num_layers: int,
        *,
        n_kv_heads: int,
        head_dim: int,
        max_rows: int,
        max_length: int,
        max_bytes: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        """`max_rows` sequences of at most `max_length` positions, in at most `max_bytes`
        (default: room for exactly that many)."""
        super().__init__(num_layers, max_length=max_length)
        if max_rows < 1 or max_length < 1:
            raise ServeError("a batched KV cache needs at least one row and one column")
        self._shape = (n_kv_heads, head_dim)
        self._dtype = dtype
        self._device = torch.device(device)
        self.max_rows = max_rows
        self.kv_bytes = kv_token_bytes(
            num_layers=num_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, dtype=dtype
        )
        """Bytes of one cached token's keys and values (all layers)."""
        self.cell_bytes = self.kv_bytes + MASK_BYTES
        """Buffer bytes per (row, column): keys, values and the attention mask."""
        # A reallocation swaps one K or V buffer at a time: 1 / (2 * layers) of the cells'
        # bytes (the mask is smaller) are held twice for a moment.
        buffers = 2 * num_layers
        if max_bytes is None:
            self.buffer_limit = max_rows * max_length * self.cell_bytes
            self.max_bytes = -(-self.buffer_limit * (buffers + 1) // buffers)
        else:
            self.max_bytes = max_bytes
            self.buffer_limit = max_bytes * buffers // (buffers + 1)
        """The most bytes the buffers hold between reallocations."""
        if self.buffer_limit < max_length * self.cell_bytes:
            raise ServeError(
                f"a KV cache budget of {self.max_bytes} bytes cannot hold one sequence of "
                f"{max_length} tokens ({max_length * self.cell_bytes} bytes, plus "
                f"{100 // buffers} % while the cache reallocates)"
            )
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self.rows = 0
        self.length = 0
        self.lengths: list[int] = []
        self.peak_nbytes = 0
        """The most bytes the buffers held at once, reallocations' overlap included."""
        self.peak_live_nbytes = 0
        """The most bytes of real tokens' keys and values cached at once."""
        self._rebuild(keep=[], start=0, shift=0, rows_cap=0, cols_cap=0)

    # ---- what the model and the scheduler read ---------------------------------------------

    @property
    def seq_length(self) -> int:
        return self.length

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, columns) the buffers have room for."""
        rows, columns = self._mask.shape
        return int(rows), int(columns)

    def attention_mask(self) -> torch.Tensor:
        """(B, length + 1): real tokens of each row plus the column the next step writes."""
        self._ensure(rows=self.rows, columns=self.length + 1)
        mask = self._mask[: self.rows, : self.length + 1].clone()
        mask[:, self.length] = 1
        return mask

    def position_ids(self) -> torch.Tensor:
        """(B, 1): the position of each row's next token."""
        return torch.tensor(self.lengths, dtype=torch.long, device=self._device).unsqueeze(1)

    def nbytes(self) -> int:
        """Bytes the buffers hold now (keys, values and mask)."""
        rows, columns = self.capacity
        return rows * columns * self.cell_bytes

    def live_nbytes(self) -> int:
        """Bytes of the keys and values of the real (unpadded) tokens cached now."""
        return sum(self.lengths) * self.kv_bytes

    def rectangle_bytes(self, rows: int, columns: int) -> int:
        """Buffer bytes for `rows` sequences left padded to `columns` positions, no headroom."""
        return rows * columns * self.cell_bytes

    def fits(self, rows: list[tuple[int, int]]) -> bool:
        """Whether sequences of (cached length, decode steps left) can all run to the end
        within the buffer limit.

        A row with `length` cached tokens and `left` decode steps to go is alive at step s
        while s <= left; the left-padded cache then needs alive(s) rows of
        max(length over alive) + s columns. Between two rows leaving the need only grows,
        so the peak is at some row's last step.
        """
        peak = 0
        for _, last in rows:
            alive = [length for length, left in rows if left >= last]
            peak = max(peak, self.rectangle_bytes(len(alive), max(alive) + last))
        return peak <= self.buffer_limit

    # ---- the decode step -------------------------------------------------------------------

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, H, 1, D) keys/values at column `length`; return the batch view."""
        if keys.shape[0] != self.rows or keys.shape[2] != 1:
            raise ServeError(
                f"batched cache holds {self.rows} rows and takes one token per step, "
                f"got {tuple(keys.shape)}"
            )
        end = self.length + 1
        self._ensure(rows=self.rows, columns=end)
        self._k[layer][: self.rows, :, self.length : end] = keys
        self._v[layer][: self.rows, :, self.length : end] = values
        return self._k[layer][: self.rows, :, :end], self._v[layer][: self.rows, :, :end]

    def advance(self) -> None:
        """Commit the column written by the step that just ran."""
        self._mask[: self.rows, self.length] = 1
        self.length += 1
        self.lengths = [n + 1 for n in self.lengths]
        self.peak_live_nbytes = max(self.peak_live_nbytes, self.live_nbytes())

    # ---- joining and leaving ---------------------------------------------------------------

    def reserve(self, rows: int) -> None:
        """Make room for `rows` rows in one reallocation (before a group joins with `add`)."""
        if rows > self.max_rows:
            raise ServeError(f"the batch holds at most {self.max_rows} rows, asked for {rows}")
        self._ensure(rows=rows, columns=self.length + 1)

    def add(self, seq: SequenceKV, *, row: int = 0, length: int | None = None) -> int:
        """Append row `row` of a finished prefill as a new last row; return its index.

        `length` is that row's real token count when the prefill was left padded.
        """
        total = seq.keys[0].shape[2]
        n = total if length is None else length
        if self.rows >= self.max_rows:
            raise ServeError(f"the batch already holds its {self.max_rows} rows")
        shift = max(0, n - self.length)
        self._ensure(rows=self.rows + 1, columns=self.length + shift + 1, shift=shift)
        new, start = self.rows, self.length - n
        for layer in range(self.num_layers):
            self._k[layer][new, :, start : self.length] = seq.keys[layer][row, :, total - n :]
            self._v[layer][new, :, start : self.length] = seq.values[layer][row, :, total - n :]
        self._mask[new].zero_()
        self._mask[new, start : self.length] = 1
        self.rows += 1
        self.lengths.append(n)
        self.peak_live_nbytes = max(self.peak_live_nbytes, self.live_nbytes())
        return new

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order), dropping the others and the memory they held.

        Shared left padding is trimmed, and the buffers shrink to the rows kept (and to
        their columns, once they hold far more than needed).
        """
        lengths = [self.lengths[r] for r in rows]
        if not rows:
            self._rebuild(keep=[], start=0, shift=0, rows_cap=0, cols_cap=0)
            self.rows, self.length, self.lengths = 0, 0, []
            return
        longest = max(lengths)
        cols_cap = self._fitted_columns(rows=len(rows), needed=longest + 1)
        self._rebuild(
            keep=rows, start=self.length - longest, shift=0, rows_cap=len(rows), cols_cap=cols_cap
        )
        self.rows, self.length, self.lengths = len(rows), longest, lengths

    def trim(self) -> None:
        """Give back rows reserved but not filled, and columns far beyond what is needed."""
        cap_rows, cap_cols = self.capacity
        if self.rows == 0:
            if cap_rows or cap_cols:
                self._rebuild(keep=[], start=0, shift=0, rows_cap=0, cols_cap=0)
            return
        cols_cap = self._fitted_columns(rows=self.rows, needed=self.length + 1)
        if cap_rows > self.rows or cols_cap != cap_cols:
            self._rebuild(
                keep=list(range(self.rows)),
                start=0,
                shift=0,
                rows_cap=self.rows,
                cols_cap=cols_cap,
            )

    # ---- buffers ---------------------------------------------------------------------------

    def _grown_columns(self, *, rows: int, needed: int) -> int:
        """Columns to allocate for `needed`: an eighth more, within max_length and the budget."""
        if self.rectangle_bytes(rows, needed) > self.buffer_limit:
            raise CacheBudgetExceeded(
                needed=self.rectangle_bytes(rows, needed), budget=self.buffer_limit
            )
        wanted = min(self.max_length or needed, needed + max(MIN_HEADROOM, needed // 8))
        affordable = self.buffer_limit // max(1, rows * self.cell_bytes)
        return max(needed, min(wanted, affordable))

    def _fitted_columns(self, *, rows: int, needed: int) -> int:
        """The current column capacity, or a smaller one once it is a quarter over the need."""
        cap = self.capacity[1]
        slack = max(MIN_HEADROOM, needed // 4)
        fits = self.rectangle_bytes(rows, cap) <= self.buffer_limit
        if needed <= cap <= needed + slack and fits:
            return cap
        return self._grown_columns(rows=rows, needed=needed)

    def _ensure(self, *, rows: int, columns: int, shift: int = 0) -> None:
        """Room for `rows` x `columns`, after moving every row `shift` columns right."""
        if self.max_length is not None and columns > self.max_length:
            raise ServeError(
                f"the batch would need {columns} positions; the limit is {self.max_length}"
            )
        cap_rows, cap_cols = self.capacity
        if shift == 0 and rows <= cap_rows and columns <= cap_cols:
            return
        rows_cap = max(rows, cap_rows)
        cols_cap = cap_cols
        if columns > cap_cols or self.rectangle_bytes(rows_cap, cap_cols) > self.buffer_limit:
            cols_cap = self._grown_columns(rows=rows_cap, needed=columns)
        self._rebuild(
            keep=list(range(self.rows)), start=0, shift=shift, rows_cap=rows_cap, cols_cap=cols_cap
        )
        self.length += shift

    def _rebuild(
        self, *, keep: list[int], start: int, shift: int, rows_cap: int, cols_cap: int
    ) -> None:
        """New buffers of (rows_cap, cols_cap): row i is old row keep[i], old column
        `start + j` lands in column `shift + j`. Layers are swapped one at a time, so the
        old and new caches overlap by at most one layer."""
        h, d = self._shape
        width = self.length - start
        old_bytes = self.nbytes()
        new_bytes = rows_cap * cols_cap * self.cell_bytes
        one_buffer = rows_cap * cols_cap * self.kv_bytes // (2 * self.num_layers)
        self.peak_nbytes = max(self.peak_nbytes, max(old_bytes, new_bytes) + one_buffer)
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        n = len(keep)
        fresh = not self._k
        shape = (rows_cap, h, cols_cap, d)
        for layer in range(self.num_layers):
            for bufs in (self._k, self._v):
                new = torch.zeros(shape, dtype=self._dtype, device=self._device)
                if fresh:
                    bufs.append(new)
                    continue
                if n and width:
                    new[:n, :, shift : shift + width] = bufs[layer][index, :, start : self.length]
                bufs[layer] = new  # the old layer is freed here
        mask = torch.zeros(rows_cap, cols_cap, dtype=torch.long)
        if n and width:
            mask[:n, shift : shift + width] = self._mask[index.cpu(), start : self.length]
        self._mask = mask
