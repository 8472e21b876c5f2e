"""KVCache: per-layer keys and values of the tokens already seen, for incremental decoding.

Batched sequences of different lengths are left padded; the caller passes the running
`attention_mask` (B, past + new) to the model and the padded slots are masked out.
"""

from __future__ import annotations

import torch

from r3mes.model.errors import GenerationError


class KVCache:
    """Keys/values per layer, each (B, n_kv_heads, T_seen, head_dim)."""

    def __init__(self, num_layers: int, *, max_length: int | None = None) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise GenerationError(f"a KV cache needs at least one layer, got {num_layers!r}")
        self.num_layers = num_layers
        self.max_length = max_length
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def seq_length(self) -> int:
        """Number of positions cached (same for every layer once a forward has run)."""
        first = self._keys[0]
        return 0 if first is None else int(first.shape[2])

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values (B, H, T_new, D) for `layer`; return the full ones."""
        old_k, old_v = self._keys[layer], self._values[layer]
        if old_k is not None and old_v is not None:
            if old_k.shape[0] != keys.shape[0]:
                raise GenerationError(
                    f"KV cache holds batch {old_k.shape[0]}, got batch {keys.shape[0]}"
                )
            keys = torch.cat([old_k, keys], dim=2)
            values = torch.cat([old_v, values], dim=2)
        if self.max_length is not None and keys.shape[2] > self.max_length:
            raise GenerationError(
                f"sequence of {keys.shape[2]} tokens exceeds the cache limit {self.max_length}"
            )
        self._keys[layer], self._values[layer] = keys, values
        return keys, values

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (LongTensor), e.g. after some sequences finished."""
        for i in range(self.num_layers):
            k, v = self._keys[i], self._values[i]
            if k is not None and v is not None:
                self._keys[i], self._values[i] = k[rows], v[rows]

    def nbytes(self) -> int:
        """Bytes held by all cached keys and values."""
        total = 0
        for tensor in (*self._keys, *self._values):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
        return total
