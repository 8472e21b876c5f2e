"""`BitNetConfig`: the architecture of a BitNet b1.58 causal LM, in HF `config.json` terms."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from r3mes.model.errors import ConfigError

# Keys HF writes into config.json that carry no architecture we need; accepted and ignored.
_HF_BOOKKEEPING = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "initializer_range",
        "attention_dropout",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "torchscript",
        "_name_or_path",
        "auto_map",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "tokenizer_class",
        "quantization_config",
        "rope_scaling",
        "name_or_path",
    }
)
# Keys that are accepted only with the single value this implementation supports.
_FIXED_VALUES: dict[str, object] = {
    "hidden_act": "relu2",
    "attention_bias": False,
    "mlp_bias": False,
}


@dataclass(frozen=True)
class BitNetConfig:
    """Architecture of a BitNet b1.58 model; field names follow HF's `BitNetConfig`."""

    vocab_size: int = 4096
    """Number of token ids the embedding and head cover."""
    hidden_size: int = 256
    """Width of the residual stream."""
    intermediate_size: int = 688
    """Width of the gated ReLU^2 MLP."""
    num_hidden_layers: int = 4
    """Number of decoder layers."""
    num_attention_heads: int = 4
    """Query heads; `hidden_size` must be divisible by it."""
    num_key_value_heads: int = 4
    """Key/value heads (GQA); must divide `num_attention_heads`."""
    max_position_embeddings: int = 2048
    """Longest sequence (prompt + generated) the model accepts."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rope_theta: float = 500000.0
    """Base of the rotary position embedding frequencies."""
    tie_word_embeddings: bool = True
    """Share the embedding matrix with the LM head."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token id, if any."""
    eos_token_id: int | None = None
    """End-of-sequence token id, if any."""
    pad_token_id: int | None = None
    """Padding token id, if any."""

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dimension {self.head_dim} must be even for rotary embeddings")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive number, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError("config field tie_word_embeddings must be true or false")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config field {name} must be an integer or null, got {value!r}")
            if not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"{name} {value} is outside the vocabulary (0..{self.vocab_size})"
                )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """The HF `config.json` shape of this config (loads into transformers' BitNetConfig)."""
        data: dict[str, Any] = {
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_act": "relu2",
            "attention_bias": False,
        }
        data.update(dataclasses.asdict(self))
        data["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitNetConfig:
        """Build a config from HF `config.json` data; unknown keys are rejected."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in fields:
                kwargs[key] = value
            elif key == "rope_parameters":
                kwargs.setdefault("rope_theta", _rope_theta(value))
            elif key in _FIXED_VALUES:
                if value != _FIXED_VALUES[key]:
                    raise ConfigError(
                        f"config key {key}={value!r} is not supported (only {_FIXED_VALUES[key]!r})"
                    )
            elif key not in _HF_BOOKKEEPING:
                raise ConfigError(f"unknown config key {key!r}; remove it or fix its spelling")
        if isinstance(kwargs.get("eos_token_id"), list):
            ids = kwargs["eos_token_id"]
            kwargs["eos_token_id"] = ids[0] if ids else None
        if kwargs.get("num_key_value_heads") is None and "num_attention_heads" in kwargs:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"malformed model config: {exc}") from exc


def _rope_theta(value: object) -> float:
    if value is None:
        return 500000.0
    if not isinstance(value, dict) or value.get("rope_type", "default") != "default":
        raise ConfigError(f"only default rotary embeddings are supported, got {value!r}")
    theta = value.get("rope_theta", 500000.0)
    if isinstance(theta, bool) or not isinstance(theta, int | float):
        raise ConfigError(f"rope_parameters.rope_theta must be a number, got {theta!r}")
    return float(theta)


def tensor_shapes(config: BitNetConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor of a model with `config` (projections as float masters).

    Computed without building the model, so a checkpoint can be checked against its config
    before any weight memory is allocated; `tests/model/test_modeling.py` holds it equal to a
    built model's `state_dict`.
    """
    h, i = config.hidden_size, config.intermediate_size
    q, kv = (
        config.num_attention_heads * config.head_dim,
        config.num_key_value_heads * config.head_dim,
    )
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for n in range(config.num_hidden_layers):
        layer = f"model.layers.{n}"
        shapes.update(
            {
                f"{layer}.self_attn.q_proj.weight": (q, h),
                f"{layer}.self_attn.k_proj.weight": (kv, h),
                f"{layer}.self_attn.v_proj.weight": (kv, h),
                f"{layer}.self_attn.o_proj.weight": (h, q),
                f"{layer}.self_attn.attn_sub_norm.weight": (h,),
                f"{layer}.mlp.gate_proj.weight": (i, h),
                f"{layer}.mlp.up_proj.weight": (i, h),
                f"{layer}.mlp.down_proj.weight": (h, i),
                f"{layer}.mlp.ffn_sub_norm.weight": (i,),
                f"{layer}.input_layernorm.weight": (h,),
                f"{layer}.post_attention_layernorm.weight": (h,),
            }
        )
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes
