"""BitNet b1.58 causal LM, layer for layer as HF transformers' `BitNetForCausalLM`.

Llama-shaped decoder (RMSNorm, RoPE, GQA) whose projections are `BitLinear`, with BitNet's
extra sub-norms: `attn_sub_norm` before `o_proj` and `ffn_sub_norm` before `down_proj`, and
a ReLU^2 gated MLP. Embeddings, norms and the LM head stay unquantized. Parameter names
match HF's so checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from r3mes.model.bitlinear import BitLinear
from r3mes.model.config import BitNetConfig
from r3mes.model.errors import ModelError
from r3mes.model.kernels import head as head_kernel
from r3mes.model.kv_cache import KVCache, attention, build_mask


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (as HF's `BitNetRMSNorm`)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_tables(
    config: BitNetConfig, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, T, head_dim) for `position_ids` (B, T)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)).to(
        position_ids.device
    )
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by position; cos/sin are (B, T, D)."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


class BitNetAttention(nn.Module):
    """Grouped-query self-attention with ternary projections and a sub-norm before o_proj."""

    def __init__(self, config: BitNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = BitLinear(config.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = BitLinear(config.hidden_size, self.n_kv * self.head_dim)
        self.v_proj = BitLinear(config.hidden_size, self.n_kv * self.head_dim)
        self.o_proj = BitLinear(self.n_heads * self.head_dim, config.hidden_size)
        self.attn_sub_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv_cache is not None:
            out = kv_cache.attend(self.layer_idx, q, k, v, mask)  # (B, T, C)
        else:
            out = attention(q, k, v, mask)
        return self.o_proj(self.attn_sub_norm(out))  # type: ignore[no-any-return]


class BitNetMLP(nn.Module):
    """Gated MLP: down(sub_norm(relu(gate(x))^2 * up(x)))."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.gate_proj = BitLinear(config.hidden_size, config.intermediate_size)
        self.up_proj = BitLinear(config.hidden_size, config.intermediate_size)
        self.down_proj = BitLinear(config.intermediate_size, config.hidden_size)
        self.ffn_sub_norm = RMSNorm(config.intermediate_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.gate_proj(x)).square() * self.up_proj(x)
        return self.down_proj(self.ffn_sub_norm(hidden))  # type: ignore[no-any-return]


class BitNetDecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm MLP block."""

    def __init__(self, config: BitNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = BitNetAttention(config, layer_idx)
        self.mlp = BitNetMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope=rope, mask=mask, kv_cache=kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))  # type: ignore[no-any-return]


class BitNetModel(nn.Module):
    """Embedding, decoder stack and final norm (HF's `model.` prefix)."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [BitNetDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class BitNetForCausalLM(nn.Module):
    """BitNet b1.58 decoder-only language model returning float32 logits."""

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BitNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.tie_head()
        self.gradient_checkpointing = False
        """Recompute each decoder layer in the backward instead of keeping its activations
        (training without a KV cache only); same gradients, bit for bit, less memory."""

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, BitLinear) and module.weight is not None:
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def bit_linears(self) -> list[tuple[str, BitLinear]]:
        """Every ternary projection with its HF module name."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BitLinear)]

    def freeze_backbone(self) -> None:
        """Pack every BitLinear at 2 bits and freeze embeddings, norms and head."""
        for _, module in self.bit_linears():
            module.freeze()
        for name, param in self.named_parameters():
            if ".lora_" not in name:
                param.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) float32 for `input_ids` (B, T), continuing `kv_cache` if given.

        `attention_mask` (B, past + T) marks real tokens with 1 and padding with 0; with left
        padding, pass `position_ids` counted from each row's first real token. `last_only`
        returns (B, 1, V): the head runs on the last position alone (a prefill that only
        samples the next token; at a 128k vocabulary the whole prompt's logits are 0.5 MB a
        token, 2 GB for 4 prompts of 1,000 tokens).
        """
        self._check_inputs(input_ids, attention_mask, kv_cache)
        b, t = input_ids.shape
        past = kv_cache.seq_length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ModelError(
                f"position {int(position_ids.max())} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        rope = rotary_tables(self.config, position_ids)
        if kv_cache is not None:
            mask = kv_cache.bias(attention_mask, batch=b, new=t, device=input_ids.device)
        else:
            mask = build_mask(attention_mask, batch=b, new=t, past=0, device=input_ids.device)
        x = self.model.embed_tokens(input_ids).float()  # a bfloat16 embedding row widens exactly
        recompute = self.gradient_checkpointing and torch.is_grad_enabled() and kv_cache is None
        for layer in self.model.layers:
            if recompute:
                x = checkpoint(layer, x, use_reentrant=False, rope=rope, mask=mask, kv_cache=None)
            else:
                x = layer(x, rope=rope, mask=mask, kv_cache=kv_cache)
        if last_only:
            x = x[:, -1:]
        return self._head(self.model.norm(x))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.lm_head.weight
        if weight.dtype == torch.bfloat16:
            return head_kernel.logits(x, weight)
        return self.lm_head(x).float()  # type: ignore[no-any-return]

    def hold_embedding(self, dtype: torch.dtype) -> None:
        """Hold the embedding and the head in `dtype`: float32 (the default) or bfloat16.

        bfloat16 halves them (656 MB instead of 1.31 GB at the 2B-4T shape) and the bytes a
        decoded token reads by a third; activations, logits and gradients stay float32 (the
        native head widens each weight in registers, see `r3mes.model.kernels.head`).  Exact
        for a checkpoint that stores them in bfloat16, as 2B-4T does; float32 values are
        rounded to the nearest bfloat16.  bfloat16 needs them frozen (`freeze_backbone`).
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ModelError(f"the embedding is held in float32 or bfloat16, not {dtype}")
        modules = self.embedding_modules()
        if dtype == torch.bfloat16 and any(m.weight.requires_grad for m in modules):
            raise ModelError(
                "a bfloat16 embedding must be frozen: call freeze_backbone() first (training "
                "the embedding needs float32)"
            )
        with torch.no_grad():
            for module in modules:
                if module.weight.dtype != dtype:
                    trainable = module.weight.requires_grad
                    module.weight = nn.Parameter(module.weight.to(dtype), requires_grad=trainable)
        self.tie_head()

    def embedding_modules(self) -> list[nn.Embedding | nn.Linear]:
        """The modules holding the embedding and head weights: one when they are tied."""
        modules: list[nn.Embedding | nn.Linear] = [self.model.embed_tokens]
        if not self.config.tie_word_embeddings:
            modules.append(self.lm_head)
        return modules

    def tie_head(self) -> None:
        """Point the head at the embedding's weight again (after either was replaced)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def embedding_dtype(self) -> torch.dtype:
        """The dtype the embedding (and head) is held in."""
        return self.model.embed_tokens.weight.dtype

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kv_cache: KVCache | None,
    ) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ModelError(
                f"input_ids must be an integer tensor (B, T), got {input_ids.dtype} "
                f"{tuple(input_ids.shape)}"
            )
        if input_ids.numel() == 0:
            raise ModelError("input_ids is empty")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size:
            raise ModelError(
                f"input_ids hold ids outside the vocabulary 0..{self.config.vocab_size}"
            )
        past = kv_cache.seq_length if kv_cache is not None else 0
        if kv_cache is not None and kv_cache.num_layers != self.config.num_hidden_layers:
            raise ModelError(
                f"KV cache has {kv_cache.num_layers} layers, model has "
                f"{self.config.num_hidden_layers}"
            )
        expected = (input_ids.shape[0], past + input_ids.shape[1])
        if attention_mask is not None and tuple(attention_mask.shape) != expected:
            raise ModelError(
                f"attention_mask must have shape {expected} (batch, past + new tokens), "
                f"got {tuple(attention_mask.shape)}"
            )

    def num_parameters(self) -> int:
        """Distinct parameters plus packed ternary weights (counted per weight, not per byte)."""
        seen: set[int] = set()
        total = 0
        for param in self.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel()
        for _, module in self.bit_linears():
            if module.weight is None:
                total += module.in_features * module.out_features
        return total
