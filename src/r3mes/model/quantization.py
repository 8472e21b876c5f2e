"""The `quantization_config` of a BitNet checkpoint: how its BitLinear weights are stored.

transformers' BitNet integration (`integrations/bitnet.py`) knows two layer classes, and the
real checkpoints use both:

* `bitlinear` (always offline): uint8 weights, four ternary values per byte, plus a
  `weight_scale` that *divides*: `W ~= ternary / weight_scale` (`BitLinear.post_quant_process`).
  This is what r3mes writes for packed checkpoints.
* `autobitlinear`, `quantization_mode` `online` (microsoft/bitnet-b1.58-2B-4T-bf16): float
  master weights, ternarized by absmean on every forward (`WeightQuant`); no scale tensor.
  This is what r3mes writes for master checkpoints.
* `autobitlinear`, `quantization_mode` `offline` (microsoft/bitnet-b1.58-2B-4T): the same
  packed uint8 layout (unpacked on load by `BitNetDeserialize`), or ternary floats, plus a
  `weight_scale` that *multiplies*: `AutoBitLinear.forward` computes
  `F.linear(x, ternary) * weight_scale`, so `W ~= ternary * weight_scale` (the absmean).

A checkpoint without `quantization_config` is read as r3mes always has: float masters are
quantized online, uint8 weights follow the `bitlinear` convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r3mes.model.errors import ConfigError

LINEAR_CLASSES = ("bitlinear", "autobitlinear")
MODES = ("online", "offline")
# BitNetQuantConfig fields transformers writes besides the three that matter here.
_OPTIONAL_KEYS = frozenset({"modules_to_not_convert", "use_rms_norm", "rms_norm_eps"})
_KEYS = frozenset({"quant_method", "linear_class", "quantization_mode"}) | _OPTIONAL_KEYS


@dataclass(frozen=True)
class BitNetQuantization:
    """The storage convention of a checkpoint's BitLinear weights."""

    linear_class: str = "bitlinear"
    """transformers' layer class: "bitlinear" or "autobitlinear"."""
    mode: str = "offline"
    """"online" (float masters, quantized every forward) or "offline" (ternary + scale)."""

    def __post_init__(self) -> None:
        if self.linear_class not in LINEAR_CLASSES:
            raise ConfigError(
                f"quantization_config linear_class must be one of {LINEAR_CLASSES}, "
                f"got {self.linear_class!r}"
            )
        if self.mode not in MODES:
            raise ConfigError(
                f"quantization_config quantization_mode must be one of {MODES}, got {self.mode!r}"
            )

    @property
    def float_masters(self) -> bool:
        """True when BitLinear weights are float masters quantized online (no scale tensor)."""
        return self.linear_class == "autobitlinear" and self.mode == "online"

    @property
    def scale_multiplies(self) -> bool:
        """True when `W ~= ternary * weight_scale` (autobitlinear offline), else it divides."""
        return self.linear_class == "autobitlinear" and self.mode == "offline"

    def to_dict(self) -> dict[str, str]:
        """The config.json form."""
        return {
            "quant_method": "bitnet",
            "linear_class": self.linear_class,
            "quantization_mode": self.mode,
        }


PACKED = BitNetQuantization("bitlinear", "offline")
"""What r3mes writes for packed checkpoints (transformers' packed `BitLinear`)."""
MASTER = BitNetQuantization("autobitlinear", "online")
"""What r3mes writes for float master checkpoints (as microsoft/bitnet-b1.58-2B-4T-bf16)."""


def parse_quantization(data: Any) -> BitNetQuantization | None:
    """Read a config.json `quantization_config` (None when absent); anything else is refused."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"quantization_config must be an object, got {data!r}")
    if data.get("quant_method") != "bitnet":
        raise ConfigError(
            f"unsupported quantization_config quant_method {data.get('quant_method')!r} "
            "(only 'bitnet')"
        )
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown quantization_config keys {unknown}")
    if data.get("use_rms_norm", False) not in (False, None):
        raise ConfigError("quantization_config use_rms_norm=true is not supported")
    skipped = data.get("modules_to_not_convert") or []
    if not isinstance(skipped, list) or not all(isinstance(m, str) for m in skipped):
        raise ConfigError("quantization_config modules_to_not_convert must be a list of names")
    dense_projections = [m for m in skipped if m.rsplit(".", 1)[-1].endswith("_proj")]
    if dense_projections:
        raise ConfigError(
            f"unquantized projections {dense_projections[:3]} are not supported "
            "(every q/k/v/o/gate/up/down projection must be ternary)"
        )
    linear_class = data.get("linear_class", "bitlinear")
    mode = data.get("quantization_mode", "offline")
    return BitNetQuantization(linear_class=linear_class, mode=mode)
