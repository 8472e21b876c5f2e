"""The serving engine's LoRA path: adapters in numbered slots, one matmul pair per layer.

`r3mes.model.lora` restacks every adapter's weights on each forward, which is right for
training and one-off batches but too slow for a decode loop that runs the same batch
composition for many steps. Here every target `BitLinear` gets a `SlotLoraLinear` (put in
the model only while some row of the batch adapts that projection). A slot refers to its
adapter's A/B tensors as loaded (the host cache holds the same tensors; slot 0, the base
model, holds nothing). When the set of adapters in the batch changes, each layer stacks
those adapters' A^T side by side (in, W) and their B^T, with the scaling folded in, on top
of each other (W, out), W being the sum of their ranks: every adapter once, however many
rows use it, at its own rank. Each forward computes ``h = x @ A`` for all of them at once,
zeroes in each row the columns of adapters other than its own (a 0/1 mask) and adds
``h @ B`` to the frozen ternary output; rows of slot 0 get exactly the base output (their
delta is an exact zero).

Memory follows what the batch uses, not the configured limits. Before session 5 every slot
was preallocated at the server's max rank (3.1 GB at the 2B shape for 8 slots of rank 64
before any adapter arrived) and the batch's weights were gathered once per row (B copies of
an adapter used by B rows); at 2B, 8 rank-16 adapters on all projections are 0.66 GB.

Adapters arrive as PEFT state dicts (`base_model.model.<module>.lora_A.weight`), the
format `r3mes.model.lora.lora_state_dict` and `peft_io` produce."""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from r3mes.model.bitlinear import BitLinear
from r3mes.model.lora import LORA_TARGETS, PEFT_PREFIX, LoraConfig
from r3mes.serve.errors import ServeError
from r3mes.serve.heap import return_freed_heap


class SlotSelection:
    """The batch rows' slots, shared by every wrapped layer of one model."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (B,) slot per row; None: no LoRA at all
        self.rows: tuple[int, ...] = ()
        self.slots: frozenset[int] = frozenset()
        self.version = 0
        self.loaded = 0  # bumped whenever a slot's weights change


class SlotLoraLinear(nn.Module):
    """A frozen `BitLinear` plus the LoRA deltas of the slots its batch rows name."""

    def __init__(self, base: BitLinear, *, selection: SlotSelection) -> None:
        super().__init__()
        self.base = base
        self.selection = selection
        self.group = SharedInput([self])
        self.device = next(itertools.chain(base.parameters(), base.buffers())).device
        # the adapters' own tensors (the host cache holds the same ones): nothing is copied
        # until a batch uses them, and then only once per adapter (`stack`)
        self.slot_a: dict[int, torch.Tensor] = {}  # slot -> lora_A (r, in)
        self.slot_b: dict[int, torch.Tensor] = {}  # slot -> lora_B (out, r)
        self.scaling: dict[int, float] = {}
        self.ranks: dict[int, int] = {}  # slot -> rank of the adapter in it
        # a plain attribute: nn.Module's __getattr__ for submodules costs a microsecond a call
        self.base_forward = base.forward
        # this batch's B, one of two layouts (see SharedInput); both None: no delta here
        self.b_cat: torch.Tensor | None = None  # stacked: (W, out) B^T, scaled
        self.b_rows: torch.Tensor | None = None  # per row: (B, r, out) B^T, scaled, padded
        self.blocks: dict[int, tuple[int, int]] = {}  # slot -> its rows of b_cat (columns of h)
        self.mask: torch.Tensor | None = None  # (B, 1, W): 1 on each row's block; None: all 1
        self.cols: tuple[int, int] | None = None  # columns of the shared h; None: all

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        """Install lora_A (r, in) and lora_B (out, r) in `slot` (kept by reference; copied
        only to move them to the model's device)."""
        self.slot_a[slot] = a.detach().to(self.device)
        self.slot_b[slot] = b.detach().to(self.device)
        self.scaling[slot] = scaling
        self.ranks[slot] = a.shape[0]

    def clear_slot(self, slot: int) -> None:
        for held in (self.slot_a, self.slot_b, self.scaling, self.ranks):
            held.pop(slot, None)

    def nbytes(self) -> int:
        """Bytes of the adapter weights this layer's slots refer to."""
        tensors = (*self.slot_a.values(), *self.slot_b.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def used(self, sel: SlotSelection) -> list[int]:
        """The loaded slots that rows of the batch `sel` name, in slot order."""
        if sel.index is None:
            return []
        return sorted(s for s in sel.slots if s in self.ranks)

    def width(self, used: list[int]) -> int:
        return sum(self.ranks[s] for s in used)

    def stack(self, used: list[int], a_out: torch.Tensor) -> None:
        """Write the `used` adapters' A^T side by side into `a_out` (in, W) and keep their
        scaled B^T stacked in `b_cat` (W, out); W is the sum of their ranks (no padding)."""
        b_cat = torch.empty(a_out.shape[1], self.base.out_features, device=self.device)
        self.blocks = {}
        start = 0
        for s in used:
            end = start + self.ranks[s]
            a_out[:, start:end] = self.slot_a[s].t()
            torch.mul(self.slot_b[s].t().float(), self.scaling[s], out=b_cat[start:end])
            self.blocks[s] = (start, end)
            start = end
        self.b_cat = b_cat

    def gather(self, sel: SlotSelection, a_out: torch.Tensor) -> None:
        """Write each row's A^T into `a_out` (B, in, r) and keep each row's scaled B^T in
        `b_rows` (B, r, out), zero past its adapter's rank and for rows without one here."""
        rank = a_out.shape[2]
        b_rows = torch.zeros(len(sel.rows), rank, self.base.out_features, device=self.device)
        for row, s in enumerate(sel.rows):
            r = self.ranks.get(s, 0)
            if r:
                a_out[row, :, :r] = self.slot_a[s].t()
                torch.mul(self.slot_b[s].t().float(), self.scaling[s], out=b_rows[row, :r])
        self.b_rows = b_rows

    def mask_for(self, sel: SlotSelection) -> torch.Tensor | None:
        """Per-row 0/1 columns of h: a row keeps its own adapter's block (none: base)."""
        if len(self.blocks) == 1 and all(s in self.blocks for s in sel.rows):
            return None  # every row uses the one adapter stacked here
        width = self.b_cat.shape[0] if self.b_cat is not None else 0
        mask = torch.zeros(len(sel.rows), 1, width, device=self.device)
        for row, s in enumerate(sel.rows):
            if s in self.blocks:
                c0, c1 = self.blocks[s]
                mask[row, 0, c0:c1] = 1.0
        return mask

    def release(self) -> None:
        self.b_cat = self.b_rows = self.mask = self.cols = None
        self.blocks = {}

    def active_rank(self, sel: SlotSelection) -> int:
        """Largest rank among this layer's adapters in the batch (0: none, skip LoRA)."""
        return max((self.ranks[s] for s in self.used(sel)), default=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Runs 28 times per decode step on a 4-layer model: kept to one version check,
        # one attribute read per cached piece and a single fused product-and-add.
        y: torch.Tensor = self.base_forward(x)  # direct: no hooks on the frozen base
        group = self.group
        if group.version != self.selection.version:
            group.rebuild()
        b_rows = self.b_rows
        if b_rows is None and self.b_cat is None:
            return y
        if group.x is not x:
            group.compute(x)
        h = group.h if self.cols is None else group.h[..., self.cols[0] : self.cols[1]]
        group.left -= 1
        if not group.left:  # the last reader: do not keep this layer's input alive
            group.x, group.h = None, torch.empty(0)
        base = y if y.dtype == torch.float32 else y.float()
        if b_rows is not None:
            out = torch.baddbmm(base, h, b_rows)  # y + per-row delta in one kernel
        else:
            b_cat = self.b_cat
            assert b_cat is not None
            if self.mask is not None:
                h = h * self.mask  # other rows' adapters contribute exact zeros
            flat = h.reshape(-1, b_cat.shape[0])
            out = torch.addmm(base.reshape(-1, b_cat.shape[1]), flat, b_cat).view(y.shape)
        return out if y.dtype == torch.float32 else out.to(y.dtype)


class SharedInput:
    """Projections that read the same input tensor (q/k/v, gate/up) share one A product.

    Per batch composition, `rebuild` lays the batch's adapters out in one of two ways:

    * per row (when every adapter has at most one other row using it, e.g. each row its own
      adapter): each row's A^T (B, in, r) and B^T (B, r, out), zero-padded to the largest
      rank in the batch; a forward is one ``bmm(x, A)`` for the group and one ``baddbmm``
      per member. The fewest FLOPs; memory is one copy per row.
    * stacked (when rows share adapters: one adapter for the whole batch, or at least twice
      as many rows as adapters): each adapter used once, A^T side by side (in, W) for the
      whole group and each member's B^T (W_m, out), W the sum of the ranks; a forward is
      one ``x @ A``, a 0/1 mask per member that zeroes the other adapters' columns of each
      row (none with a single adapter) and one ``addmm``. Memory is one copy per adapter
      (a batch of 16 rows on one adapter held 16 copies before); the products cost as many
      times the per-row FLOPs as there are adapters, which is why it is not used when the
      rows do not share adapters (measured on the small model: ratio 0.66-0.73 against
      0.80, docs/benchmarks.md).

    Stacked weights depend only on which adapters are used, so they are kept while rows
    come and go; only the masks are rebuilt. Per forward, the first member called with a
    new input computes the A product for all members at once; the others slice their
    columns out of it. A member called with a different tensor simply recomputes, so the
    result never depends on call patterns. The last member to read h lets go of the input
    and h: keeping them until the next forward held every layer's input of a prefill alive
    at once (30 layers x 4 inputs of (B, T, width) at the 2B shape).
    """

    def __init__(self, members: list[SlotLoraLinear]) -> None:
        self.members = members
        self.version = -1
        self.key: tuple[object, ...] | None = None  # what `a` and the members' B hold
        self.a: torch.Tensor | None = None  # stacked (in, W) or per row (B, in, sum of r)
        self.rows = 0
        self.x: torch.Tensor | None = None
        self.readers = 0  # members with weights in this batch
        self.left = 0  # readers of `h` still to come for `x`
        self.h: torch.Tensor = torch.empty(0)  # (B, T, columns of `a`) for `x`

    def compute(self, x: torch.Tensor) -> None:
        assert self.a is not None
        if x.shape[0] != self.rows:
            raise ServeError(f"LoRA slots set for {self.rows} rows, batch has {x.shape[0]}")
        xf = x if x.dtype == torch.float32 else x.float()
        self.h = torch.bmm(xf, self.a) if self.a.dim() == 3 else torch.matmul(xf, self.a)
        self.x = x
        self.left = self.readers

    def release(self) -> None:
        """Drop the batch's weights (no batch uses an adapter here now)."""
        self.key = self.a = self.x = None
        self.h = torch.empty(0)
        self.version = -1
        for m in self.members:
            m.release()

    def nbytes(self) -> int:
        """Bytes of the weights laid out for the current batch."""
        tensors = [self.a, *(b for m in self.members for b in (m.b_cat, m.b_rows))]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def rebuild(self) -> int:
        """Lay out the selection's adapters (see the class docstring); returns the bytes of
        the layout it replaced (0 when the weights were kept)."""
        sel = self.members[0].selection
        freed = 0
        used = [m.used(sel) for m in self.members]
        adapters = len(set().union(*used))
        stacked = adapters == 1 or len(sel.rows) >= 2 * adapters
        # stacked weights outlive row changes; per-row weights follow the rows
        rows = () if stacked else sel.rows
        key = (sel.loaded, stacked, rows, *(tuple(u) for u in used))
        if key != self.key:
            freed = self.nbytes()
            self.release()  # free the old weights before building the new ones
            self.key = key
            if stacked:
                self._stack(used)
            else:
                self._gather(sel, used)
        self.version = sel.version
        self.x = None
        self.h = torch.empty(0)
        self.rows = len(sel.rows)
        for m in self.members:
            m.mask = m.mask_for(sel) if m.b_cat is not None else None
        self.readers = sum(m.b_cat is not None or m.b_rows is not None for m in self.members)
        return freed

    def _columns(self, widths: list[int]) -> list[tuple[int, int]]:
        """Each member's columns of `a`/h for `widths` (the members' own column counts)."""
        total, start, spans = sum(widths), 0, []
        for m, w in zip(self.members, widths, strict=True):
            spans.append((start, start + w))
            m.cols = None if w == total else (start, start + w)
            start += w
        return spans

    def _stack(self, used: list[list[int]]) -> None:
        widths = [m.width(u) for m, u in zip(self.members, used, strict=True)]
        if not sum(widths):
            return
        first = self.members[0]
        self.a = torch.empty(first.base.in_features, sum(widths), device=first.device)
        for m, u, (c0, c1) in zip(self.members, used, self._columns(widths), strict=True):
            if c1 > c0:
                m.stack(u, self.a[:, c0:c1])

    def _gather(self, sel: SlotSelection, used: list[list[int]]) -> None:
        members = zip(self.members, used, strict=True)
        ranks = [max((m.ranks[s] for s in u), default=0) for m, u in members]
        if not sum(ranks):
            return
        first = self.members[0]
        shape = (len(sel.rows), first.base.in_features, sum(ranks))
        self.a = torch.zeros(shape, device=first.device)
        for m, (c0, c1) in zip(self.members, self._columns(ranks), strict=True):
            if c1 > c0:
                m.gather(sel, self.a[:, :, c0:c1])


def _finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t`, without a same-sized temporary (`isfinite` would make a
    byte per element: 165 MB for eight rank-16 adapters at the 2B shape)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach().float() if not t.is_floating_point() else t.detach())
    return math.isfinite(float(lo)) and math.isfinite(float(hi))  # NaN propagates to both


TRIM_BYTES = 64 * 2**20
"""Freed LoRA layouts at least this large are handed back to the OS (`return_freed_heap`)."""

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

    def stacked_nbytes(self) -> int:
        """Bytes of the LoRA weights laid out for the current batch (`SharedInput`)."""
        return sum(group.nbytes() for group in self._groups())

    def _groups(self) -> list[SharedInput]:
        return list({id(layer.group): layer.group for layer in self.layers.values()}.values())

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
        self.selection.loaded += 1

    def clear(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear_slot(slot)
        self.selection.version += 1
        self.selection.rows = ()
        self.selection.loaded += 1

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
        # lay out every group now (not at its next forward), so the weights of projections
        # this batch no longer adapts go too, and hand a large freed layout back to the OS:
        # glibc kept ~400 MB of freed layouts resident at the 2B shape otherwise
        freed = sum(group.rebuild() for group in self._groups())
        if freed >= TRIM_BYTES:
            return_freed_heap()
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
            if not (_finite(a) and _finite(b)):
                raise ServeError(f"{path}: adapter weights hold non-finite values")
            pairs[path] = (a, b)
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ServeError(f"adapter holds tensors this model has no place for: {unexpected[:3]}")
        return pairs
