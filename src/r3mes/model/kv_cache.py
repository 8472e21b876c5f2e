"""KVCache: per-layer keys and values of the tokens already seen, for incremental decoding.

Batched sequences of different lengths are left padded; the caller passes the running
`attention_mask` (B, past + new) to the model and the padded slots are masked out.

The model asks its cache for two things: `bias`, the additive attention mask of one
forward pass (once per pass), and `attend`, one layer's attention given that layer's new
queries, keys and values. The dense cache here appends and attends over (B, H, T, D); a
cache with another layout (the serving engine's paged cache) overrides both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r3mes.model.errors import GenerationError


def build_mask(
    attention_mask: torch.Tensor | None, *, batch: int, new: int, past: int, device: torch.device
) -> torch.Tensor:
    """Additive (B, 1, T_new, past + T_new) mask: causal, and padded keys excluded."""
    total = past + new
    query_pos = torch.arange(past, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask.expand(batch, 1, new, total)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Grouped-query attention over dense keys/values.

    q (B, n_heads, T, D), k/v (B, n_kv_heads, S, D), bias (B, 1, T, S) additive;
    returns (B, T, n_heads * D). Query head h reads key/value head h // (n_heads / n_kv).
    """
    b, heads, t, dim = q.shape
    groups = heads // k.shape[1]
    if groups > 1:  # (B, n_kv, S, D) -> (B, n_heads, S, D)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * dim**-0.5  # (B, H, T, S)
    scores = scores + bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).transpose(1, 2).reshape(b, t, -1)


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

    def bias(
        self,
        attention_mask: torch.Tensor | None,
        *,
        batch: int,
        new: int,
        device: torch.device,
    ) -> torch.Tensor:
        """The additive mask for a forward pass of `new` tokens (called once per pass,
        before any layer): causal over the cached positions plus the new ones."""
        return build_mask(attention_mask, batch=batch, new=new, past=self.seq_length, device=device)

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Cache this pass's keys/values (B, n_kv, T_new, D) for `layer` and attend with
        queries `q` (B, n_heads, T_new, D) over every cached position; (B, T_new, n_heads*D)."""
        k, v = self.update(layer, keys, values)
        return attention(q, k, v, bias)

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
