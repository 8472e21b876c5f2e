"""Key/value caches for continuous batching.

`SequenceKV` records one sequence's keys and values during its own prefill.
`BatchKV` holds the running batch in preallocated buffers, one row per sequence, left
padded to a common length: a decode step writes one column in place instead of
concatenating the whole cache. Sequences join (`add`) and leave (`keep_rows`) between
steps. Both subclass the model's `KVCache`, so `BitNetForCausalLM.forward` uses them as is.

Buffer layout per layer: (rows_capacity, n_kv_heads, length_capacity, head_dim). Row `b`
holds its `lengths[b]` real positions in columns `length - lengths[b] .. length`.
"""

from __future__ import annotations

import torch

from r3mes.model.kv_cache import KVCache
from r3mes.serve.errors import ServeError


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


class BatchKV(KVCache):
    """Left-padded batched cache with in-place appends (see the module docstring)."""

    def __init__(
        self,
        num_layers: int,
        *,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_layers)
        self._shape = (n_kv_heads, head_dim)
        self._dtype = dtype
        self._device = torch.device(device)
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self.rows = 0
        self.length = 0
        self.lengths: list[int] = []
        self._allocate(rows=4, columns=64)

    @property
    def seq_length(self) -> int:
        return self.length

    def attention_mask(self) -> torch.Tensor:
        """(B, length + 1): real tokens of each row plus the column the next step writes."""
        self._ensure(rows=self.rows, columns=self.length + 1)
        mask = self._mask[: self.rows, : self.length + 1].clone()
        mask[:, self.length] = 1
        return mask

    def position_ids(self) -> torch.Tensor:
        """(B, 1): the position of each row's next token."""
        return torch.tensor(self.lengths, dtype=torch.long, device=self._device).unsqueeze(1)

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
        self._k[layer][: self.rows, :, self.length : end] = keys
        self._v[layer][: self.rows, :, self.length : end] = values
        return self._k[layer][: self.rows, :, :end], self._v[layer][: self.rows, :, :end]

    def advance(self) -> None:
        """Commit the column written by the step that just ran."""
        self._mask[: self.rows, self.length] = 1
        self.length += 1
        self.lengths = [n + 1 for n in self.lengths]

    def add(self, seq: SequenceKV, *, row: int = 0, length: int | None = None) -> int:
        """Append row `row` of a finished prefill as a new last row; return its index.

        `length` is that row's real token count when the prefill was left padded.
        """
        total = seq.keys[0].shape[2]
        n = total if length is None else length
        if n > self.length:
            self._shift_right(n - self.length)
        self._ensure(rows=self.rows + 1, columns=self.length + 1)
        new, start = self.rows, self.length - n
        for layer in range(self.num_layers):
            self._k[layer][new, :, start : self.length] = seq.keys[layer][row, :, total - n :]
            self._v[layer][new, :, start : self.length] = seq.values[layer][row, :, total - n :]
        self._mask[new].zero_()
        self._mask[new, start : self.length] = 1
        self.rows += 1
        self.lengths.append(n)
        return new

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order), dropping the others; trims shared padding."""
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        for layer in range(self.num_layers):
            self._k[layer][: len(rows)] = self._k[layer][index]
            self._v[layer][: len(rows)] = self._v[layer][index]
        self._mask[: len(rows)] = self._mask[index.cpu()]
        self._mask[len(rows) :] = 0
        self.lengths = [self.lengths[r] for r in rows]
        self.rows = len(rows)
        if self.rows == 0:
            self.length = 0
            return
        slack = self.length - max(self.lengths)
        if slack > 0:
            self._shift_left(slack)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._k, *self._v))

    def _allocate(self, *, rows: int, columns: int) -> None:
        h, d = self._shape
        old_k, old_v, old_mask = self._k, self._v, self._mask
        shape = (rows, h, columns, d)
        self._k = [self._zeros(shape) for _ in range(self.num_layers)]
        self._v = [self._zeros(shape) for _ in range(self.num_layers)]
        self._mask = torch.zeros(rows, columns, dtype=torch.long)
        if old_k:
            r, c = self.rows, self.length
            for layer in range(self.num_layers):
                self._k[layer][:r, :, :c] = old_k[layer][:r, :, :c]
                self._v[layer][:r, :, :c] = old_v[layer][:r, :, :c]
            self._mask[:r, :c] = old_mask[:r, :c]

    def _zeros(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self._dtype, device=self._device)

    def _ensure(self, *, rows: int, columns: int) -> None:
        cap_rows, cap_cols = self._mask.shape
        if rows <= cap_rows and columns <= cap_cols:
            return
        self._allocate(rows=max(rows, cap_rows), columns=max(columns, 2 * cap_cols))

    def _shift_right(self, by: int) -> None:
        """Add `by` padding columns on the left of every row."""
        self._ensure(rows=self.rows, columns=self.length + by + 1)
        r, c = self.rows, self.length
        for buf in (*self._k, *self._v):
            buf[:r, :, by : by + c] = buf[:r, :, :c].clone()
            buf[:r, :, :by] = 0
        self._mask[:r, by : by + c] = self._mask[:r, :c].clone()
        self._mask[:r, :by] = 0
        self.length += by

    def _shift_left(self, by: int) -> None:
        """Drop `by` leading columns that are padding in every row."""
        r, c = self.rows, self.length
        for buf in (*self._k, *self._v):
            buf[:r, :, : c - by] = buf[:r, :, by:c].clone()
        self._mask[:r, : c - by] = self._mask[:r, by:c].clone()
        self._mask[:r, c - by :] = 0
        self.length -= by
