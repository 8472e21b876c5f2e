"""The shape of a LoRA adapter (`LoraConfig`) and PEFT's key prefix, without torch.

`lora` builds the torch layers from it; `torchfree` applies adapters with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from r3mes.model.errors import AdapterError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraConfig:
    """Shape of one LoRA adapter."""

    r: int
    """Rank of the low-rank update."""
    alpha: int
    """Scaling numerator: the update is multiplied by alpha / r."""
    target_modules: tuple[str, ...]
    """HF projection names to adapt (subset of q,k,v,o,gate,up,down _proj)."""
    dropout: float = 0.0
    """Dropout on the adapter input during training."""

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or not 0 < self.r <= 4096:
            raise AdapterError(f"LoRA rank r must be an integer in 1..4096, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise AdapterError(f"LoRA alpha must be a number, got {self.alpha!r}")
        if self.alpha <= 0:
            raise AdapterError(f"LoRA alpha must be positive, got {self.alpha}")
        if not isinstance(self.target_modules, tuple) or not self.target_modules:
            raise AdapterError("LoRA target_modules must be a non-empty tuple of module names")
        unknown = sorted(set(self.target_modules) - set(LORA_TARGETS))
        if unknown:
            raise AdapterError(f"unknown LoRA target modules {unknown}; choose from {LORA_TARGETS}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        # canonical order (q, k, v, o, gate, up, down) so equal configs compare equal
        canonical = tuple(t for t in LORA_TARGETS if t in self.target_modules)
        object.__setattr__(self, "target_modules", canonical)

    @property
    def scaling(self) -> float:
        """Multiplier of the adapter's output."""
        return float(self.alpha) / self.r
