"""Merging verified updates into the next adapter version (the proposer's job).

``new[k] = adapter[k] + sum_i(w_i * update_i[k]) / sum_i(w_i)`` with integer weights from the
caller. An update may cover a subset of the adapter's tensors (training updates hold the B
matrices only, see `r3mes.work.training`); tensors no update touches carry over unchanged.
Determinism: `aggregate` sums updates in order of their digests (so the caller's list order
does not matter), keys in sorted order, accumulating in float64 with one final cast to float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from r3mes.work.encoding import DecodedUpdate
from r3mes.work.errors import AggregationError

MAX_WEIGHT = 2**62
MAX_TOTAL_WEIGHT = 2**62
"""The sum of the weights is capped too, so it stays an exact int64 and float64 divisor."""


def _pairs(updates: object) -> list[tuple[object, object]]:
    """`updates` as a list of 2-tuples, or `AggregationError`."""
    if not isinstance(updates, Sequence) or isinstance(updates, str | bytes):
        raise AggregationError("updates must be a sequence of (update, weight) pairs")
    if not updates:
        raise AggregationError("no updates to aggregate; keep the current adapter version")
    for n, item in enumerate(updates):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise AggregationError(f"update {n} must be an (update, weight) pair, got {item!r:.60}")
    return [(item[0], item[1]) for item in updates]


def _check_adapter(adapter_state: object) -> None:
    if not isinstance(adapter_state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in adapter_state.items()
    ):
        raise AggregationError("the adapter state must map tensor names to tensors")


def aggregate(
    adapter_state: Mapping[str, torch.Tensor],
    updates: Sequence[tuple[DecodedUpdate, int]],
) -> dict[str, torch.Tensor]:
    """The new adapter state: `adapter_state` plus the weighted mean of decoded `updates`."""
    for n, item in enumerate(_pairs(updates)):
        if not isinstance(item[0], DecodedUpdate):
            raise AggregationError(f"update {n} must be a DecodedUpdate, got {type(item[0])}")
    ordered = sorted(updates, key=lambda uw: uw[0].digest)
    return aggregate_dense(adapter_state, [(u.dense(), w) for u, w in ordered])


def aggregate_dense(
    adapter_state: Mapping[str, torch.Tensor],
    updates: Sequence[tuple[Mapping[str, torch.Tensor], int]],
) -> dict[str, torch.Tensor]:
    """`adapter_state` plus the weighted mean of dense updates, summed in the given order."""
    total = 0
    for n, (dense, weight) in enumerate(_pairs(updates)):
        if not isinstance(dense, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in dense.items()
        ):
            raise AggregationError(f"update {n} must map tensor names to tensors")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= MAX_WEIGHT:
            raise AggregationError(f"weights must be integers in [1, 2**62], got {weight!r}")
        total += weight
    if total > MAX_TOTAL_WEIGHT:
        raise AggregationError(
            f"weights sum to {total}, over 2**62; scale them down (only their ratios matter)"
        )
    _check_adapter(adapter_state)
    keys = sorted(adapter_state)
    acc = {k: torch.zeros(adapter_state[k].shape, dtype=torch.float64) for k in keys}
    for n, (dense, weight) in enumerate(updates):
        unknown = sorted(set(dense) - set(keys))
        if unknown:
            raise AggregationError(f"update {n} has tensors the adapter lacks, e.g. {unknown[:2]}")
        for k in sorted(dense):
            if tuple(dense[k].shape) != tuple(adapter_state[k].shape):
                raise AggregationError(
                    f"update {n} tensor {k!r} has shape {tuple(dense[k].shape)}, "
                    f"the adapter {tuple(adapter_state[k].shape)}"
                )
            acc[k] += dense[k].to(torch.float64) * weight
    return {
        k: (adapter_state[k].to(torch.float64) + acc[k] / total).to(torch.float32) for k in keys
    }
