"""LoRA on frozen BitLinear layers: wrapped, keyed by adapter name, never merged.

`LoraLinear` wraps a `BitLinear` (`base_layer`) and adds `lora_B(lora_A(dropout(x))) * scaling`
computed in float32. Several adapters coexist in `nn.ModuleDict`s; one can be active for the
whole batch (`set_active_adapter`) or each batch row can pick its own (`set_adapter_rows`),
which gathers stacked, rank-padded adapter weights per row in one batched matmul (BGMV).
State dict keys follow PEFT (`base_model.model.<module>.lora_A.weight`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from r3mes.model.bitlinear import BitLinear
from r3mes.model.errors import AdapterError
from r3mes.model.lora_config import LORA_TARGETS as LORA_TARGETS
from r3mes.model.lora_config import PEFT_PREFIX as PEFT_PREFIX
from r3mes.model.lora_config import LoraConfig as LoraConfig


class LoraLinear(nn.Module):
    """A frozen `BitLinear` plus named low-rank adapters computed in float32."""

    def __init__(self, base_layer: BitLinear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.adapter_rows: list[str | None] | None = None

    def add_adapter(
        self, name: str, config: LoraConfig, generator: torch.Generator | None = None
    ) -> None:
        """Create adapter `name`: A Kaiming-uniform (as PEFT), B zero, so it starts as a no-op."""
        if name in self.lora_A:
            raise AdapterError(f"adapter {name!r} already exists; remove it first")
        base = self.base_layer
        lora_a = nn.Linear(base.in_features, config.r, bias=False)
        lora_b = nn.Linear(config.r, base.out_features, bias=False)
        with torch.no_grad():
            nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(lora_b.weight)
        self.lora_A[name] = lora_a
        self.lora_B[name] = lora_b
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.scaling[name] = config.scaling

    def remove(self, name: str) -> None:
        """Delete adapter `name` if this layer holds it."""
        if name in self.lora_A:
            del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            del self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base_layer(x)
        if self.adapter_rows is not None:
            return y + self._per_row_delta(x).to(y.dtype)
        name = self.active_adapter
        if name is None or name not in self.lora_A:
            return y
        h = self.lora_A[name](self.lora_dropout[name](x.float()))
        delta: torch.Tensor = self.lora_B[name](h) * self.scaling[name]
        return y + delta.to(y.dtype)

    def _per_row_delta(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.adapter_rows
        assert rows is not None
        if len(rows) != x.shape[0]:
            raise AdapterError(f"{len(rows)} adapter rows set for a batch of {x.shape[0]}")
        names = sorted({n for n in rows if n is not None and n in self.lora_A})
        slot = {n: i + 1 for i, n in enumerate(names)}  # slot 0: no adapter
        index = torch.tensor([slot.get(n, 0) if n else 0 for n in rows], device=x.device)
        a_stack, b_stack, scales = self._stacks(names, x.device)
        a_rows, b_rows = a_stack[index], b_stack[index]  # (B, r, in), (B, out, r)
        h = torch.einsum("bti,bri->btr", x.float(), a_rows)
        out = torch.einsum("btr,bor->bto", h, b_rows)
        return out * scales[index].view(-1, 1, 1)

    def weight_a(self, name: str) -> torch.Tensor:
        """lora_A weight (r, in) of adapter `name`."""
        return _linear_weight(self.lora_A[name])

    def weight_b(self, name: str) -> torch.Tensor:
        """lora_B weight (out, r) of adapter `name`."""
        return _linear_weight(self.lora_B[name])

    def _stacks(
        self, names: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        base = self.base_layer
        rank = max((self.weight_a(n).shape[0] for n in names), default=1)
        a_list = [torch.zeros(rank, base.in_features, device=device)]
        b_list = [torch.zeros(base.out_features, rank, device=device)]
        for n in names:
            a, b = self.weight_a(n).float(), self.weight_b(n).float()
            pad = rank - int(a.shape[0])  # zero rows/cols leave the product unchanged
            a_list.append(nn.functional.pad(a, (0, 0, 0, pad)))
            b_list.append(nn.functional.pad(b, (0, pad)))
        scales = torch.tensor([0.0] + [self.scaling[n] for n in names], device=device)
        return torch.stack(a_list), torch.stack(b_list), scales


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """Every `LoraLinear` in `model` with its module path."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present in `model`, sorted."""
    return sorted({name for _, layer in lora_layers(model) for name in layer.lora_A})


def apply_lora(
    model: nn.Module,
    config: LoraConfig,
    *,
    name: str = "default",
    generator: torch.Generator | None = None,
) -> None:
    """Add adapter `name` on every target projection (wrapping it once) and make it active."""
    if not name or not isinstance(name, str) or "." in name:
        raise AdapterError(f"adapter name must be a non-empty string without dots, got {name!r}")
    if name in adapter_names(model):
        raise AdapterError(f"adapter {name!r} already exists; remove it or pick another name")
    targets: list[LoraLinear] = []
    for parent in list(model.modules()):
        if isinstance(parent, LoraLinear):
            continue
        for child_name, child in list(parent.named_children()):
            if child_name not in config.target_modules:
                continue
            if isinstance(child, BitLinear):
                wrapper = LoraLinear(child)
                setattr(parent, child_name, wrapper)
                targets.append(wrapper)
            elif isinstance(child, LoraLinear):
                targets.append(child)
    if not targets:
        raise AdapterError(f"no modules named {list(config.target_modules)} found to adapt")
    device = next(model.parameters()).device
    for layer in targets:
        layer.add_adapter(name, config, generator)
    model.to(device)
    set_active_adapter(model, name)


def remove_adapter(model: nn.Module, name: str) -> None:
    """Delete adapter `name`; a layer left without adapters is unwrapped back to its BitLinear."""
    if name not in adapter_names(model):
        raise AdapterError(f"no adapter named {name!r} (present: {adapter_names(model)})")
    for path, layer in lora_layers(model):
        layer.remove(name)
        if not layer.lora_A:
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, layer.base_layer)


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Use adapter `name` for every row of the following forwards (None: the base model)."""
    if name is not None and name not in adapter_names(model):
        raise AdapterError(f"no adapter named {name!r} (present: {adapter_names(model)})")
    for _, layer in lora_layers(model):
        layer.active_adapter = name
        layer.adapter_rows = None


def set_adapter_rows(model: nn.Module, rows: Sequence[str | None] | None) -> None:
    """Per batch row adapter choice for the following forwards; None clears it."""
    if rows is not None:
        present = set(adapter_names(model))
        unknown = sorted({n for n in rows if n is not None and n not in present})
        if unknown:
            raise AdapterError(f"unknown adapters {unknown} (present: {sorted(present)})")
    for _, layer in lora_layers(model):
        layer.adapter_rows = list(rows) if rows is not None else None


def mark_only_lora_as_trainable(model: nn.Module, name: str) -> None:
    """Freeze everything except adapter `name`'s A and B matrices."""
    if name not in adapter_names(model):
        raise AdapterError(f"no adapter named {name!r} (present: {adapter_names(model)})")
    for param in model.parameters():
        param.requires_grad_(False)
    for _, layer in lora_layers(model):
        if name in layer.lora_A:
            layer.weight_a(name).requires_grad_(True)
            layer.weight_b(name).requires_grad_(True)


def lora_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s weights under PEFT key names (detached float32 copies)."""
    if name not in adapter_names(model):
        raise AdapterError(f"no adapter named {name!r} (present: {adapter_names(model)})")
    state: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(model):
        if name in layer.lora_A:
            a, b = layer.weight_a(name), layer.weight_b(name)
            state[f"{PEFT_PREFIX}{path}.lora_A.weight"] = a.detach().float().cpu().clone()
            state[f"{PEFT_PREFIX}{path}.lora_B.weight"] = b.detach().float().cpu().clone()
    return state


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Copy PEFT-keyed weights into existing adapter `name`; keys and shapes must match exactly."""
    expected = lora_state_dict(model, name)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"adapter weights do not fit adapter {name!r} of this model: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(
            expected[key].shape
        ):
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise AdapterError(f"{key}: expected shape {tuple(expected[key].shape)}, got {got}")
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{key}: holds non-finite values")
    with torch.no_grad():
        for path, layer in lora_layers(model):
            if name in layer.lora_A:
                layer.weight_a(name).copy_(state[f"{PEFT_PREFIX}{path}.lora_A.weight"])
                layer.weight_b(name).copy_(state[f"{PEFT_PREFIX}{path}.lora_B.weight"])


def _linear_weight(module: nn.Module) -> torch.Tensor:
    if not isinstance(module, nn.Linear):
        raise AdapterError(f"expected a LoRA linear layer, got {type(module).__name__}")
    return module.weight
