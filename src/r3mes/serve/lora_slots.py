"""The serving engine's gathered LoRA path: adapters in fixed slots, one bmm pair per layer.

`r3mes.model.lora` restacks every adapter's weights on each forward, which is right for
training and one-off batches but too slow for a decode loop that runs the same batch
composition for many steps. Here every target `BitLinear` gets a `SlotLoraLinear` (put in
the model only while some row of the batch adapts that projection), which holds each
loaded slot's A/B matrices at that adapter's own rank (slot 0, the base model, holds
nothing). Memory follows what is loaded, not the configured limits: slots used to be
preallocated for every slot at the server's max rank, 3.1 GB at the 2B shape with 8 slots
of rank 64 before any adapter arrived, where 8 rank-16 adapters need 0.7 GB.
Each batch row names a slot; the per-row matrices (zero-padded to the batch's largest
rank, zeros for base rows) are gathered once per batch composition (BGMV), and each
forward adds
``bmm(bmm(x, A_rows), B_rows)`` to the frozen ternary output. The adapter scaling is folded
into B. Rows of slot 0 get exactly the base output (their delta is an exact zero).

Adapters arrive as PEFT state dicts (`base_model.model.<module>.lora_A.weight`), the
format `r3mes.model.lora.lora_state_dict` and `peft_io` produce.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from r3mes.model.bitlinear import BitLinear
from r3mes.model.lora import LORA_TARGETS, PEFT_PREFIX, LoraConfig
from r3mes.serve.errors import ServeError

CONTIG = torch.contiguous_format


class SlotSelection:
    """The batch rows' slots, shared by every wrapped layer of one model."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (B,) slot per row; None: no LoRA at all
        self.rows: tuple[int, ...] = ()
        self.slots: frozenset[int] = frozenset()
        self.version = 0


class SlotLoraLinear(nn.Module):
    """A frozen `BitLinear` plus slot-indexed LoRA deltas gathered per batch row."""

    def __init__(self, base: BitLinear, *, selection: SlotSelection) -> None:
        super().__init__()
        self.base = base
        self.selection = selection
        self.group = SharedInput([self])
        self.device = next(itertools.chain(base.parameters(), base.buffers())).device
        self.slot_a: dict[int, torch.Tensor] = {}  # slot -> A^T (in, r), float32
        self.slot_b: dict[int, torch.Tensor] = {}  # slot -> B^T (r, out), scaling folded in
        self.ranks: dict[int, int] = {}  # slot -> rank of the adapter in it
        # a plain attribute: nn.Module's __getattr__ for submodules costs a microsecond a call
        self.base_forward = base.forward
        self.b_rows: torch.Tensor | None = None  # (B, r, out) for this batch; None: no delta
        self.cols: tuple[int, int] | None = None  # columns of the shared h; None: all

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        """Install lora_A (r, in) and lora_B (out, r) in `slot`."""
        # own copies (never views of the caller's tensors), laid out for the gather
        self.slot_a[slot] = a.t().to(self.device, torch.float32).clone(memory_format=CONTIG)
        self.slot_b[slot] = (b.t().to(self.device, torch.float32) * scaling).contiguous()
        self.ranks[slot] = a.shape[0]

    def clear_slot(self, slot: int) -> None:
        self.slot_a.pop(slot, None)
        self.slot_b.pop(slot, None)
        self.ranks.pop(slot, None)

    def nbytes(self) -> int:
        """Bytes of the adapter weights held in this layer's slots."""
        tensors = (*self.slot_a.values(), *self.slot_b.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def gather(self, sel: SlotSelection, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row A (B, in, rank) and B (B, rank, out) of the batch `sel`, zero-padded
        past each adapter's rank; rows whose slot adapts nothing here get zeros."""
        used = sorted(s for s in sel.slots if s in self.ranks)
        where = {s: i for i, s in enumerate(used, start=1)}  # table row 0: zeros
        table_a = torch.zeros(len(used) + 1, self.base.in_features, rank, device=self.device)
        table_b = torch.zeros(len(used) + 1, rank, self.base.out_features, device=self.device)
        for s, i in where.items():
            r = self.ranks[s]
            table_a[i, :, :r] = self.slot_a[s]
            table_b[i, :r, :] = self.slot_b[s]
        index = torch.tensor([where.get(s, 0) for s in sel.rows], device=self.device)
        return table_a[index], table_b[index]  # contiguous copies, one per row

    def active_rank(self, sel: SlotSelection) -> int:
        """Largest rank among this layer's adapters in the batch (0: none, skip LoRA)."""
        if sel.index is None:
            return 0
        return max((self.ranks[s] for s in sel.slots if s in self.ranks), default=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Runs 28 times per decode step on a 4-layer model: kept to one version check,
        # one attribute read per cached piece and a single fused baddbmm.
        y: torch.Tensor = self.base_forward(x)  # direct: no hooks on the frozen base
        group = self.group
        if group.version != self.selection.version:
            group.rebuild()
        b_rows = self.b_rows
        if b_rows is None:
            return y
        if group.x is not x:
            group.compute(x)
        h = group.h if self.cols is None else group.h[..., self.cols[0] : self.cols[1]]
        if y.dtype != torch.float32:
            return torch.baddbmm(y.float(), h, b_rows).to(y.dtype)
        return torch.baddbmm(y, h, b_rows)  # y + per-row delta in one kernel


class SharedInput:
    """Projections that read the same input tensor (q/k/v, gate/up) share one A product.

    Per batch composition, `rebuild` gathers every member's per-row A into one
    (B, in, sum of ranks) tensor and each member's per-row B (B, r, out), trimmed to the
    largest rank in the batch; these stay until the composition or a slot changes. Per
    forward, the first member called with a new input computes ``bmm(x, A)`` for all
    members at once; the others slice their columns out of it. A member called with a
    different tensor simply recomputes, so the result never depends on call patterns.
    """

    def __init__(self, members: list[SlotLoraLinear]) -> None:
        self.members = members
        self.version = -1
        self.a: torch.Tensor | None = None  # (B, in, sum of ranks)
        self.x: torch.Tensor | None = None
        self.h: torch.Tensor = torch.empty(0)  # (B, T, sum of ranks) for `x`

    def compute(self, x: torch.Tensor) -> None:
        assert self.a is not None
        if x.shape[0] != self.a.shape[0]:
            raise ServeError(f"LoRA slots set for {self.a.shape[0]} rows, batch has {x.shape[0]}")
        self.h = torch.bmm(x if x.dtype == torch.float32 else x.float(), self.a)
        self.x = x

    def rebuild(self) -> None:
        sel = self.members[0].selection
        self.version = sel.version
        self.x = None
        self.h = torch.empty(0)
        parts = []
        ranges = []
        start = 0
        for m in self.members:
            rank = m.active_rank(sel)
            m.b_rows = m.cols = None
            if rank and sel.index is not None:
                a_rows, m.b_rows = m.gather(sel, rank)  # (B, in, r), (B, r, out)
                parts.append(a_rows)
                ranges.append((m, start, start + rank))
                start += rank
        for m, c0, c1 in ranges:
            m.cols = None if (c0, c1) == (0, start) else (c0, c1)
        self.a = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)) if parts else None


OWNER_ATTR = "_r3mes_lora_slots"
"""The model attribute holding a weak reference to the `LoraSlots` that serve it: two
engines swapping modules in one model would clash."""

SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class LoraSlots:
    """Wraps a model's target projections once and loads adapters into numbered slots."""

    def __init__(self, model: nn.Module, *, slots: int, max_rank: int) -> None:
        if slots < 1 or max_rank < 1:
            raise ServeError("LoRA slots and max rank must be at least 1")
        owner = getattr(model, OWNER_ATTR, None)
        if isinstance(owner, weakref.ref) and (live := owner()) is not None and live.serves(model):
            raise ServeError(
                "this model already belongs to a serving engine; give each engine its own "
                "copy (copy.deepcopy(model) or load it again)"
            )
        self._model = weakref.ref(model)
        setattr(model, OWNER_ATTR, weakref.ref(self))  # a deepcopy keeps pointing here
        self.slots = slots
        self.max_rank = max_rank
        self.selection = SlotSelection()
        self.layers: dict[str, SlotLoraLinear] = {}
        self._places: dict[str, tuple[nn.Module, str]] = {}
        for path, module in list(model.named_modules()):
            if isinstance(module, BitLinear) and path.rpartition(".")[2] in LORA_TARGETS:
                parent_path, _, attr = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                self.layers[path] = SlotLoraLinear(module, selection=self.selection)
                self._places[path] = (parent, attr)
        if not self.layers:
            raise ServeError("the model has no BitLinear projections to attach LoRA slots to")
        self._group_shared_inputs()

    def nbytes(self) -> int:
        """Bytes of adapter weights held in the slots (what is loaded, at its own rank)."""
        return sum(layer.nbytes() for layer in self.layers.values())

    def serves(self, model: nn.Module) -> bool:
        """Whether these slots were built on `model` (not merely on a copy of it)."""
        return self._model() is model

    def _group_shared_inputs(self) -> None:
        for path in self.layers:
            parent, _, attr = path.rpartition(".")
            for names in SHARED_INPUTS:
                if attr == names[0]:
                    siblings = [self.layers.get(f"{parent}.{n}" if parent else n) for n in names]
                    members = [m for m in siblings if m is not None]
                    group = SharedInput(members)
                    for m in members:
                        m.group = group

    def check(self, state: dict[str, torch.Tensor], config: LoraConfig) -> None:
        """Raise ServeError unless the adapter fits this model and these slots."""
        self._pairs(state, config)

    def load(self, slot: int, state: dict[str, torch.Tensor], config: LoraConfig) -> None:
        """Check a PEFT state dict against the model, then install it in `slot` (1-based)."""
        if not 1 <= slot <= self.slots:
            raise ServeError(f"slot {slot} outside 1..{self.slots}")
        pairs = self._pairs(state, config)
        for path, layer in self.layers.items():
            if path in pairs:
                a, b = pairs[path]
                layer.set_slot(slot, a, b, config.scaling)
            else:
                layer.clear_slot(slot)
        self.selection.version += 1
        self.selection.rows = ()

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear_slot(slot)
        self.selection.version += 1
        self.selection.rows = ()

    def select(self, rows: Sequence[int]) -> None:
        """Slot of each batch row for the following forwards (0: the base model)."""
        sel = self.selection
        if tuple(rows) == sel.rows:
            return  # same batch composition: keep every layer's gathered weights
        sel.rows = tuple(rows)
        used = frozenset(s for s in rows if s)
        device = next(iter(self.layers.values())).device
        sel.index = torch.tensor(list(rows), dtype=torch.long, device=device) if used else None
        sel.slots = used
        sel.version += 1
        self._install()

    def _install(self) -> None:
        """Wrap exactly the projections this batch's adapters touch; leave the rest bare.

        A projection no row adapts runs as the plain `BitLinear` (no wrapper overhead), so
        a base-only batch is the unmodified model.
        """
        for path, layer in self.layers.items():
            parent, attr = self._places[path]
            wanted: nn.Module = layer if layer.active_rank(self.selection) else layer.base
            if getattr(parent, attr) is not wanted:
                setattr(parent, attr, wanted)

    def _pairs(
        self, state: dict[str, torch.Tensor], config: LoraConfig
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if config.r > self.max_rank:
            raise ServeError(
                f"adapter rank {config.r} exceeds this server's max LoRA rank {self.max_rank}; "
                "restart with a larger --max-lora-rank"
            )
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        expected: set[str] = set()
        for path, layer in self.layers.items():
            if path.rpartition(".")[2] not in config.target_modules:
                continue
            key_a = f"{PEFT_PREFIX}{path}.lora_A.weight"
            key_b = f"{PEFT_PREFIX}{path}.lora_B.weight"
            expected |= {key_a, key_b}
            a, b = state.get(key_a), state.get(key_b)
            if a is None or b is None:
                raise ServeError(f"adapter lacks {key_a if a is None else key_b}")
            base = layer.base
            if tuple(a.shape) != (config.r, base.in_features):
                raise ServeError(
                    f"{key_a}: shape {tuple(a.shape)}, expected {(config.r, base.in_features)}"
                )
            if tuple(b.shape) != (base.out_features, config.r):
                raise ServeError(
                    f"{key_b}: shape {tuple(b.shape)}, expected {(base.out_features, config.r)}"
                )
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise ServeError(f"{path}: adapter weights hold non-finite values")
            pairs[path] = (a, b)
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ServeError(f"adapter holds tensors this model has no place for: {unexpected[:3]}")
        return pairs
